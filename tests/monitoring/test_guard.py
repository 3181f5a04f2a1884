"""The local guard's rules over sliding windows, as a table of named cases."""

from __future__ import annotations

import pytest

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.guard import SloPolicy, evaluate
from modelfleet.monitoring.window import SlidingWindow, WindowStats

POLICY = SloPolicy(
    p99_ms=100, error_rate=0.01, confidence_drop=0.15, disagreement=0.2, min_samples=20
)
HEALTHY = WindowStats(count=100, errors=0, p99_s=0.010, mean_confidence=0.9)


@pytest.mark.parametrize(
    ("subject", "baseline", "breach", "reason"),
    [
        (WindowStats(100, 0, 0.010, 0.9), HEALTHY, False, ""),
        (WindowStats(100, 0, 0.250, 0.9), HEALTHY, True, "p99 latency"),
        (WindowStats(100, 5, 0.010, 0.9), HEALTHY, True, "error rate"),
        (WindowStats(100, 0, 0.010, 0.5), HEALTHY, True, "mean confidence"),
        (WindowStats(100, 0, 0.010, 0.8), HEALTHY, False, ""),
        (WindowStats(100, 0, 0.010, 0.9, compared=50, disagreed=20), HEALTHY, True, "disagreement"),
        (WindowStats(10, 10, 5.0, 0.1), HEALTHY, False, ""),
        (WindowStats(100, 0, 0.010, 0.2), None, False, ""),
    ],
    ids=[
        "healthy",
        "slow",
        "failing",
        "unconfident",
        "slightly-less-confident",
        "disagreeing-shadow",
        "too-few-samples-to-judge",
        "no-baseline-no-confidence-rule",
    ],
)
def test_guard_rules(
    subject: WindowStats, baseline: WindowStats | None, breach: bool, reason: str
) -> None:
    verdict = evaluate(POLICY, subject, baseline)
    assert verdict.breach is breach
    if reason:
        assert any(reason in r for r in verdict.reasons)


def test_too_few_samples_says_it_is_waiting() -> None:
    verdict = evaluate(POLICY, WindowStats(count=3, errors=3), HEALTHY)
    assert not verdict.breach and verdict.waiting == "3/20 samples"


def test_policy_from_cli_pairs_rejects_unknown_keys() -> None:
    policy = SloPolicy.from_mapping({"p99_ms": 50, "min_samples": 10})
    assert policy.p99_ms == 50 and policy.min_samples == 10 and policy.error_rate == 0.05
    with pytest.raises(InvalidInputError, match="unknown SLO key"):
        SloPolicy.from_mapping({"p99": 50})


def test_window_forgets_old_seconds() -> None:
    window = SlidingWindow(span_s=10)
    for i in range(100):
        window.record(now=1000.0 + i * 0.01, latency_s=0.5, error=True)
    assert window.stats(now=1001.0).count == 100
    assert window.stats(now=1011.5).count == 0
    window.record(now=1012.0, latency_s=0.001)
    stats = window.stats(now=1012.0)
    assert (stats.count, stats.errors) == (1, 0)


def test_window_p99_tracks_the_slow_tail() -> None:
    window = SlidingWindow(span_s=30)
    for _i in range(990):
        window.record(now=5.0, latency_s=0.001, confidence=0.8)
    for _i in range(10):
        window.record(now=5.0, latency_s=0.2)
    stats = window.stats(now=5.0)
    assert stats.p99_s is not None and 0.001 <= stats.p99_s < 0.0013
    for _i in range(20):
        window.record(now=6.0, latency_s=0.2)
    assert window.stats(now=6.0).p99_s >= 0.2  # type: ignore[operator]
    assert stats.mean_confidence == pytest.approx(0.8)
