"""Prometheus metrics of the agent's serving app, in a registry of its own.

Each app gets its own :class:`prometheus_client.CollectorRegistry` (several apps may live in
one process, e.g. a simulated fleet or a test run). Label children are cached so that the
per-request cost stays at two dictionary lookups and two locked updates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelfleet.serving.host import ModelHost

__all__ = [
    "LATENCY_BUCKETS",
    "OUTCOME_CLIENT_ERROR",
    "OUTCOME_SERVER_ERROR",
    "OUTCOME_SUCCESS",
    "AgentMetrics",
]

OUTCOME_SUCCESS: Final = "success"
OUTCOME_CLIENT_ERROR: Final = "client_error"
OUTCOME_SERVER_ERROR: Final = "server_error"

#: Seconds; small ONNX models answer in well under a millisecond on one core.
LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


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


class AgentMetrics:
    """The serving metrics of one agent app.

    Attributes:
        registry: the app's own registry; render it with :meth:`render`.
    """

    def __init__(self, host: ModelHost, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "modelfleet_agent_requests",
            "Inference requests by model, serving version and outcome.",
            ["model", "version", "outcome"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "modelfleet_agent_request_seconds",
            "Time from request start to response body ready, by model and serving version.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self.registry.register(_ActiveVersionCollector(host))
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}

    def observe_request(self, model: str, version: str, outcome: str, seconds: float) -> None:
        """Count one inference request and record its duration."""
        key = (model, version, outcome)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(*key)
        counter.inc()
        latency_key = (model, version)
        histogram = self._latency_children.get(latency_key)
        if histogram is None:
            histogram = self._latency_children[latency_key] = self.request_seconds.labels(
                *latency_key
            )
        histogram.observe(seconds)

    def observe_shadow(self, model: str, version: str, disagreed: bool) -> None:
        """Count one finished shadow comparison of candidate ``version``."""
        self.shadow_compared.labels(model, version).inc()
        disagreements = self.shadow_disagreements.labels(model, version)  # exists at 0 too
        if disagreed:
            disagreements.inc()

    def observe_shadow_dropped(self) -> None:
        """Count one shadow request dropped at a full queue."""
        self.shadow_dropped.inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
