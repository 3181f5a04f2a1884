"""Prometheus metrics of the agent's serving app, in a registry of its own.

Each app gets its own :class:`prometheus_client.CollectorRegistry` (several apps may live in
one process, e.g. a simulated fleet or a test run).

The per-request series (request count by outcome, latency histogram) are kept in plain
integer lists behind one lock and exposed by a collector at scrape time: that costs about a
quarter of ``prometheus_client``'s labelled ``Counter.inc`` + ``Histogram.observe``, which was
2-3 % of a small model's whole request on the reference 2-core box. The rare shadow events
use ordinary ``prometheus_client`` counters.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelfleet.serving.host import ModelHost

__all__ = [
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "OUTCOME_CLIENT_ERROR",
    "OUTCOME_SERVER_ERROR",
    "OUTCOME_SUCCESS",
    "AgentMetrics",
]

OUTCOME_SUCCESS: Final = "success"
OUTCOME_CLIENT_ERROR: Final = "client_error"
OUTCOME_SERVER_ERROR: Final = "server_error"
OUTCOMES: Final = (OUTCOME_SUCCESS, OUTCOME_CLIENT_ERROR, OUTCOME_SERVER_ERROR)
_OUTCOME_INDEX: Final = {name: i for i, name in enumerate(OUTCOMES)}

#: Upper bounds in seconds; small ONNX models answer in well under a millisecond on one core.
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class _Series:
    """Counts of one (model, version): outcomes, latency buckets (not cumulative), sum."""

    __slots__ = (
        "buckets",
        "compute_buckets",
        "compute_seconds",
        "outcomes",
        "queue_buckets",
        "queue_seconds",
        "total_seconds",
    )

    def __init__(self) -> None:
        self.outcomes = [0] * len(OUTCOMES)
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total_seconds = 0.0
        self.compute_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.compute_seconds = 0.0
        self.queue_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.queue_seconds = 0.0

    def cumulative(self, which: list[int] | None = None) -> list[tuple[float, int]]:
        running, out = 0, []
        counts = self.buckets if which is None else which
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _ActiveVersionCollector:
    """Reads the host at scrape time, so route swaps need no metric bookkeeping."""

    def __init__(self, host: ModelHost) -> None:
        self._host = host

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = InfoMetricFamily(
            "modelfleet_agent_active_version",
            "Versions of each served model: production, candidate, previous, mode, share.",
            labels=["model"],
        )
        for name, route in sorted(self._host.routes().items()):
            family.add_metric(
                [name],
                {
                    "production": route.production.version,
                    "candidate": route.candidate.version if route.candidate else "",
                    "previous": route.previous.version if route.previous else "",
                    "mode": route.mode.value,
                    "share": repr(route.share),
                },
            )
        yield family


class _RequestCollector:
    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modelfleet_agent_requests",
            "Inference requests by model, serving version and outcome.",
            labels=["model", "version", "outcome"],
        )
        latency = HistogramMetricFamily(
            "modelfleet_agent_request_seconds",
            "Time from request start to response body ready, by model and serving version.",
            labels=["model", "version"],
        )
        compute = HistogramMetricFamily(
            "modelfleet_agent_compute_seconds",
            "Time spent in the model runtime per successful request.",
            labels=["model", "version"],
        )
        queue = HistogramMetricFamily(
            "modelfleet_agent_queue_seconds",
            "Time per successful request outside the model runtime (read, decode, wait).",
            labels=["model", "version"],
        )
        for (model, version), series in self._metrics.series():
            for outcome, count in zip(OUTCOMES, series.outcomes, strict=True):
                requests.add_metric([model, version, outcome], count)
            buckets = [(_le(bound), count) for bound, count in series.cumulative()]
            latency.add_metric([model, version], buckets, series.total_seconds)
            for family, counts, total in (
                (compute, series.compute_buckets, series.compute_seconds),
                (queue, series.queue_buckets, series.queue_seconds),
            ):
                cumulative = [(_le(b), c) for b, c in series.cumulative(counts)]
                family.add_metric([model, version], cumulative, total)
        yield requests
        yield latency
        yield compute
        yield queue


class AgentMetrics:
    """The serving metrics of one agent app.

    Exposed series: ``modelfleet_agent_requests_total{model,version,outcome}``,
    ``modelfleet_agent_request_seconds{model,version}`` (histogram),
    ``modelfleet_agent_shadow_compared_total{model,version}``,
    ``modelfleet_agent_shadow_disagreements_total{model,version}``,
    ``modelfleet_agent_shadow_dropped_total`` and ``modelfleet_agent_active_version_info``.

    Attributes:
        registry: the app's own registry; render it with :meth:`render`.
    """

    def __init__(self, host: ModelHost, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        self.shadow_compared = Counter(
            "modelfleet_agent_shadow_compared",
            "Shadow comparisons completed, by model and candidate version.",
            ["model", "version"],
            registry=self.registry,
        )
        self.shadow_disagreements = Counter(
            "modelfleet_agent_shadow_disagreements",
            "Shadow comparisons where the candidate disagreed with production.",
            ["model", "version"],
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "modelfleet_agent_shadow_dropped",
            "Shadow requests dropped because the shadow queue was full.",
            registry=self.registry,
        )
        self.registry.register(_RequestCollector(self))
        self.registry.register(_ActiveVersionCollector(host))

    def observe_request(
        self,
        model: str,
        version: str,
        outcome: str,
        seconds: float,
        compute_seconds: float | None = None,
    ) -> None:
        """Count one inference request and record its duration.

        ``compute_seconds`` (time inside the runtime) splits a successful request's
        duration into compute and queue time.

        Raises:
            KeyError: ``outcome`` is not one of :data:`OUTCOMES`.
        """
        index = _OUTCOME_INDEX[outcome]
        bucket = bisect_left(LATENCY_BUCKETS, seconds)  # le semantics: bound >= value
        with self._lock:
            series = self._series.get((model, version))
            if series is None:
                series = self._series[(model, version)] = _Series()
            series.outcomes[index] += 1
            series.buckets[bucket] += 1
            series.total_seconds += seconds
            if compute_seconds is not None:
                queue_seconds = max(seconds - compute_seconds, 0.0)
                series.compute_buckets[bisect_left(LATENCY_BUCKETS, compute_seconds)] += 1
                series.compute_seconds += compute_seconds
                series.queue_buckets[bisect_left(LATENCY_BUCKETS, queue_seconds)] += 1
                series.queue_seconds += queue_seconds

    def series(self) -> list[tuple[tuple[str, str], _Series]]:
        """A consistent copy of the per-version request series, sorted by (model, version)."""
        with self._lock:
            copies = []
            for key, series in sorted(self._series.items()):
                copy = _Series()
                copy.outcomes = list(series.outcomes)
                copy.buckets = list(series.buckets)
                copy.total_seconds = series.total_seconds
                copy.compute_buckets = list(series.compute_buckets)
                copy.compute_seconds = series.compute_seconds
                copy.queue_buckets = list(series.queue_buckets)
                copy.queue_seconds = series.queue_seconds
                copies.append((key, copy))
        return copies

    def observe_shadow(self, model: str, version: str, disagreed: bool) -> None:
        """Count one finished shadow comparison of candidate ``version``."""
        self.shadow_compared.labels(model, version).inc()
        disagreements = self.shadow_disagreements.labels(model, version)  # exists at 0 too
        if disagreed:
            disagreements.inc()

    def observe_shadow_dropped(self) -> None:
        """Count one shadow request dropped at a full queue."""
        self.shadow_dropped.inc()

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Cumulative per-version figures for the guard and telemetry windows.

        Returns:
            ``{model: {version: {"success": n, "client_error": n, "server_error": n,
            "latency_count": n, "latency_sum": seconds, "latency_buckets": [[le, n], ...],
            "shadow_compared": n, "shadow_disagreements": n}}}``, counts cumulative since
            the app started (JSON-able; ``le`` of the last bucket is ``"+Inf"``).
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}

        def entry(model: str, version: str) -> dict[str, Any]:
            return out.setdefault(model, {}).setdefault(
                version,
                {
                    **dict.fromkeys(OUTCOMES, 0),
                    "latency_count": 0,
                    "latency_sum": 0.0,
                    "latency_buckets": [],
                    "shadow_compared": 0,
                    "shadow_disagreements": 0,
                },
            )

        for (model, version), series in self.series():
            figures = entry(model, version)
            figures.update(zip(OUTCOMES, series.outcomes, strict=True))
            figures["latency_count"] = sum(series.buckets)
            figures["latency_sum"] = series.total_seconds
            figures["latency_buckets"] = [
                ["+Inf" if bound == float("inf") else bound, count]
                for bound, count in series.cumulative()
            ]
        for metric, key in (
            (self.shadow_compared, "shadow_compared"),
            (self.shadow_disagreements, "shadow_disagreements"),
        ):
            for family in metric.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        labels = sample.labels
                        entry(labels["model"], labels["version"])[key] = int(sample.value)
        return out

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
