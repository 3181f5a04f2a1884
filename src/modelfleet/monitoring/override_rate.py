"""The operator-override rate as a drift layer of its own (issue 9, ADR 0040): one hour's
override rate of the version serving at a site against a baseline, as a score for the
sequential rule of :mod:`modelfleet.monitoring.sequential`.

**Rate.** ``judged = overridden + confirmed``; ``rate = overridden / judged``. An hour with
``judged < min_judged`` is *insufficient data*: its score is None and it does not move the
state (it counts as skipped).

**Baseline** (:func:`baseline_of`): the rate of the *previous version* at the site — the
highest version number below the serving one with at least ``baseline_min_judged`` judged
answers at that site (over what the caller read, the hub: ``baseline_days`` before the
serving version's first hour there) — else the configured ``expected_rate``. The hub
freezes the baseline when a version's state starts, so it does not move under the
version it judges.

**Score** (:func:`excess`): how far the hour's rate is above the baseline, beyond noise::

    score = max(0, rate − b − z·√(b̃(1 − b̃)·(1/judged + 1/judged_b)))

with ``b̃`` the baseline clamped to [0.01, 0.99] (a baseline of 0 still has some noise),
``1/judged_b`` 0 for the configured rate, ``z`` = ``margin_z`` (2). The score is in rate
units, so the CUSUM's ``allowance`` (0.05) is the excess tolerated per hour: a rise from
5 % to 30 % at 200 judged answers an hour adds about 0.17 an hour and is ``drifting`` after
two hours. On stable binomial hours the state never reached ``drifting`` in 100,000 hours
at base rates of 1 % to 50 % and 50 to 1,000 judged answers; ``warning`` at most 1 hour in
10,000, and only at a high base rate with few judged answers (tests/monitoring).
One-sided: fewer overrides than the baseline is never drift.

Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.sequential import SequentialPolicy, SequentialState, step

__all__ = [
    "Baseline",
    "BaselineSource",
    "OverridePolicy",
    "baseline_of",
    "excess",
    "rate_of",
    "step_hour",
]

#: The baseline's variance uses it clamped to this band (a rate of 0 or 1 still has noise).
_CLAMP: Final = 0.01


class BaselineSource(StrEnum):
    PREVIOUS_VERSION = "previous_version"
    EXPECTED = "expected"


def _default_sequential() -> SequentialPolicy:
    # min_n 1: the minimum is checked here on judged answers (excess() answers None)
    return SequentialPolicy(allowance=0.05, clip=0.25, threshold=0.3, warning=0.1, min_n=1)


@dataclass(frozen=True)
class OverridePolicy:
    """How the override layer judges an hour.

    Attributes:
        expected_rate: the baseline when no previous version has enough judged answers.
        min_judged: judged answers an hour needs to count.
        baseline_min_judged: judged answers a previous version needs to be the baseline.
        margin_z: standard errors of noise subtracted from the excess.
        sequential: the CUSUM rule (scores are rates: allowance 0.05 tolerates 5 points).
    """

    expected_rate: float = 0.05
    min_judged: int = 50
    baseline_min_judged: int = 200
    margin_z: float = 2.0
    sequential: SequentialPolicy = field(default_factory=_default_sequential)

    def __post_init__(self) -> None:
        if not 0.0 <= self.expected_rate < 1.0:
            raise InvalidInputError("expected_rate must be in [0, 1)")
        if self.min_judged < 1 or self.baseline_min_judged < 1:
            raise InvalidInputError("min_judged and baseline_min_judged must be at least 1")
        if not 0.0 <= self.margin_z <= 10.0:
            raise InvalidInputError("margin_z must be between 0 and 10")


@dataclass(frozen=True)
class Baseline:
    """The rate an hour is compared with.

    Attributes:
        rate: the baseline rate.
        source: the previous version's measured rate, or the configured expected one.
        version: the previous version (None for the expected rate).
        judged: the judged answers the rate was measured on (0 for the expected rate).
    """

    rate: float
    source: BaselineSource
    version: int | None = None
    judged: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "source": self.source.value,
            "version": self.version,
            "judged": self.judged,
        }


def _checked(overridden: int, confirmed: int) -> int:
    if overridden < 0 or confirmed < 0:
        raise InvalidInputError("override counts must not be negative")
    return overridden + confirmed


def rate_of(overridden: int, confirmed: int) -> float | None:
    """``overridden / (overridden + confirmed)``, None when nothing was judged.

    Raises:
        InvalidInputError: a negative count.
    """
    judged = _checked(overridden, confirmed)
    return overridden / judged if judged else None


def baseline_of(
    serving: int | None,
    history: Mapping[int, tuple[int, int]],
    policy: OverridePolicy | None = None,
) -> Baseline:
    """The baseline of the version ``serving`` (see the module docstring).

    Args:
        serving: the serving version's number (None: not a number; the expected rate).
        history: version number → (overridden, confirmed) at the site, as read.
        policy: the minimum judged answers and the expected rate.
    """
    policy = policy or OverridePolicy()
    if serving is not None:
        older = sorted((v for v in history if v < serving), reverse=True)
        for version in older:
            overridden, confirmed = history[version]
            judged = _checked(overridden, confirmed)
            if judged >= policy.baseline_min_judged:
                return Baseline(
                    overridden / judged, BaselineSource.PREVIOUS_VERSION, version, judged
                )
    return Baseline(policy.expected_rate, BaselineSource.EXPECTED)


def excess(
    overridden: int, confirmed: int, baseline: Baseline, policy: OverridePolicy | None = None
) -> float | None:
    """The hour's score: its rate above the baseline beyond noise, ≥ 0; None when fewer
    than ``min_judged`` answers were judged (see the module docstring).

    Raises:
        InvalidInputError: a negative count.
    """
    policy = policy or OverridePolicy()
    judged = _checked(overridden, confirmed)
    if judged < policy.min_judged:
        return None
    b = min(1.0 - _CLAMP, max(_CLAMP, baseline.rate))
    inverse = 1.0 / judged + (1.0 / baseline.judged if baseline.judged > 0 else 0.0)
    margin = policy.margin_z * math.sqrt(b * (1.0 - b) * inverse)
    return round(max(0.0, overridden / judged - baseline.rate - margin), 12)


def step_hour(
    state: SequentialState,
    overridden: int,
    confirmed: int,
    baseline: Baseline,
    policy: OverridePolicy | None = None,
) -> SequentialState:
    """The state after one hour: :func:`modelfleet.monitoring.sequential.step` on the
    hour's :func:`excess` (an insufficient hour is skipped, the statistic untouched)."""
    policy = policy or OverridePolicy()
    score = excess(overridden, confirmed, baseline, policy)
    return step(state, score, overridden + confirmed, policy.sequential)
