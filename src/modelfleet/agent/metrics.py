"""Prometheus metrics of the agent's serving app, in a registry of its own.

Each app gets its own :class:`prometheus_client.CollectorRegistry` (several apps may live in
one process, e.g. a simulated fleet or a test run). :class:`AgentMetrics` is a
:class:`~modelfleet.agent.observers.RequestObserver` of the request path's fan-out.

The per-request series (request count by outcome, latency histograms) are kept in plain
integer lists, written by the event loop alone, and exposed by a collector at scrape time:
that costs about a quarter of ``prometheus_client``'s labelled ``Counter.inc`` +
``Histogram.observe``. Latency uses the one fixed-edge
:class:`~modelfleet.monitoring.histogram.Histogram` the guard uses, exposed at the usual
coarser ``le`` bounds (a subset of its edges, so exact). The rare shadow events use ordinary
``prometheus_client`` counters.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelfleet.agent.observers import OUTCOMES, ComparisonResult, Outcome
from modelfleet.monitoring.histogram import (
    LATENCY_EDGES_S,
    PROMETHEUS_LATENCY_EDGES_S,
    Histogram,
)
from modelfleet.serving.host import ModelHost

if TYPE_CHECKING:
    from modelfleet.agent.updater import MetadataHealth

__all__ = ["LATENCY_BUCKETS", "OUTCOME_LABELS", "AgentMetrics"]

#: The ``le`` bounds of the latency series (seconds).
LATENCY_BUCKETS: Final = PROMETHEUS_LATENCY_EDGES_S

#: The ``outcome`` label of each request outcome (``ok`` keeps its old label ``success``).
OUTCOME_LABELS: Final[dict[Outcome, str]] = {
    "ok": "success",
    "client_error": "client_error",
    "server_error": "server_error",
    "timeout": "timeout",
}
_LABELS: Final = tuple(OUTCOME_LABELS[o] for o in OUTCOMES)
_OUTCOME_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(OUTCOMES)}
_EDGES: Final = LATENCY_EDGES_S


class _Series:
    """Counts of one (model, version): outcomes, latency histograms."""

    __slots__ = ("compute", "latency", "outcomes", "queue")

    def __init__(self) -> None:
        self.outcomes = [0] * len(OUTCOMES)
        self.latency = Histogram(LATENCY_EDGES_S)  # server-side: compute + queue
        self.compute = Histogram(LATENCY_EDGES_S)
        self.queue = Histogram(LATENCY_EDGES_S)

    def copy(self) -> _Series:
        twin = _Series()
        twin.outcomes = list(self.outcomes)
        twin.latency = self.latency.copy()
        twin.compute = self.compute.copy()
        twin.queue = self.queue.copy()
        return twin


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _buckets(hist: Histogram) -> list[tuple[str, int]]:
    return [(_le(b), n) for b, n in hist.cumulative(LATENCY_BUCKETS)]


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


class _MetadataCollector:
    """Whether the device's metadata is expired, read at scrape time (ADR 0036)."""

    def __init__(self, health: Callable[[], MetadataHealth]) -> None:
        self._health = health

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        health = self._health()
        yield GaugeMetricFamily(
            "modelfleet_agent_metadata_expired",
            "1 while the verified metadata is expired: no new installs, the running model "
            "keeps serving (runbook: metadata-expired).",
            value=1.0 if health.expired else 0.0,
        )
        expires = GaugeMetricFamily(
            "modelfleet_agent_metadata_expires_timestamp_seconds",
            "Earliest expiry of the cached verified metadata, by repository (Unix time).",
            labels=["repo"],
        )
        for repo, at in sorted(health.expires.items()):
            if at is not None:
                expires.add_metric([repo], at.timestamp())
        yield expires
        if health.floor is not None:
            yield GaugeMetricFamily(
                "modelfleet_agent_time_floor_timestamp_seconds",
                "The device's time floor: the latest time it accepted metadata (Unix time).",
                value=health.floor.timestamp(),
            )


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
            "Server-side time per request (compute + queue, not the upload), by model, version.",
            labels=["model", "version"],
        )
        compute = HistogramMetricFamily(
            "modelfleet_agent_compute_seconds",
            "Time spent in the model runtime per request.",
            labels=["model", "version"],
        )
        queue = HistogramMetricFamily(
            "modelfleet_agent_queue_seconds",
            "Server-side time per request outside the model runtime (decode, wait, encode).",
            labels=["model", "version"],
        )
        for (model, version), series in self._metrics.series():
            for label, count in zip(_LABELS, series.outcomes, strict=True):
                requests.add_metric([model, version, label], count)
            for family, hist in ((latency, series.latency), (compute, series.compute),
                                 (queue, series.queue)):  # fmt: skip
                family.add_metric([model, version], _buckets(hist), hist.total)
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
    ``modelfleet_agent_shadow_dropped_total``, ``modelfleet_agent_overrides_total`` (issue 9)
    and ``modelfleet_agent_active_version_info``; once :meth:`watch_metadata` is called,
    ``modelfleet_agent_metadata_expired``,
    ``modelfleet_agent_metadata_expires_timestamp_seconds{repo}`` and
    ``modelfleet_agent_time_floor_timestamp_seconds`` (issue 11, ADR 0036).

    Attributes:
        registry: the app's own registry; render it with :meth:`render`.
    """

    def __init__(self, host: ModelHost, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._series: dict[str, dict[str, _Series]] = {}
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
        self.shadow_score_shift = Gauge(
            "modelfleet_agent_shadow_score_shift",
            "Mean absolute change of the candidate's scores vs production, last comparison.",
            ["model", "version"],
            registry=self.registry,
        )
        self.overrides = Counter(
            "modelfleet_agent_overrides",
            "Answers a human overrode or confirmed, as the application reported them.",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_RequestCollector(self))
        self.registry.register(_ActiveVersionCollector(host))

    def watch_metadata(self, health: Callable[[], MetadataHealth]) -> None:
        """Expose the metadata expiry series, read from ``health`` at each scrape (the
        updater's :meth:`~modelfleet.agent.updater.Updater.metadata_health`)."""
        self.registry.register(_MetadataCollector(health))

    # the RequestObserver of the request path ------------------------------------------------

    def on_request(
        self,
        model: str,
        version: str,
        role: str,
        outcome: Outcome,
        compute_s: float | None,
        queue_s: float | None,
        confidence: float | None,
        caller: str,
    ) -> None:
        """Count one inference request and record its server-side times.

        Raises:
            KeyError: ``outcome`` is not one of :data:`~modelfleet.agent.observers.OUTCOMES`.
        """
        index = _OUTCOME_INDEX[outcome]
        # Inlined Histogram.record, and no lock: this runs for every request, always on the
        # event loop (the one writer); readers copy (:meth:`series`).
        versions = self._series.get(model)
        if versions is None:
            versions = self._series[model] = {}
        series = versions.get(version)
        if series is None:
            series = versions[version] = _Series()
        series.outcomes[index] += 1
        if queue_s is not None:
            hist = series.queue
            hist.counts[bisect_left(_EDGES, queue_s)] += 1
            hist.total += queue_s
            total = queue_s if compute_s is None else queue_s + compute_s
            hist = series.latency
            hist.counts[bisect_left(_EDGES, total)] += 1
            hist.total += total
        if compute_s is not None:
            hist = series.compute
            hist.counts[bisect_left(_EDGES, compute_s)] += 1
            hist.total += compute_s

    def on_comparison(
        self, model: str, candidate_version: str, comparison: ComparisonResult
    ) -> None:
        """Count one finished shadow comparison (and its score shift, when measured)."""
        self.observe_shadow(model, candidate_version, comparison.disagreed)
        if comparison.score_shift is not None:
            self.shadow_score_shift.labels(model, candidate_version).set(comparison.score_shift)

    # -----------------------------------------------------------------------------------------

    def series(self) -> list[tuple[tuple[str, str], _Series]]:
        """A copy of the per-version request series, sorted by (model, version).

        Safe from any thread; a copy taken while a request is being counted may lag that
        request in one of its series."""
        return sorted(  # list(): a C-level copy, safe against the writer adding keys
            ((model, version), series.copy())
            for model, versions in list(self._series.items())
            for version, series in list(versions.items())
        )

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
        """Cumulative per-version figures for telemetry.

        Returns:
            ``{model: {version: {"success": n, "client_error": n, "server_error": n,
            "timeout": n, "latency_count": n, "latency_sum": seconds,
            "latency_buckets": [[le, n], ...], "shadow_compared": n,
            "shadow_disagreements": n}}}``, counts cumulative since the app started
            (JSON-able; ``le`` of the last bucket is ``"+Inf"``; latency is server-side).
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}

        def entry(model: str, version: str) -> dict[str, Any]:
            return out.setdefault(model, {}).setdefault(
                version,
                {
                    **dict.fromkeys(_LABELS, 0),
                    "latency_count": 0,
                    "latency_sum": 0.0,
                    "latency_buckets": [],
                    "shadow_compared": 0,
                    "shadow_disagreements": 0,
                },
            )

        for (model, version), series in self.series():
            figures = entry(model, version)
            figures.update(zip(_LABELS, series.outcomes, strict=True))
            figures["latency_count"] = series.latency.count
            figures["latency_sum"] = series.latency.total
            figures["latency_buckets"] = [
                ["+Inf" if bound == float("inf") else bound, count]
                for bound, count in series.latency.cumulative(LATENCY_BUCKETS)
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
