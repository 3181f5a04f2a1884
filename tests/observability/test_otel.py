"""OTLP export of request traces and key metrics, against a real OTLP/HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")

from modelfleet.agent.metrics import AgentMetrics
from modelfleet.errors import ConfigError
from modelfleet.serving.host import ModelHost
from modelfleet.telemetry.otel import OtlpExporter, OtlpSettings
from tests.observability.otlp_receiver import Received, Span, otlp_receiver

WALL_NS = 1_800_000_000_000_000_000  # the wall clock when the exporter was built
PERF_AT_BUILD = 1000.0  # perf_counter then


@pytest.fixture
def receiver() -> Iterator[Received]:
    with otlp_receiver() as received:
        yield received


def exporter(received: Received, sample: float = 0.0, **kw: object) -> OtlpExporter:
    return OtlpExporter(
        OtlpSettings(received.url, trace_sample=sample),
        {"service.name": "modelfleet-agent", "service.instance.id": "press-01"},
        wall_ns=lambda: WALL_NS,
        perf=lambda: PERF_AT_BUILD,
        **kw,  # type: ignore[arg-type]
    )


def by_name(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def test_a_sampled_request_becomes_infer_with_decode_inference_encode_children(
    receiver: Received,
) -> None:
    ex = exporter(receiver)
    t0 = PERF_AT_BUILD + 5.0
    ex.record("m", "3", "candidate", t0, t0 + 0.001, t0 + 0.004, t0 + 0.0045, "ok")
    assert ex.force_flush()
    assert receiver.wait(lambda r: len(r.spans) == 4), receiver.paths
    spans = by_name(receiver.spans)
    root = spans["infer"]
    assert root.parent_span_id == b""
    for name in ("decode", "inference", "encode"):
        assert spans[name].parent_span_id == root.span_id, name
        assert spans[name].trace_id == root.trace_id
        assert {k: spans[name].attributes[k] for k in ("model", "version", "role")} == {
            "model": "m",
            "version": "3",
            "role": "candidate",
        }
    assert root.attributes == {"model": "m", "version": "3", "role": "candidate", "outcome": "ok"}
    start = WALL_NS + 5_000_000_000  # perf_counter seconds -> epoch ns, exactly
    assert (root.start_ns, root.end_ns) == (start, start + 4_500_000)
    assert (spans["decode"].start_ns, spans["decode"].end_ns) == (start, start + 1_000_000)
    assert (spans["inference"].start_ns, spans["inference"].end_ns) == (
        start + 1_000_000,
        start + 4_000_000,
    )
    assert (spans["encode"].start_ns, spans["encode"].end_ns) == (
        start + 4_000_000,
        start + 4_500_000,
    )
    assert root.resource["service.instance.id"] == "press-01"
    ex.shutdown()


def test_a_failed_request_has_only_the_spans_of_the_stages_it_lived(
    receiver: Received,
) -> None:
    # The hook's contract: stages that never happened carry the time the request ended.
    ex = exporter(receiver)
    t0 = PERF_AT_BUILD + 1.0
    end = t0 + 0.002
    ex.record("m", "3", "production", t0, end, end, end, "client_error")  # bad body
    ex.record("m", "3", "production", t0, t0 + 0.001, end, end, "timeout")  # model too slow
    assert ex.force_flush()
    assert receiver.wait(lambda r: len(r.spans) == 5)
    outcomes = {s.span_id: s.attributes["outcome"] for s in receiver.spans if s.name == "infer"}
    got = sorted((outcomes[s.parent_span_id], s.name) for s in receiver.spans if s.name != "infer")
    assert got == [("client_error", "decode"), ("timeout", "decode"), ("timeout", "inference")]
    failed = next(s for s in receiver.spans if s.attributes.get("outcome") == "timeout")
    assert failed.status_code == 2  # STATUS_CODE_ERROR
    assert failed.end_ns == WALL_NS + 1_002_000_000
    ex.shutdown()


def test_missing_readings_leave_out_their_spans(receiver: Received) -> None:
    ex = exporter(receiver)
    t0 = PERF_AT_BUILD + 1.0
    ex.record("m", "3", "production", t0, t0 + 0.001, None, None, "server_error")
    assert ex.force_flush()
    assert receiver.wait(lambda r: len(r.spans) == 2)
    assert sorted(s.name for s in receiver.spans) == ["decode", "infer"]
    root = next(s for s in receiver.spans if s.name == "infer")
    assert root.end_ns == WALL_NS + 1_001_000_000  # ends at its last reading
    ex.shutdown()


class Draws:
    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def __call__(self) -> float:
        return next(self.values)


@pytest.mark.parametrize(
    ("sample", "role", "draw", "expected"),
    [
        ("never", "candidate", None, True),  # candidates: always, whatever the share
        ("never", "production", None, False),
        ("1 %", "production", 0.005, True),
        ("1 %", "production", 0.5, False),
        ("all", "production", 0.999, True),
    ],
)
def test_sampling_takes_every_candidate_and_a_share_of_the_rest(
    receiver: Received, sample: str, role: str, draw: float | None, expected: bool
) -> None:
    share = {"never": 0.0, "1 %": 0.01, "all": 1.0}[sample]
    ex = exporter(receiver, share, rng=Draws([] if draw is None else [draw]))
    assert ex.sampled(role) is expected
    ex.shutdown()


def test_key_agent_metrics_are_exported_with_their_labels(receiver: Received) -> None:
    metrics = AgentMetrics(ModelHost())
    for outcome in ("ok", "ok", "server_error"):
        metrics.on_request("m", "3", "production", outcome, 0.002, 0.001, None, "10.0.0.1")  # type: ignore[arg-type]
    metrics.observe_shadow("m", "4", True)
    ex = exporter(receiver, registry=metrics.registry)
    assert ex.force_flush()
    assert receiver.wait(lambda r: "modelfleet_agent_requests" in r.metrics), receiver.paths
    requests = {
        (a["model"], a["version"], a["outcome"]): v
        for a, v in receiver.metrics["modelfleet_agent_requests"]
    }
    assert requests[("m", "3", "success")] == 2
    assert requests[("m", "3", "server_error")] == 1
    (count,) = receiver.metrics["modelfleet_agent_request_seconds_count"]
    assert count == ({"model": "m", "version": "3"}, 3)
    (total,) = receiver.metrics["modelfleet_agent_request_seconds_sum"]
    assert total[1] == pytest.approx(0.009)
    assert receiver.metrics["modelfleet_agent_shadow_disagreements"] == [
        ({"model": "m", "version": "4"}, 1)
    ]
    ex.shutdown()


@pytest.mark.parametrize(
    "settings",
    [
        {"endpoint": "collector:4318"},
        {"endpoint": "http://c:4318", "trace_sample": 1.5},
        {"endpoint": "http://c:4318", "metrics_interval_s": 0.0},
    ],
    ids=["not-a-url", "share-over-1", "interval-0"],
)
def test_bad_otlp_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        OtlpSettings(**settings)  # type: ignore[arg-type]


def test_signal_urls_follow_the_otlp_http_layout() -> None:
    s = OtlpSettings("http://c:4318/")
    assert (s.url("traces"), s.url("metrics")) == (
        "http://c:4318/v1/traces",
        "http://c:4318/v1/metrics",
    )
