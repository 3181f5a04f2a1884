"""The device daemon: serve OIP v2 while an update loop applies the director's desired state.

Startup serves what the state file says, from disk, before the hub is contacted: a device
that boots with no network keeps answering with its last verified models.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from modelfleet._atomic import atomic_write_bytes
from modelfleet.agent.backoff import BackoffPolicy, jittered_interval
from modelfleet.agent.config import AgentConfig
from modelfleet.agent.hub_link import HubLink, check_identity
from modelfleet.agent.local_guard import GuardCollector, LocalGuard
from modelfleet.agent.updater import Updater
from modelfleet.clock import Clock, SystemClock
from modelfleet.errors import (
    ConfigError,
    ForbiddenError,
    NotFoundError,
    TransportError,
    UnauthenticatedError,
)
from modelfleet.rollout.desired_state import DesiredState

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
        self, updater: Updater, loop: UpdateLoop | None = None, guard: LocalGuard | None = None
    ) -> None:
        self.token = secrets.token_urlsafe(24)
        self._updater = updater
        self._loop = loop
        self._guard = guard

    def status(self) -> dict[str, Any]:
        status = self._updater.status()
        if self._guard is not None:
            status["guard"] = self._guard.state()
            status["guard_events"] = list(self._guard.events)
        return status

    def rollback(self, reason: str) -> dict[str, Any]:
        result = self._updater.rollback(None, reason)
        if self._loop is not None:
            self._loop.report_soon()
        return result


#: Status fields that change every cycle without anything having happened.
_VOLATILE_STATUS = ("last_check", "loaded", "guard")

#: (report) -> the hub's answer (``{"applied_rollbacks": [...]}``), or None.
Reporter = Callable[[dict[str, Any]], Mapping[str, Any] | None]


def verify_token(link: HubLink, device_id: str) -> bool:
    """Ask the hub who the token is and refuse one that is not this device's (contract 3).

    Returns:
        True when checked (or the hub is too old to say), False when the hub could not
        be asked (unreachable, or it did not accept the token): ask again later.

    Raises:
        ForbiddenError: the token is another role's or another device's.
    """
    try:
        check_identity(link.whoami(), device_id)
    except NotFoundError:
        log.warning("the hub has no /api/v1/whoami: cannot check that the token is this device's")
    except UnauthenticatedError as e:
        log.error("%s", e)
        return False
    except TransportError as e:
        log.debug("cannot check the token yet: %s", e)
        return False
    return True


IdentityCheck = Callable[[], bool]


@dataclass
class _Job:
    """An apply in progress on its own thread (so the loop keeps polling meanwhile)."""

    serial: int
    thread: threading.Thread
    cancel: threading.Event = field(default_factory=threading.Event)


class UpdateLoop:
    """Background thread: poll the director, apply on a worker, report to the hub.

    Polls are spread by jitter; while the hub is unreachable they back off (capped
    exponential, full jitter) so a fleet does not return in lockstep. An apply runs on
    its own thread: the loop keeps polling, and a newer desired state cancels a download
    still in progress. A check-in is sent when the status changed, when
    :meth:`report_soon` asked for one, or every ``heartbeat`` seconds.

    Args:
        updater: the update cycle.
        interval: seconds between routine polls (before jitter).
        reporter: sends a check-in; its answer's ``applied_rollbacks`` are acknowledged.
        heartbeat: longest time between two check-ins.
        backoff: delays between polls while the hub is unreachable.
        rand: uniform random source in [0, 1) for jitter.
        identity: checks the token on first contact (see :func:`verify_token`); until it
            passes nothing is polled or reported.
    """

    def __init__(
        self,
        updater: Updater,
        interval: float,
        reporter: Reporter | None = None,
        heartbeat: float = 60.0,
        *,
        backoff: BackoffPolicy | None = None,
        rand: Callable[[], float] = random.random,
        identity: IdentityCheck | None = None,
    ) -> None:
        self.updater = updater
        self.interval = interval
        self.reporter = reporter
        self.heartbeat = heartbeat
        self.backoff = backoff or BackoffPolicy(base_s=interval, cap_s=max(interval, 300.0))
        self._rand = rand
        self._identity = identity
        self.refused = ""
        self._failures = 0
        self._forced = True
        self._last_sent_key = b""
        self._last_sent_at = float("-inf")
        self._job: _Job | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelfleet-updater", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        job = self._job
        if job is not None:
            job.cancel.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)
        if job is not None:
            job.thread.join(timeout=30)

    def report_soon(self) -> None:
        self._forced = True
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait for the apply in progress, if any, to end; whether it did."""
        job = self._job
        if job is None:
            return True
        job.thread.join(timeout)
        return not job.thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.tick()
            except Exception:  # the loop must survive anything; the reason is logged
                log.exception("update cycle failed")
                delay = self.interval
            if delay is None:
                return
            self._wake.wait(delay)
            self._wake.clear()

    def tick(self) -> float | None:
        """One poll (and check-in); returns the seconds to wait, or None to stop."""
        if self._identity is not None:
            try:
                checked = self._identity()
            except ForbiddenError as e:
                self.refused = str(e)
                log.error("%s; updates and check-ins stopped (still serving from disk)", e)
                self.updater.note_problem(f"token refused: {e}")
                return None
            if not checked:
                self._failures += 1
                return self.backoff.delay(self._failures, self._rand)
            self._identity = None
        check = self.updater.check()
        self._failures = 0 if check.reachable else self._failures + 1
        if check.desired is not None:
            self._maybe_apply(check.desired)
        self._report()
        if not check.reachable:
            return self.backoff.delay(self._failures, self._rand)
        delay = jittered_interval(self.interval, self._rand)
        retry = self.updater.retry_in()
        return min(delay, retry) if retry is not None else delay

    def _maybe_apply(self, desired: DesiredState) -> None:
        job = self._job
        if job is not None and job.thread.is_alive():
            if desired.serial > job.serial and not job.cancel.is_set():
                log.info(
                    "desired state serial %d supersedes serial %d: abandoning its download",
                    desired.serial,
                    job.serial,
                )
                job.cancel.set()
            return
        if not self.updater.due(desired):
            return
        cancel = threading.Event()

        def work() -> None:
            try:
                self.updater.apply(desired, cancel)
            except Exception:
                log.exception("applying serial %d failed", desired.serial)
            finally:
                self._forced = True
                self._wake.set()  # report now, and pick up a newer serial at once

        thread = threading.Thread(target=work, name=f"modelfleet-apply-{desired.serial}")
        thread.daemon = True
        self._job = _Job(desired.serial, thread, cancel)
        thread.start()

    def _report(self) -> None:
        if self.reporter is None:
            return
        status = self.updater.status()
        key = orjson.dumps(
            {k: v for k, v in status.items() if k not in _VOLATILE_STATUS},
            option=orjson.OPT_SORT_KEYS,
        )
        now = self.updater.clock.monotonic()
        unchanged = key == self._last_sent_key
        if unchanged and not self._forced and now - self._last_sent_at < self.heartbeat:
            return
        try:
            answer = self.reporter(status)
        except Exception as e:  # reporting is best effort
            log.debug("check-in failed (will retry): %s", e)
            return
        self._forced = False
        self._last_sent_key = key
        self._last_sent_at = now
        applied = (answer or {}).get("applied_rollbacks")
        if isinstance(applied, list) and applied:
            self.updater.acknowledge_rollbacks([str(i) for i in applied])


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


def run_agent(config: AgentConfig, clock: Clock | None = None) -> None:
    """Run the agent until interrupted (SIGINT/SIGTERM)."""
    import uvicorn

    from modelfleet.agent.app import ServingLimits, build_agent_app
    from modelfleet.agent.hub_link import HttpHubLink
    from modelfleet.agent.upstream import UpstreamClient
    from modelfleet.serving.host import ModelHost
    from modelfleet.trust.client import DeviceTrustClient

    clock = clock or SystemClock()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state_dir, 0o700)
    hub = HttpHubLink(config.hub_url, config.token, timeout=10.0)
    # Contract 3: refuse a token that is not this device's before using it at all. With
    # the hub out of reach, serve from disk and check on first contact (the loop).
    identity_checked = verify_token(hub, config.device_id)
    trust_root = load_trust_root(config, hub)
    source = DeviceTrustClient(
        config.state_dir / "tuf", config.hub_url, config.token, trust_root, download=config.download
    )
    host = ModelHost()
    updater = Updater(
        config.device_id, config.state_dir, source, host, clock, config.keep_previous_loaded
    )
    loop_holder: list[UpdateLoop] = []
    guard = LocalGuard(
        updater, host, clock.monotonic, after_rollback=lambda: loop_holder[0].report_soon()
    )
    for problem in updater.restore():
        log.error("restore: %s", problem)

    def report(status: dict[str, Any]) -> Mapping[str, Any]:
        return hub.check_in(config.device_id, status)

    loop = UpdateLoop(
        updater,
        config.poll_interval,
        report,
        config.heartbeat_s,
        backoff=BackoffPolicy(config.poll_interval, config.backoff_cap_s),
        identity=None if identity_checked else lambda: verify_token(hub, config.device_id),
    )
    loop_holder.append(loop)
    control = AgentControlImpl(updater, loop, guard)
    cascade = None
    if config.cascade is not None:
        cascade = UpstreamClient(config.cascade, unhealthy=guard.monitor.is_unhealthy)
        log.info("cascade: unsure answers go to %s", config.cascade.upstream)
    app = build_agent_app(
        host,
        control=control,
        server_name=f"modelfleet-agent/{config.device_id}",
        observer=guard,
        cascade=cascade,
        limits=ServingLimits(
            max_body_bytes=config.max_body_bytes,
            max_batch=config.max_batch,
            request_timeout_s=config.request_timeout_s,
        ),
    )
    app.state.metrics.registry.register(GuardCollector(guard))
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
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            http="httptools",
            loop="uvloop",
            lifespan="on",
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        loop.stop()
        (config.state_dir / CONTROL_FILE).unlink(missing_ok=True)
