"""The local guard's rules over sliding windows, as tables of named cases."""

from __future__ import annotations

import pytest

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.guard import SloPolicy, evaluate
from modelfleet.monitoring.window import OTHER_CALLERS, SlidingWindow, WindowStats

ABSOLUTE = SloPolicy(
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
def test_absolute_rules_when_set(
    subject: WindowStats, baseline: WindowStats | None, breach: bool, reason: str
) -> None:
    verdict = evaluate(ABSOLUTE, subject, baseline)
    assert verdict.breach is breach
    if reason:
        assert any(reason in r for r in verdict.reasons)


DEFAULT = SloPolicy()
SLOW_V1 = WindowStats(count=500, errors=5, p99_s=0.230)  # a ~230 ms model, 1 % errors


@pytest.mark.parametrize(
    ("subject", "baseline", "breach", "reason"),
    [
        (WindowStats(60, 0, 0.250), SLOW_V1, False, ""),  # as fast as v1: defect 17
        (WindowStats(60, 0, 0.450), SLOW_V1, False, ""),  # under 2x
        (WindowStats(60, 0, 0.700), SLOW_V1, True, "p99 latency 700.0 ms > 2x v1's 230.0 ms"),
        (WindowStats(100, 5, 0.230), SLOW_V1, False, ""),  # 5 % vs 1 % + 5 points
        (WindowStats(100, 7, 0.230), SLOW_V1, True, "error rate 7.0% > v1's 1.0% + 5 points"),
        (WindowStats(60, 60, 9.0), WindowStats(10, 0, 0.001), False, ""),  # v1 barely measured
        (WindowStats(60, 60, 9.0), None, False, ""),
    ],
    ids=[
        "heavy-model-as-fast-as-the-previous-is-kept",
        "somewhat-slower-is-kept",
        "three-times-slower-is-rolled-back",
        "errors-within-the-margin",
        "errors-beyond-the-margin",
        "baseline-with-too-few-measurements-waits",
        "no-baseline-waits",
    ],
)
def test_default_guard_compares_with_the_previous_version(
    subject: WindowStats, baseline: WindowStats | None, breach: bool, reason: str
) -> None:
    verdict = evaluate(DEFAULT, subject, baseline, baseline_name="v1")
    assert verdict.breach is breach, verdict
    if reason:
        assert reason in verdict.reasons
    else:
        assert verdict.reasons == ()


def test_default_guard_without_a_measured_previous_says_so() -> None:
    verdict = evaluate(DEFAULT, WindowStats(60, 60, 9.0), None, baseline_name="v1")
    assert verdict.waiting == "no 50 measurements of v1 to compare with"


def test_default_guard_has_no_absolute_limits() -> None:
    assert (DEFAULT.p99_ms, DEFAULT.error_rate) == (None, None)


SLOW_EVERYWHERE = {
    "10.0.0.1": WindowStats(30, 0, 0.9),
    "10.0.0.2": WindowStats(30, 0, 0.9),
}


@pytest.mark.parametrize(
    ("callers", "breach", "waiting"),
    [
        (SLOW_EVERYWHERE, True, ""),
        ({"10.0.0.1": WindowStats(60, 0, 0.9)}, True, ""),
        (
            {"10.0.0.1": WindowStats(55, 0, 0.9), "10.0.0.2": WindowStats(5, 0, 0.001)},
            False,
            "p99 breach seen by 1 of the 2 callers needed",
        ),
        (
            {"10.0.0.1": WindowStats(40, 0, 0.9), "10.0.0.2": WindowStats(20, 0, 0.001)},
            False,
            "p99 breach seen by 1 of the 2 callers needed",
        ),
    ],
    ids=[
        "every-caller-sees-it",
        "a-lone-caller-is-the-whole-workload",
        "one-caller-bursts-while-another-is-quiet",
        "one-caller-bursts-while-another-is-served-well",
    ],
)
def test_a_breach_needs_several_callers(
    callers: dict[str, WindowStats], breach: bool, waiting: str
) -> None:
    subject = WindowStats(60, 0, 0.9)
    verdict = evaluate(DEFAULT, subject, SLOW_V1, callers, baseline_name="v1")
    assert verdict.breach is breach
    assert verdict.waiting == waiting


def test_too_few_samples_says_it_is_waiting() -> None:
    verdict = evaluate(ABSOLUTE, WindowStats(count=3, errors=3), HEALTHY)
    assert not verdict.breach and verdict.waiting == "3/20 samples"


def test_policy_from_cli_pairs_rejects_unknown_keys() -> None:
    policy = SloPolicy.from_mapping({"p99_ms": 50, "min_samples": 10, "min_callers": 1})
    assert policy.p99_ms == 50 and policy.min_samples == 10 and policy.min_callers == 1
    assert policy.error_rate is None and policy.p99_ratio == 2.0
    with pytest.raises(InvalidInputError, match="unknown SLO key"):
        SloPolicy.from_mapping({"p99": 50})
    with pytest.raises(InvalidInputError, match="p99_ratio"):
        SloPolicy.from_mapping({"p99_ratio": 0.5})


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


def test_window_splits_by_caller_and_bounds_how_many() -> None:
    window = SlidingWindow(span_s=10, max_callers=2)
    for caller, latency in (("a", 0.001), ("a", 0.001), ("b", 0.5), ("c", 0.5), ("d", 0.5)):
        window.record(now=1.0, latency_s=latency, caller=caller)
    per = window.caller_stats(now=1.0)
    assert {k: v.count for k, v in per.items()} == {"a": 2, "b": 1, OTHER_CALLERS: 2}
    assert window.stats(now=1.0).count == 5


def test_sparse_window_reaches_back_for_enough_samples_of_a_heavy_model() -> None:
    window = SlidingWindow(span_s=30)
    for i in range(50):  # one 700 ms request after another: 35 s for 50 of them
        window.record(now=100.0 + i * 0.7, latency_s=0.7)
    now = 100.0 + 49 * 0.7
    assert window.stats(now).count < 50
    assert window.stats(now, at_least=50).count == 50
    assert window.stats(now + 1000, at_least=50).count == 0  # but not beyond its reach
