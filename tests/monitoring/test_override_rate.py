"""The override rate as a drift layer (ADR 0040): the pure rate, baseline and hourly step."""

from __future__ import annotations

import numpy as np
import pytest

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.override_rate import (
    Baseline,
    BaselineSource,
    OverridePolicy,
    baseline_of,
    excess,
    rate_of,
    step_hour,
)
from modelfleet.monitoring.sequential import DriftState, SequentialState, reset

EXPECTED = Baseline(0.05, BaselineSource.EXPECTED)


def test_rate_is_overridden_over_judged_and_none_when_nothing_was_judged() -> None:
    assert rate_of(3, 7) == 0.3
    assert rate_of(0, 0) is None
    with pytest.raises(InvalidInputError):
        rate_of(-1, 4)


@pytest.mark.parametrize(
    ("name", "serving", "history", "expected"),
    [
        ("no history: the configured rate", 3, {}, EXPECTED),
        (
            "the highest older version with enough judged answers",
            3,
            {1: (50, 950), 2: (20, 380), 3: (300, 700)},
            Baseline(0.05, BaselineSource.PREVIOUS_VERSION, 2, 400),
        ),
        (
            "an older version with too few judged answers is passed over",
            3,
            {1: (100, 900), 2: (5, 95)},
            Baseline(0.1, BaselineSource.PREVIOUS_VERSION, 1, 1000),
        ),
        ("newer versions are never the baseline", 1, {2: (10, 990)}, EXPECTED),
        ("a version that is not a number: the configured rate", None, {1: (9, 991)}, EXPECTED),
    ],
)
def test_the_baseline_rule(
    name: str, serving: int | None, history: dict[int, tuple[int, int]], expected: Baseline
) -> None:
    assert baseline_of(serving, history) == expected, name


def test_the_configured_rate_is_the_fallback() -> None:
    got = baseline_of(2, {}, OverridePolicy(expected_rate=0.12))
    assert got == Baseline(0.12, BaselineSource.EXPECTED)


def test_an_hour_below_min_judged_is_insufficient_and_does_not_move_the_state() -> None:
    policy = OverridePolicy(min_judged=50)
    assert excess(40, 9, EXPECTED, policy) is None  # 49 judged, however high the rate
    before = SequentialState(DriftState.WARNING, 0.15, windows=3)
    after = step_hour(before, 40, 9, EXPECTED, policy)
    assert after.statistic == 0.15 and after.state is DriftState.WARNING
    assert after.skipped == 1 and after.windows == 3


def test_the_excess_subtracts_the_baseline_and_its_noise() -> None:
    # 200 judged at the baseline's 5 %: within noise, no excess
    assert excess(10, 190, EXPECTED) == 0.0
    # 30 % against 5 %: 0.25 minus 2 standard errors of 200 answers (~0.031)
    got = excess(60, 140, EXPECTED)
    assert got is not None and 0.21 < got < 0.22
    # a measured baseline's own noise widens the margin
    measured = Baseline(0.05, BaselineSource.PREVIOUS_VERSION, 1, 200)
    wider = excess(60, 140, measured)
    assert wider is not None and wider < got
    # fewer overrides than the baseline is never drift (one-sided)
    assert excess(0, 500, EXPECTED) == 0.0


def test_a_rise_from_5_to_30_percent_drifts_within_two_hours_and_recovers() -> None:
    state = reset()
    states = []
    for overridden in (10, 10, 60, 60, 60):
        state = step_hour(state, overridden, 200 - overridden, EXPECTED)
        states.append(state.state)
    assert states == [DriftState.STABLE] * 2 + [
        DriftState.WARNING,
        DriftState.DRIFTING,
        DriftState.DRIFTING,
    ]
    for _ in range(20):
        state = step_hour(state, 10, 190, EXPECTED)
    assert state.state is DriftState.STABLE and state.statistic == 0.0


@pytest.mark.parametrize(
    ("rate", "judged"), [(0.05, 50), (0.05, 200), (0.3, 50), (0.3, 200), (0.01, 1000)]
)
def test_a_stable_rate_is_never_flagged_over_20000_hours(rate: float, judged: int) -> None:
    """The false-alarm figure: binomial hours at the baseline rate never reach drifting;
    warning (no event a pager reads) in under 1 hour in 2,000 even at a 30 % base rate
    with the fewest judged answers that count."""
    rng = np.random.default_rng(int(rate * 1000) + judged)
    baseline = Baseline(rate, BaselineSource.EXPECTED)
    state = reset()
    drifting = warning = 0
    for overridden in rng.binomial(judged, rate, size=20_000):
        state = step_hour(state, int(overridden), judged - int(overridden), baseline)
        drifting += state.state is DriftState.DRIFTING
        warning += state.state is DriftState.WARNING
    assert drifting == 0 and warning <= 10 and state.windows == 20_000
    if rate <= 0.05 or judged >= 200:
        assert warning == 0


@pytest.mark.parametrize(
    "args",
    [
        {"expected_rate": 1.0},
        {"expected_rate": -0.1},
        {"min_judged": 0},
        {"baseline_min_judged": 0},
        {"margin_z": -1.0},
    ],
)
def test_a_bad_policy_is_refused(args: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError):
        OverridePolicy(**args)  # type: ignore[arg-type]
