"""The device daemon: serve OIP v2 while an update loop applies the director's desired state.

Startup serves what the state file says, from disk, before the hub is contacted: a device
that boots with no network keeps answering with its last verified models.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from modelfleet._atomic import atomic_write_bytes
from modelfleet.agent.anomaly import AnomalyScorer, load_scorer
from modelfleet.agent.config import AgentConfig
from modelfleet.agent.hub_link import HubLink
from modelfleet.agent.local_guard import GuardCollector, LocalGuard
from modelfleet.agent.models import onnx_loader
from modelfleet.agent.observers import BatchFanout, BatchObserver
from modelfleet.agent.profiles import ProfileObserver
from modelfleet.agent.review import BUDGET_FILE, ReviewSampler
from modelfleet.agent.update_loop import IdentityCheck, Reporter, UpdateLoop, verify_token
from modelfleet.agent.updater import Updater
from modelfleet.backoff import BackoffPolicy
from modelfleet.catalog.onnx_session import check_providers
from modelfleet.clock import Clock, SystemClock
from modelfleet.delivery.tls import client_verify
from modelfleet.errors import ConfigError, ModelfleetError, StorageError, TransportError
from modelfleet.packaging.target import DeviceProfile
from modelfleet.telemetry.device import DeviceTelemetry
from modelfleet.telemetry.otel import OtlpSettings

__all__ = [
    "AgentControlImpl",
    "IdentityCheck",
    "Reporter",
    "UpdateLoop",
    "load_trust_root",
    "run_agent",
    "verify_token",
]

log = logging.getLogger("modelfleet.agent")

CONTROL_FILE = "control.json"
TRUST_ROOT_FILE = "trust-root.json"


class AgentControlImpl:
    """Local control of a running agent (status, rollback), behind a bearer token.

    Neither waits on a download: the updater's lock is never held while one runs.
    """

    def __init__(
        self,
        updater: Updater,
        loop: UpdateLoop | None = None,
        guard: LocalGuard | None = None,
        telemetry: DeviceTelemetry | None = None,
    ) -> None:
        self.token = secrets.token_urlsafe(24)
        self._updater = updater
        self._loop = loop
        self._guard = guard
        self._telemetry = telemetry

    def status(self) -> dict[str, Any]:
        # the loop's view adds a staggered pull that is waiting (issue 11)
        status = self._loop.status() if self._loop is not None else self._updater.status()
        if self._guard is not None:
            status["guard"] = self._guard.state()
            status["guard_events"] = list(self._guard.events)
        if self._telemetry is not None:
            status["telemetry"] = self._telemetry.status()
        # Not in check-in reports: the time floor moves at every refresh (ADR 0036).
        status["metadata"] = self._updater.metadata_health().to_dict()
        return status

    def rollback(self, reason: str) -> dict[str, Any]:
        result = self._updater.rollback(None, reason)
        if self._loop is not None:
            self._loop.report_soon()
        return result


def load_trust_root(config: AgentConfig, link: HubLink | None = None) -> bytes:
    """Return the trust-root bundle: given file, else cached, else fetched once (TOFU).

    Raises:
        ConfigError: no root can be had.
    """
    cached = config.state_dir / TRUST_ROOT_FILE
    if config.trust_root is not None:
        try:
            data = Path(config.trust_root).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read trust root {config.trust_root}: {e}") from e
        if not cached.exists():
            atomic_write_bytes(cached, data, mode=0o600)
        return data
    if cached.exists():
        return cached.read_bytes()
    if link is None:
        raise ConfigError("no trust root: pass --trust-root (the hub's trust-root.json)")
    log.warning(
        "no --trust-root given: trusting the hub's root on first use; pass the hub's "
        "trust-root.json to pin it"
    )
    try:
        data = link.trust_root()
    except TransportError as e:
        raise ConfigError(f"no trust root cached and the hub cannot be asked: {e}") from e
    atomic_write_bytes(cached, data, mode=0o600)
    return data


def _scorer_sink(
    anomaly: AnomalyScorer, config: AgentConfig
) -> Callable[[str, str, Mapping[str, Any] | None], None]:
    def sink(model: str, version: str, doc: Mapping[str, Any] | None) -> None:
        anomaly.watch(model, version, load_scorer(doc, config.runtime))

    return sink


def batch_observers(
    profiles: ProfileObserver | None,
    anomaly: AnomalyScorer | None,
    sampler: ReviewSampler | None,
) -> BatchObserver | None:
    """The request path's one batch observer: drift counts, then the sampler (which runs
    the anomaly scorer itself), or the scorer alone when nothing is sampled."""
    parts: list[BatchObserver] = []
    if profiles is not None:
        parts.append(profiles)
    if sampler is not None:
        parts.append(sampler)
    elif anomaly is not None:
        parts.append(anomaly)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else BatchFanout(parts)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the serving socket ourselves so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.set_inheritable(True)
    return sock


def run_agent(
    config: AgentConfig, clock: Clock | None = None, *, otlp: OtlpSettings | None = None
) -> None:
    """Run the agent until interrupted (SIGINT/SIGTERM).

    Args:
        config: the agent's settings.
        clock: time source (the system clock if None).
        otlp: export request traces and key metrics to an OpenTelemetry collector
            (:mod:`modelfleet.telemetry.otel`, extra ``otel``); None: no OTLP.
    """
    from prometheus_client import ProcessCollector

    from modelfleet.agent.app import ServingLimits, build_agent_app
    from modelfleet.agent.credentials import (
        CredentialRenewer,
        CredentialStore,
        CurrentCredential,
        choose_credential,
    )
    from modelfleet.agent.device_key import load_or_create_device_key
    from modelfleet.agent.hub_link import HttpHubLink, NoHubLink
    from modelfleet.agent.metrics import AgentMetrics
    from modelfleet.agent.server import serve
    from modelfleet.agent.telemetry import (
        BUFFER_FILE,
        TelemetryCollector,
        UpdateCounters,
        build_device_telemetry,
    )
    from modelfleet.agent.upstream import UpstreamClient
    from modelfleet.delivery.folder_fetcher import FolderFetcher
    from modelfleet.serving.host import ModelHost
    from modelfleet.telemetry.buffer import TelemetryBuffer
    from modelfleet.trust.client import DeviceTrustClient

    check_providers(config.runtime.providers)  # before anything else: a typo fails fast
    clock = clock or SystemClock()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state_dir, 0o700)
    # Issue 10: the credential renewed last (on disk) wins over the configured token it
    # descends from; a different configured token (a new one from the operator) wins.
    store = CredentialStore(config.state_dir)
    current = CurrentCredential(choose_credential(store.load(), config.device_id, config.token))
    tls = client_verify(config.hub_ca)  # a bad CA file fails here, before anything runs
    hub = HttpHubLink(config.hub_url, current, timeout=10.0, verify=tls)
    renewer = CredentialRenewer(
        current,
        store,
        lambda token: hub.rotate_credential(config.device_id, token),
        hub.whoami,
        clock,
        backoff=BackoffPolicy(config.poll_interval, config.backoff_cap_s),
    )
    offline = config.update_folder is not None  # issue 11: updates from a mounted folder
    # Contract 3: refuse a token that is not this device's before using it at all. With
    # the hub out of reach, serve from disk and check on first contact (the loop).
    identity_checked = offline or verify_token(hub, config.device_id)
    # Issue 11: the device's own key (made once) signs its return bundles; the hub learns
    # it over this device's token (best effort: `modelfleet device key` covers offline).
    try:
        device_key = load_or_create_device_key(config.state_dir)[0]
    except ConfigError as e:  # serving matters more than the return channel
        log.error("no device key (return bundles cannot be signed): %s", e)
        device_key = None

    def send_device_key() -> None:
        if device_key is None:
            return
        try:
            hub.put_device_key(config.device_id, device_key.public_hex)
        except ModelfleetError as e:
            log.warning("device key %s not registered at the hub: %s", device_key.key_id[:16], e)

    if identity_checked and not offline:
        send_device_key()

    def first_contact() -> bool:
        ok = verify_token(hub, config.device_id)
        if ok:
            send_device_key()
        return ok

    trust_root = load_trust_root(config, None if offline else hub)
    folder = None
    if config.update_folder is not None:
        folder = FolderFetcher(config.update_folder, config.hub_url)
        log.info("updates from folder %s (verified as from the hub)", config.update_folder)
    source = DeviceTrustClient(
        config.state_dir / "tuf",
        config.hub_url,
        current,
        trust_root,
        fetcher=folder,
        download=config.download,
        verify=tls,
        now=clock.now,  # ADR 0036: expiry against max(clock, time floor)
    )
    host = ModelHost()
    profiles = ProfileObserver(config.drift_sketches) if config.telemetry and config.drift else None
    anomaly = AnomalyScorer() if config.telemetry and config.anomaly else None
    updater = Updater(
        config.device_id,
        config.state_dir,
        source,
        host,
        clock,
        config.keep_previous_loaded,
        profile=DeviceProfile.of(config.hardware, config.runtime.providers),  # issue 10
        medium=None if folder is None else folder.fingerprint,  # issue 11: re-made stick
        loader=onnx_loader(
            config.runtime,
            None if profiles is None else profiles.watch,
            None if anomaly is None else _scorer_sink(anomaly, config),
        ),
    )
    loop_holder: list[UpdateLoop] = []
    guard = LocalGuard(
        updater, host, clock.monotonic, after_rollback=lambda: loop_holder[0].report_soon()
    )
    metrics = AgentMetrics(host)
    metrics.watch_metadata(updater.metadata_health)
    ProcessCollector(registry=metrics.registry)
    counters = UpdateCounters(metrics.registry)
    telemetry: DeviceTelemetry | None = None
    buffer: TelemetryBuffer | None = None
    if config.telemetry:
        try:
            buffer = TelemetryBuffer(config.state_dir / BUFFER_FILE, config.telemetry_buffer_bytes)
        except StorageError as e:  # serving matters more than telemetry
            log.error("telemetry off: %s", e)
    sampler: ReviewSampler | None = None
    if buffer is not None:
        if config.review.enabled:  # nothing is sampled unless configured (issue 9)
            sampler = ReviewSampler(
                config.device_id,
                config.review,
                clock,
                anomaly=anomaly,
                profile_of=None if profiles is None else profiles.profile,
                budget_file=config.state_dir / BUDGET_FILE,
            )
        # its own link: a slow telemetry upload never delays a poll or a check-in
        telemetry_link: HubLink = (
            NoHubLink("no hub: telemetry stays buffered for `bundle report`")
            if offline
            else HttpHubLink(config.hub_url, current, timeout=10.0, attempts=1, verify=tls)
        )
        telemetry = build_device_telemetry(
            config.device_id,
            buffer,
            telemetry_link,
            updater,
            host,
            clock,
            config.telemetry_window_s,
            counters,
            guard.monitor,
            profiles,
            anomaly=anomaly,
            sampler=sampler,
        )
        metrics.registry.register(TelemetryCollector(telemetry))
    else:
        profiles = anomaly = None
        updater.on_event = lambda at, kind, message, model, version: counters.on_event(kind)
        updater.on_download = counters.on_download
    for problem in updater.restore():
        log.error("restore: %s", problem)

    def report(status: dict[str, Any]) -> Mapping[str, Any]:
        return hub.check_in(config.device_id, status)

    loop = UpdateLoop(
        updater,
        config.poll_interval,
        None if offline else report,  # offline: the return bundle carries the reports
        config.heartbeat_s,
        backoff=BackoffPolicy(config.poll_interval, config.backoff_cap_s),
        identity=None if identity_checked else first_contact,
        renew=None if offline else renewer.tick,
        pull_window_s=config.pull_window_s,
        off_shift=config.off_shift,
    )
    loop_holder.append(loop)
    control = AgentControlImpl(updater, loop, guard, telemetry)
    cascade = None
    if config.cascade is not None:
        cascade = UpstreamClient(config.cascade, unhealthy=guard.monitor.is_unhealthy)
        log.info("cascade: unsure answers go to %s", config.cascade.upstream)
    exporter = None
    if otlp is not None:  # before the app: the request path's tracer
        from modelfleet.telemetry.otel import OtlpExporter

        resource = {"service.name": "modelfleet-agent", "service.instance.id": config.device_id}
        exporter = OtlpExporter(otlp, resource)
        log.info("OTLP: traces and metrics to %s", otlp.endpoint)
    app = build_agent_app(
        host,
        tracer=exporter,
        control=control,
        server_name=f"modelfleet-agent/{config.device_id}",
        metrics=metrics,
        observers=[guard]
        if telemetry is None
        else [guard, telemetry.recorder, *([] if sampler is None else [sampler])],
        cascade=cascade,
        on_cascade_route=None if telemetry is None else telemetry.recorder.on_cascade,
        on_shadow_dropped=None if telemetry is None else telemetry.recorder.on_shadow_dropped,
        on_override=None if telemetry is None else telemetry.recorder.on_override,
        batches=batch_observers(profiles, anomaly, sampler),
        limits=ServingLimits(
            max_body_bytes=config.max_body_bytes,
            max_batch=config.max_batch,
            request_timeout_s=config.request_timeout_s,
        ),
    )
    app.state.metrics.registry.register(GuardCollector(guard))
    if exporter is not None:
        exporter.export_registry(app.state.metrics.registry)
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    atomic_write_bytes(
        config.state_dir / CONTROL_FILE,
        orjson.dumps(
            {"pid": os.getpid(), "host": config.host, "port": port, "token": control.token}
        ),
        mode=0o600,
    )
    log.info("agent %s serving OIP v2 on http://%s:%d", config.device_id, config.host, port)
    loop.start()
    if telemetry is not None:
        telemetry.start()
    try:
        serve(app, sock)  # agent/server.py: the one way the agent's HTTP server starts
    finally:
        loop.stop()
        if exporter is not None:
            exporter.shutdown()
        if telemetry is not None:
            telemetry.stop(flush=True)  # the partial window is appended, not lost
        (config.state_dir / CONTROL_FILE).unlink(missing_ok=True)
