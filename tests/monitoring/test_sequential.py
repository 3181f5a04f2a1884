"""The drift state per (model, site): a signal that needs persistence, not one bad window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.sequential import (
    DriftState,
    SequentialPolicy,
    SequentialState,
    reset,
    step,
    step_all,
)


def run(
    scores: Sequence[float | None], n: int = 1000, state: SequentialState | None = None
) -> list[SequentialState]:
    out = []
    s = state or reset()
    for score in scores:
        s = step(s, score, n)
        out.append(s)
    return out


def test_stable_scores_never_leave_stable_across_1000_windows() -> None:
    states = run([0.0] * 1000)
    assert {s.state for s in states} == {DriftState.STABLE}
    assert states[-1].statistic == 0.0 and states[-1].windows == 1000


def test_one_extreme_window_warns_but_cannot_make_drifting() -> None:
    states = run([0.0, 7.5, 0.0])
    assert [s.state for s in states] == [DriftState.STABLE, DriftState.WARNING, DriftState.WARNING]
    assert states[1].statistic == pytest.approx(0.2)  # clipped at 0.25, less the allowance


@pytest.mark.parametrize(
    ("score", "windows"),
    [(0.3, 2), (0.25, 2), (0.15, 3)],
    ids=["major", "major-at-clip", "moderate"],
)
def test_persistent_drift_becomes_drifting_after_a_few_windows(score: float, windows: int) -> None:
    states = run([score] * 6)
    first = next(i for i, s in enumerate(states) if s.state is DriftState.DRIFTING)
    assert first + 1 == windows
    assert all(s.state is DriftState.DRIFTING for s in states[first:])


def test_drifting_latches_until_the_statistic_is_released_then_recovers() -> None:
    states = run([0.3] * 10 + [0.0] * 20)
    peak = states[9]
    assert peak.state is DriftState.DRIFTING and peak.statistic == pytest.approx(0.6)  # capped
    after = states[10:]
    released = next(i for i, s in enumerate(after) if s.state is not DriftState.DRIFTING)
    assert after[released].statistic == 0.0 and released == 11  # 0.6 / 0.05 clean windows
    assert after[released].state is DriftState.STABLE
    assert after[-1].drift_windows == 10


def test_windows_with_too_few_rows_or_no_verdict_leave_the_statistic_alone() -> None:
    s = run([0.3])[0]
    for score, n in ((0.3, 50), (None, 5000)):
        t = step(s, score, n)
        assert t.statistic == s.statistic and t.state is s.state and t.skipped == s.skipped + 1
    assert step(s, 0.3, 199, SequentialPolicy(min_n=200)).windows == s.windows


def test_reset_starts_afresh() -> None:
    s = run([0.3] * 5)[-1]
    assert s.state is DriftState.DRIFTING
    assert reset() == SequentialState() and reset().state is DriftState.STABLE


def test_step_all_keeps_keys_apart() -> None:
    a, b, c = ("m", "site-a"), ("m", "site-b"), ("m", "site-c")
    states: dict[tuple[str, str], SequentialState] = {c: run([0.3] * 3)[-1]}
    for _ in range(3):
        states = step_all(states, {a: (0.3, 1000), b: (0.0, 1000)})
    assert states[a].state is DriftState.DRIFTING
    assert states[b].state is DriftState.STABLE
    assert states[c].state is DriftState.DRIFTING and states[c].windows == 3  # untouched


def test_state_is_pure_and_serialisable() -> None:
    s = reset()
    t = step(s, 0.2, 1000)
    assert s == SequentialState() and t is not s
    assert t.to_dict()["state"] == "warning" and t.to_dict()["last_score"] == 0.2


def test_random_false_alarms_at_the_measured_rate_rarely_reach_drifting() -> None:
    """Window alarms at 10x the rate measured on stable data (1 % instead of 0.1 %),
    each at a major score: over 10,000 windows the state drifts in only a handful."""
    rng = np.random.default_rng(3)
    scores = np.where(rng.random(10_000) < 0.01, 0.4, 0.0).tolist()
    states = run(scores)
    drifting = sum(s.state is DriftState.DRIFTING for s in states)
    assert drifting / len(states) < 0.002


@pytest.mark.parametrize(
    "kwargs",
    [{"allowance": 0}, {"clip": 0.01}, {"warning": 0.5}, {"release": 0.3}, {"min_n": 0},
     {"cap": 0.2}],
)  # fmt: skip
def test_policy_refuses_inconsistent_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        SequentialPolicy(**kwargs)


def test_step_refuses_negative_scores() -> None:
    with pytest.raises(InvalidInputError):
        step(reset(), -0.1, 1000)
