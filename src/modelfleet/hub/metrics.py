"""The hub's Prometheus metrics (issue 7 contract 3): counters kept in-process, fleet gauges
read from the database at scrape time.

No series carries a device label: the number of series grows with sites, models and
versions, never with the fleet. The gauges come from a few ``GROUP BY`` queries whose
answers are cached for ``metrics_cache_s`` (read on the injected clock), so a storm of
scrapes costs one set of queries per period, and scrapes never run them concurrently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from modelfleet import __version__
from modelfleet.clock import Clock
from modelfleet.errors import ModelfleetError
from modelfleet.hub import db
from modelfleet.hub.drift_rollups import DRIFT_RESULTS

__all__ = [
    "BATCH_RESULTS",
    "DRIFT_STATE_VALUES",
    "INGEST_LAG_BUCKETS_S",
    "RECORD_RESULTS",
    "FleetGauges",
    "HubMetrics",
    "read_fleet_gauges",
]

log = logging.getLogger("modelfleet.hub")

BATCH_RESULTS = ("stored", "duplicate", "invalid", "refused")
RECORD_RESULTS = ("stored", "duplicate")
DEVICE_STATES = ("fresh", "stale", "never_seen")
#: ``modelfleet_drift_state`` value of each drift state (issue 9).
DRIFT_STATE_VALUES = {"stable": 0, "warning": 1, "drifting": 2}

#: Buckets of hub receive time minus window close time: a minute-window agent on a good
#: link lands in the first few; an agent back from a 72 h outage in the last ones.
INGEST_LAG_BUCKETS_S = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    6 * 3600.0, 24 * 3600.0, 72 * 3600.0, 7 * 86400.0,
)  # fmt: skip


@dataclass(frozen=True)
class FleetGauges:
    """What the fleet looks like now, as the gauges report it.

    Attributes:
        devices: state (``fresh``, ``stale``, ``never_seen``) -> device count.
        clock_skewed: devices whose last telemetry batch was flagged for clock skew.
        serving: ``(site, model, version)`` -> devices whose last report serves it.
        buffered: the sum of what devices last reported still buffered.
        evicted: the sum of the devices' reported eviction totals.
        drift: ``(model, site)`` -> (last drift score or None, drift state: 0 stable,
            1 warning, 2 drifting), from the sequential states (issue 9).
        overrides: ``(model, site)`` -> (last hour's override rate or None, override-rate
            state: 0 stable, 1 warning, 2 drifting), from the override states (ADR 0040).
    """

    devices: dict[str, int] = field(default_factory=dict)
    clock_skewed: int = 0
    serving: dict[tuple[str, str, str], int] = field(default_factory=dict)
    buffered: int = 0
    evicted: int = 0
    drift: dict[tuple[str, str], tuple[float | None, int]] = field(default_factory=dict)
    overrides: dict[tuple[str, str], tuple[float | None, int]] = field(default_factory=dict)


def read_fleet_gauges(s: Session, now: datetime, stale_after_s: float) -> FleetGauges:
    """The gauges from the database: a few aggregate queries, each answering a number
    of rows bounded by sites x models x versions (never by the fleet)."""
    cutoff = now - timedelta(seconds=stale_after_s)
    state = case(
        (db.Device.last_seen.is_(None), "never_seen"),
        (db.Device.last_seen < cutoff, "stale"),
        else_="fresh",
    )
    devices = dict.fromkeys(DEVICE_STATES, 0)
    for name, n in s.execute(select(state, func.count()).group_by(state)):
        devices[str(name)] = int(n)
    skewed, buffered, evicted = s.execute(
        select(
            func.count().filter(db.DeviceTelemetry.skew_flagged.is_(True)),
            func.coalesce(func.sum(db.DeviceTelemetry.buffered), 0),
            func.coalesce(func.sum(db.DeviceTelemetry.evicted_total), 0),
        )
    ).one()
    serving_rows = s.execute(
        select(db.Device.site, db.DeviceServing.model, db.DeviceServing.version, func.count())
        .join(db.Device, db.Device.id == db.DeviceServing.device_id)
        .group_by(db.Device.site, db.DeviceServing.model, db.DeviceServing.version)
    )
    drift_rows = s.execute(
        select(db.DriftStateRow.model, db.DriftStateRow.site, db.DriftStateRow.last_score,
               db.DriftStateRow.state)
    )  # fmt: skip
    o = db.OverrideStateRow
    override_rows = s.execute(select(o.model, o.site, o.last_rate, o.state))
    return FleetGauges(
        drift={(m, si): (v, DRIFT_STATE_VALUES.get(st, 0)) for m, si, v, st in drift_rows},
        overrides={(m, si): (v, DRIFT_STATE_VALUES.get(st, 0)) for m, si, v, st in override_rows},
        devices=devices,
        clock_skewed=int(skewed or 0),
        serving={(site, model, version): int(n) for site, model, version, n in serving_rows},
        buffered=int(buffered or 0),
        evicted=int(evicted or 0),
    )


class _FleetCollector(Collector):
    """Gauges from :func:`read_fleet_gauges`, cached for ``cache_s`` clock seconds."""

    def __init__(self, read: Callable[[], FleetGauges], clock: Clock, cache_s: float) -> None:
        self._read = read
        self._clock = clock
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: FleetGauges | None = None
        self._read_at = 0.0

    def _gauges(self) -> FleetGauges | None:
        with self._lock:  # concurrent scrapes wait for one read instead of each doing it
            mono = self._clock.monotonic()
            if self._cached is None or mono - self._read_at >= self._cache_s:
                try:
                    self._cached = self._read()
                    self._read_at = mono
                except ModelfleetError as e:
                    log.error("cannot read the fleet gauges: %s", e)
            return self._cached

    def collect(self) -> Iterator[Metric]:
        g = self._gauges()
        if g is None:
            return
        devices = GaugeMetricFamily(
            "modelfleet_hub_devices", "Enrolled devices by check-in state", labels=["state"]
        )
        for state in DEVICE_STATES:
            devices.add_metric([state], g.devices.get(state, 0))
        yield devices
        yield GaugeMetricFamily(
            "modelfleet_hub_devices_clock_skewed",
            "Devices whose clock is more than 300 s off the hub's (last telemetry batch)",
            value=g.clock_skewed,
        )
        serving = GaugeMetricFamily(
            "modelfleet_hub_devices_serving",
            "Devices whose last report says they serve this version (active or candidate)",
            labels=["site", "model", "version"],
        )
        for (site, model, version), n in sorted(g.serving.items()):
            serving.add_metric([site, model, version], n)
        yield serving
        yield GaugeMetricFamily(
            "modelfleet_hub_telemetry_buffered_records",
            "Telemetry records the devices last reported still buffered",
            value=g.buffered,
        )
        yield GaugeMetricFamily(
            "modelfleet_hub_telemetry_evicted_records",
            "Telemetry records the devices' buffers report evicted in total",
            value=g.evicted,
        )
        score = GaugeMetricFamily(
            "modelfleet_drift_score",
            "Drift score of the model at the site in the last hour stepped (largest PSI of "
            "drifting columns, 0 when none); absent before a scored hour",
            labels=["model", "site"],
        )
        states = GaugeMetricFamily(
            "modelfleet_drift_state",
            "Sequential drift state of the model at the site: 0 stable, 1 warning, 2 drifting",
            labels=["model", "site"],
        )
        for (model, site), (value, st) in sorted(g.drift.items()):
            if value is not None:
                score.add_metric([model, site], value)
            states.add_metric([model, site], st)
        yield score
        yield states
        rate = GaugeMetricFamily(
            "modelfleet_override_rate",
            "Share of judged answers a human overrode for the model's serving version at the "
            "site in the last hour stepped; absent before a judged hour",
            labels=["model", "site"],
        )
        override_states = GaugeMetricFamily(
            "modelfleet_override_state",
            "Sequential override-rate state of the model at the site against its baseline: "
            "0 stable, 1 warning, 2 drifting",
            labels=["model", "site"],
        )
        for (model, site), (value, st) in sorted(g.overrides.items()):
            if value is not None:
                rate.add_metric([model, site], value)
            override_states.add_metric([model, site], st)
        yield rate
        yield override_states


class HubMetrics:
    """The hub process's metrics registry.

    Args:
        read_gauges: reads :class:`FleetGauges` (from the database).
        clock: the hub's clock (for the gauge cache).
        cache_s: how long gauges are reused.
    """

    def __init__(
        self, read_gauges: Callable[[], FleetGauges], clock: Clock, cache_s: float
    ) -> None:
        self.registry = CollectorRegistry()
        self.checkins = Counter(
            "modelfleet_hub_checkins", "Device check-in reports recorded", registry=self.registry
        )
        self.batches = Counter(
            "modelfleet_hub_telemetry_batches",
            "Telemetry batches by outcome (duplicate: every record was already stored)",
            ["result"],
            registry=self.registry,
        )
        self.records = Counter(
            "modelfleet_hub_telemetry_records",
            "Telemetry records received, stored or already stored",
            ["result"],
            registry=self.registry,
        )
        self.ingest_lag = Histogram(
            "modelfleet_hub_telemetry_ingest_lag_seconds",
            "Hub receive time minus window close time (device clock), clamped at 0",
            buckets=INGEST_LAG_BUCKETS_S,
            registry=self.registry,
        )
        self.drift_windows = Counter(
            "modelfleet_hub_drift_windows",
            "Windows' drift counts at ingest: rolled up, version without a reference "
            "profile, or refused (counts that do not fit the version's profile)",
            ["result"],
            registry=self.registry,
        )
        for result in DRIFT_RESULTS:
            self.drift_windows.labels(result)
        for result in BATCH_RESULTS:
            self.batches.labels(result)
        for result in RECORD_RESULTS:
            self.records.labels(result)
        info = Gauge(
            "modelfleet_hub_info", "The hub's version", ["version"], registry=self.registry
        )
        info.labels(__version__).set(1)
        # issue 9: override rate = rate(overridden) / rate(overridden + confirmed)
        self.overrides = Counter(
            "modelfleet_hub_overrides",
            "Answers a human overrode or confirmed, from stored telemetry windows",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(_FleetCollector(read_gauges, clock, cache_s))

    def count_overrides(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Count the ``overrides`` of newly stored windows (checked by the wire format)."""
        for r in records:
            overrides = r.get("overrides") if r.get("kind") == "window" else None
            if not overrides:
                continue
            for outcome in ("overridden", "confirmed"):
                n = overrides.get(outcome, 0)
                if n:
                    self.overrides.labels(r["model"], r["version"], outcome).inc(n)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
