"""OTLP/HTTP export (extra ``otel``): request traces and the agent's key metrics.

:class:`OtlpExporter` is the agent's ``RequestTracer`` (the hook of
:mod:`modelfleet.agent.observers`, matched structurally: this package never imports
``agent/``). The request path asks :meth:`OtlpExporter.sampled` once per request and, when
it said yes, reports the request's :func:`time.perf_counter` readings to
:meth:`OtlpExporter.record`, which turns them into four spans with explicit times::

    infer       t_start    → t_encoded     attributes model, version, role, outcome
    ├ decode    t_start    → t_decoded
    ├ inference t_decoded  → t_computed
    └ encode    t_computed → t_encoded

A failed request's stages that never happened carry the time it ended (the hook's
contract) and are left out, as is any span whose reading is None; ``infer`` ends at the
last reading there is. perf_counter seconds become epoch
nanoseconds through one offset taken at construction (wall clock − perf_counter), so the
spans keep the request path's exact durations. Sampling: every ``candidate`` request, and a
``sample`` share (default 1 %) of the others.

Metrics: the agent's own Prometheus registry is read at each export (every
``metrics_interval_s``) by OpenTelemetry observable instruments, one per family of
:data:`KEY_SERIES`: counters become monotonic sums, gauges gauges, and a histogram its
``_count`` and ``_sum`` (OpenTelemetry has no observable histogram). The names stay the
Prometheus ones, so a collector that writes to Prometheus gives the same series.

Spans and metrics leave through the SDK's batching processors on their own threads; a
collector that is down costs dropped telemetry (the SDK keeps a bounded queue), never a
slow request. The OpenTelemetry modules are imported only when an exporter is built: this
module itself imports without the extra.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from modelfleet import __version__
from modelfleet.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

__all__ = [
    "KEY_SERIES",
    "OTEL_MODULES",
    "SPAN_NAMES",
    "OtlpExporter",
    "OtlpSettings",
]

#: The modules the ``otel`` extra brings (what the CLI checks before starting).
OTEL_MODULES: Final = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
#: The span of the whole request and its three children, in order.
SPAN_NAMES: Final = ("infer", "decode", "inference", "encode")
#: Prometheus metric families exported over OTLP: (family name, type).
KEY_SERIES: Final[tuple[tuple[str, str], ...]] = (
    ("modelfleet_agent_requests", "counter"),
    ("modelfleet_agent_request_seconds", "histogram"),
    ("modelfleet_agent_compute_seconds", "histogram"),
    ("modelfleet_agent_shadow_compared", "counter"),
    ("modelfleet_agent_shadow_disagreements", "counter"),
    ("modelfleet_agent_guard_rollbacks", "counter"),
    ("modelfleet_agent_updates", "counter"),
    ("modelfleet_agent_refusals", "counter"),
    ("modelfleet_agent_telemetry_buffered_records", "gauge"),
    ("modelfleet_agent_telemetry_evicted", "counter"),
    ("modelfleet_agent_telemetry_forward_failures", "counter"),
)
_FAILED_OUTCOMES: Final = frozenset({"server_error", "timeout"})


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Where and how much to export.

    Attributes:
        endpoint: the collector's OTLP/HTTP base URL (``http://collector:4318``); traces go
            to ``/v1/traces``, metrics to ``/v1/metrics`` under it.
        trace_sample: share of production requests traced, 0–1 (candidates: all).
        metrics_interval_s: seconds between metric exports (1 s – 1 h).
        timeout_s: per export request.
    """

    endpoint: str
    trace_sample: float = 0.01
    metrics_interval_s: float = 60.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"OTLP endpoint must be an http(s) URL, not {self.endpoint!r}")
        if not 0.0 <= self.trace_sample <= 1.0:
            raise ConfigError("trace sample must be between 0 and 1")
        if not 1.0 <= self.metrics_interval_s <= 3600.0:
            raise ConfigError("OTLP metrics interval must be between 1 s and 1 h")
        if not 0.1 <= self.timeout_s <= 300.0:
            raise ConfigError("OTLP timeout must be between 0.1 s and 300 s")

    def url(self, signal: str) -> str:
        """The endpoint of one signal (``traces`` or ``metrics``)."""
        return f"{self.endpoint.rstrip('/')}/v1/{signal}"


class OtlpExporter:
    """Traces sampled requests and exports the agent's key metrics over OTLP/HTTP.

    Args:
        settings: endpoint, sampling, intervals.
        resource: OpenTelemetry resource attributes (the agent passes ``service.name``,
            ``service.instance.id`` = device id); ``service.version`` is added.
        registry: the Prometheus registry whose :data:`KEY_SERIES` are exported; None: no
            metrics until :meth:`export_registry` is called.
        rng: uniform [0, 1) draws for sampling (injected by tests).
        wall_ns, perf: the two clocks whose difference maps perf_counter readings to epoch
            nanoseconds (injected by tests).

    Raises:
        ModuleNotFoundError: the ``otel`` extra is not installed.
    """

    def __init__(
        self,
        settings: OtlpSettings,
        resource: dict[str, str],
        registry: CollectorRegistry | None = None,
        *,
        rng: Callable[[], float] = random.random,
        wall_ns: Callable[[], int] = time.time_ns,
        perf: Callable[[], float] = time.perf_counter,
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        self.settings = settings
        self._rng = rng
        self._share = settings.trace_sample
        self._offset_ns = wall_ns() - round(perf() * 1e9)
        self._resource = Resource.create(
            {"service.version": __version__, "service.name": "modelfleet", **resource}
        )
        # Sampling is decided before the request runs (sampled()); the SDK keeps all it gets.
        self._traces: TracerProvider = TracerProvider(resource=self._resource, sampler=ALWAYS_ON)
        self._traces.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=settings.url("traces"), timeout=settings.timeout_s)
            )
        )
        self._tracer = self._traces.get_tracer("modelfleet.agent", __version__)
        self._trace = trace
        self._metrics: MeterProvider | None = None
        if registry is not None:
            self.export_registry(registry)

    def export_registry(self, registry: CollectorRegistry) -> None:
        """Start exporting the :data:`KEY_SERIES` of ``registry`` (once; the agent calls it
        when its app, and so its registry, exists).

        Raises:
            ConfigError: metrics are already exported.
        """
        if self._metrics is not None:
            raise ConfigError("the OTLP exporter already exports a registry")
        self._metrics = self._meter_provider(registry)

    def _meter_provider(self, registry: CollectorRegistry) -> MeterProvider:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(
                endpoint=self.settings.url("metrics"), timeout=self.settings.timeout_s
            ),
            export_interval_millis=self.settings.metrics_interval_s * 1000,
        )
        provider = MeterProvider(resource=self._resource, metric_readers=[reader])
        meter = provider.get_meter("modelfleet.agent", __version__)
        for family, kind in KEY_SERIES:
            if kind == "counter":
                meter.create_observable_counter(
                    family, [_observer(registry, family, f"{family}_total")]
                )
            elif kind == "gauge":
                meter.create_observable_gauge(family, [_observer(registry, family, family)])
            else:
                for suffix in ("_count", "_sum"):
                    meter.create_observable_counter(
                        family + suffix,
                        [_observer(registry, family, family + suffix)],
                        unit="s" if suffix == "_sum" else "",
                    )
        return provider

    # the RequestTracer hook ------------------------------------------------------------------

    def sampled(self, role: str) -> bool:
        """Whether to trace the next request of ``role`` (always for ``candidate``)."""
        return role == "candidate" or (self._share > 0.0 and self._rng() < self._share)

    def record(
        self,
        model: str,
        version: str,
        role: str,
        t_start: float,
        t_decoded: float | None,
        t_computed: float | None,
        t_encoded: float | None,
        outcome: str,
    ) -> None:
        """Emit the spans of one sampled request (perf_counter seconds; see module doc).

        Never raises for odd readings: a reading before the previous one is clamped to it.
        """
        offset = self._offset_ns

        def ns(t: float) -> int:
            return offset + round(t * 1e9)

        readings = [t_start, t_decoded, t_computed, t_encoded]
        stamps: list[int | None] = []
        last = ns(t_start)
        for t in readings:
            if t is None:
                stamps.append(None)
                continue
            last = max(last, ns(t))
            stamps.append(last)
        start = stamps[0]
        assert start is not None
        attributes = {"model": model, "version": version, "role": role, "outcome": outcome}
        root = self._tracer.start_span("infer", attributes=attributes, start_time=start)
        if outcome in _FAILED_OUTCOMES:
            root.set_status(self._trace.Status(self._trace.StatusCode.ERROR, outcome))
        context = self._trace.set_span_in_context(root)
        child_attributes = {"model": model, "version": version, "role": role}
        failed = outcome != "ok"
        for name, begin, end in zip(SPAN_NAMES[1:], stamps, stamps[1:], strict=False):
            if begin is not None and end is not None and not (failed and begin == end):
                child = self._tracer.start_span(
                    name, context=context, attributes=child_attributes, start_time=begin
                )
                child.end(end_time=end)
        root.end(end_time=last)

    # -----------------------------------------------------------------------------------------

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export what is pending now (tests, shutdown); True when everything went out."""
        millis = int(timeout_s * 1000)
        ok = self._traces.force_flush(millis)
        if self._metrics is not None:
            ok = self._metrics.force_flush(millis) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop the export threads (at agent exit)."""
        self._traces.shutdown()
        if self._metrics is not None:
            self._metrics.shutdown()


def _observer(
    registry: CollectorRegistry, family: str, sample: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """A callback yielding the samples named ``sample`` of ``family`` at each export."""

    def observe(options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        for metric in registry.collect():
            if metric.name != family:
                continue
            for s in metric.samples:
                if s.name == sample:
                    yield Observation(s.value, dict(s.labels))

    return observe
