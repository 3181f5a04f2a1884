"""Telemetry, wired into the agent (issue 7): windows, buffer, forwarder, update counters.

:mod:`modelfleet.telemetry` knows nothing of the agent; this module connects it: the
recorder reads the routes of the :class:`~modelfleet.serving.host.ModelHost` (idle windows)
and the rollout ids of the updater's desired state, the updater's ``on_event`` and
``on_download`` hooks feed the buffer and the Prometheus counters, and the batches go out
through :meth:`~modelfleet.agent.hub_link.HubLink.send_telemetry`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from modelfleet.agent.anomaly import AnomalyScorer
from modelfleet.agent.guard_monitor import GuardMonitor
from modelfleet.agent.hub_link import HubLink
from modelfleet.agent.profiles import ProfileObserver
from modelfleet.agent.review import ReviewSampler
from modelfleet.agent.updater import Updater
from modelfleet.clock import Clock
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from modelfleet.telemetry.buffer import TelemetryBuffer
from modelfleet.telemetry.device import DeviceTelemetry
from modelfleet.telemetry.windows import Attach

__all__ = [
    "BUFFER_FILE",
    "TelemetryCollector",
    "UpdateCounters",
    "build_device_telemetry",
    "routed_versions",
]

#: The buffer's file in the agent's state folder.
BUFFER_FILE = "telemetry.sqlite3"

_GUARD_REASON = "local guard"


def routed_versions(host: ModelHost) -> Iterator[tuple[str, str, str]]:
    """(model, version, role) of every version routed now: production always, the
    candidate as ``candidate`` in a split and as ``shadow`` in shadow mode."""
    for name, route in list(host.routes().items()):
        yield name, route.production.version, "production"
        cand = route.candidate
        if cand is not None and route.mode is Mode.SPLIT:
            yield name, cand.version, "candidate"
        elif cand is not None and route.mode is Mode.SHADOW:
            yield name, cand.version, "shadow"


def _rollout_of(updater: Updater, model: str, version: str) -> str | None:
    desired = updater.state.desired or {}
    for a in list(desired.get("assignments") or []):
        if a.get("model") != model:
            continue
        versions = {
            str((a.get(k) or {}).get("version")) for k in ("production", "candidate") if a.get(k)
        }
        if version in versions:
            return str(a.get("rollout_id") or "") or None
    return None


class UpdateCounters:
    """``modelfleet_agent_updates_total{result}``, ``_downloads_total{result}``,
    ``_download_bytes_total`` and ``_refusals_total``, fed by the updater's hooks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.updates = Counter(
            "modelfleet_agent_updates",
            "Update events by result: installed (a switch), refused, rolled_back.",
            ["result"],
            registry=registry,
        )
        self.downloads = Counter(
            "modelfleet_agent_downloads",
            "Package downloads by result (ok: installed; failed: transient failure or refused).",
            ["result"],
            registry=registry,
        )
        self.download_bytes = Counter(
            "modelfleet_agent_download_bytes",
            "Bytes of model packages downloaded and installed.",
            registry=registry,
        )
        self.refusals = Counter(
            "modelfleet_agent_refusals",
            "Updates or desired states the agent refused (trust, checks, token).",
            registry=registry,
        )
        for result in ("installed", "refused", "rolled_back"):
            self.updates.labels(result)
        for result in ("ok", "failed"):
            self.downloads.labels(result)

    def on_event(self, kind: str) -> None:
        if kind == "switch":
            self.updates.labels("installed").inc()
        elif kind == "refused":
            self.updates.labels("refused").inc()
            self.refusals.inc()
        elif kind == "rollback":
            self.updates.labels("rolled_back").inc()

    def on_download(self, result: str, size: int) -> None:
        self.downloads.labels("ok" if result == "ok" else "failed").inc()
        if result == "ok" and size > 0:
            self.download_bytes.inc(size)


class TelemetryCollector(Collector):
    """The buffer and forwarder as Prometheus series (read at scrape time)."""

    def __init__(self, telemetry: DeviceTelemetry) -> None:
        self._telemetry = telemetry

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        st = self._telemetry.status()
        yield GaugeMetricFamily(
            "modelfleet_agent_telemetry_buffered_records",
            "Telemetry records in the device buffer, not yet acknowledged by the hub.",
            value=st["records"],
        )
        yield GaugeMetricFamily(
            "modelfleet_agent_telemetry_buffer_bytes",
            "Accounted bytes of the telemetry records in the device buffer.",
            value=st["bytes"],
        )
        for name, help_, key in (
            ("evicted", "Telemetry records evicted unsent (buffer full).", "evicted_total"),
            ("appended", "Telemetry records appended to the buffer.", "appended_total"),
            ("forwarded", "Telemetry records the hub acknowledged.", "forwarded_total"),
            (
                "forward_failures",
                "Telemetry batches that failed to reach the hub.",
                "forward_failures_total",
            ),
            (
                "append_failures",
                "Appends to the telemetry buffer that failed (disk full, SQLite error).",
                "append_failures_total",
            ),
        ):
            yield CounterMetricFamily(f"modelfleet_agent_telemetry_{name}", help_, value=st[key])
        forwarder = self._telemetry.forwarder
        last = forwarder.last_forward_at
        yield GaugeMetricFamily(
            "modelfleet_agent_telemetry_last_forward_timestamp_seconds",
            "Device time of the last batch the hub acknowledged (0: none yet).",
            value=last.timestamp() if last is not None else 0.0,
        )


def _attach_all(closers: Sequence[Attach]) -> Attach:
    """One ``attach`` of several: each key's fields from every closer, in order."""

    def attach(keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], dict[str, Any]]:
        out: dict[tuple[str, str, str], dict[str, Any]] = {}
        for close in closers:
            for key, fields in close(keys).items():
                out.setdefault(key, {}).update(fields)
        return out

    return attach


def build_device_telemetry(
    device_id: str,
    buffer: TelemetryBuffer,
    link: HubLink,
    updater: Updater,
    host: ModelHost,
    clock: Clock,
    window_s: float,
    counters: UpdateCounters | None = None,
    guard: GuardMonitor | None = None,
    profiles: ProfileObserver | None = None,
    *,
    anomaly: AnomalyScorer | None = None,
    sampler: ReviewSampler | None = None,
) -> DeviceTelemetry:
    """The agent's :class:`DeviceTelemetry`, hooked to the updater, the guard's monitor
    (breaches), the drift profile counts (a ``profile`` field per window), the anomaly
    scores (an ``anomaly`` field) and the review sampler (``review_sample`` records after
    a suspect window), not started."""
    closers: list[Attach] = [c.close for c in (profiles, anomaly) if c is not None]
    telemetry = DeviceTelemetry(
        device_id,
        buffer,
        lambda batch: link.send_telemetry(device_id, batch),
        clock,
        window_s=window_s,
        rollout_of=lambda model, version: _rollout_of(updater, model, version),
        routed=lambda: list(routed_versions(host)),
        production_of=lambda model: (
            r.production.version if (r := host.route(model)) is not None else None
        ),
        attach=_attach_all(closers) if closers else None,
        follow=None if sampler is None else sampler.after_close,
    )
    recorder = telemetry.recorder

    def on_event(at: str, kind: str, message: str, model: str | None, version: str | None) -> None:
        telemetry.record_event(at, kind, message, model, version)
        if counters is not None:
            counters.on_event(kind)
        if kind == "rollback" and model and version and _GUARD_REASON in message:
            recorder.on_guard(model, version, breach=False, rolled_back=True, role=None)

    updater.on_event = on_event
    if guard is not None:
        guard.on_breach_seen = lambda model, version, role: recorder.on_guard(
            model, version, breach=True, rolled_back=False, role=role or None
        )
    if counters is not None:
        updater.on_download = counters.on_download
    return telemetry
