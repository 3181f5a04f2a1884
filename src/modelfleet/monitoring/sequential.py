"""The drift state per (model, site): a sequential rule over window scores (issue 9).

Drift is a signal, not a pager: one bad window must not change what the rollout gates read.
The rule is Page's one-sided CUSUM on the per-window model score of
:func:`modelfleet.monitoring.drift.evaluate` (the Page–Hinkley test with the in-control mean
fixed at 0, which the score is on stable data by construction: it is 0 unless a column is
significant after Holm–Bonferroni and has PSI ≥ 0.1)::

    S_t = min(cap, max(0, S_{t-1} + min(score_t, clip) − allowance))

with ``allowance`` 0.05, ``clip`` 0.25 (one window adds at most 0.2, so no single window,
however extreme, can reach ``drifting``), ``cap`` 0.6 (bounds how long recovery takes). The
state is ``drifting`` once S ≥ ``threshold`` (0.3: two windows of major drift, or three of
moderate) and stays so until S is back to ``release`` (0); ``warning`` while S ≥ ``warning``
(0.1); else ``stable``. A window with fewer than ``min_n`` rows (or an insufficient-data
verdict, score None) leaves the statistic alone. :func:`reset` starts a key afresh (a new
version, an acknowledged drift).

Pure: state in, state out; the caller keeps one :class:`SequentialState` per key.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeVar

from modelfleet.errors import InvalidInputError

__all__ = ["DriftState", "SequentialPolicy", "SequentialState", "reset", "step", "step_all"]

K = TypeVar("K", bound=Hashable)


class DriftState(StrEnum):
    STABLE = "stable"
    WARNING = "warning"
    DRIFTING = "drifting"


@dataclass(frozen=True)
class SequentialPolicy:
    """Parameters of the CUSUM rule (see the module docstring).

    Attributes:
        allowance: subtracted from every window's score (k of CUSUM).
        clip: the most one window's score counts for.
        threshold: S from which the state is drifting (h of CUSUM).
        warning: S from which the state is warning.
        release: S at or below which a drifting key becomes stable or warning again.
        cap: the most S can hold.
        min_n: rows a window needs to count.
    """

    allowance: float = 0.05
    clip: float = 0.25
    threshold: float = 0.3
    warning: float = 0.1
    release: float = 0.0
    cap: float = 0.6
    min_n: int = 200

    def __post_init__(self) -> None:
        if self.allowance <= 0 or self.clip <= self.allowance:
            raise InvalidInputError("need 0 < allowance < clip")
        if not 0 < self.warning <= self.threshold <= self.cap:
            raise InvalidInputError("need 0 < warning <= threshold <= cap")
        if not 0 <= self.release < self.threshold:
            raise InvalidInputError("need 0 <= release < threshold")
        if self.min_n < 1:
            raise InvalidInputError("min_n must be at least 1")


@dataclass(frozen=True)
class SequentialState:
    """One key's drift state.

    Attributes:
        state: stable, warning or drifting.
        statistic: the CUSUM S.
        windows: windows that counted since the last reset.
        skipped: windows left out (too few rows, insufficient data) since the last reset.
        drift_windows: counted windows whose score was above 0.
        last_score: the last counted score.
    """

    state: DriftState = DriftState.STABLE
    statistic: float = 0.0
    windows: int = 0
    skipped: int = 0
    drift_windows: int = 0
    last_score: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "statistic": self.statistic,
            "windows": self.windows,
            "skipped": self.skipped,
            "drift_windows": self.drift_windows,
            "last_score": self.last_score,
        }


def _transition(previous: DriftState, statistic: float, policy: SequentialPolicy) -> DriftState:
    """THE state rule: drifting latches until the statistic is back to ``release``."""
    if statistic >= policy.threshold:
        return DriftState.DRIFTING
    if previous is DriftState.DRIFTING and statistic > policy.release:
        return DriftState.DRIFTING
    return DriftState.WARNING if statistic >= policy.warning else DriftState.STABLE


def step(
    state: SequentialState, score: float | None, n: int, policy: SequentialPolicy | None = None
) -> SequentialState:
    """The state after one window.

    Args:
        state: the key's state before the window.
        score: the window's model drift score (None: insufficient data).
        n: the window's rows.
        policy: the rule's parameters.

    Raises:
        InvalidInputError: a negative score or row count.
    """
    policy = policy or SequentialPolicy()
    if n < 0 or (score is not None and not score >= 0):
        raise InvalidInputError("a window's score and rows must not be negative")
    if score is None or n < policy.min_n:
        return replace(state, skipped=state.skipped + 1)
    s = min(policy.cap, max(0.0, state.statistic + min(score, policy.clip) - policy.allowance))
    s = round(s, 12)  # no float residue keeps a released key drifting
    return SequentialState(
        state=_transition(state.state, s, policy),
        statistic=s,
        windows=state.windows + 1,
        skipped=state.skipped,
        drift_windows=state.drift_windows + (1 if score > 0 else 0),
        last_score=score,
    )


def reset() -> SequentialState:
    """A fresh state (stable, S = 0)."""
    return SequentialState()


def step_all(
    states: Mapping[K, SequentialState],
    windows: Mapping[K, tuple[float | None, int]],
    policy: SequentialPolicy | None = None,
) -> dict[K, SequentialState]:
    """Step every key that has a window; keys without one keep their state; new keys start
    fresh. ``windows`` maps a key (e.g. ``(model, site)``) to ``(score, rows)``."""
    out = dict(states)
    for key, (score, n) in windows.items():
        out[key] = step(states.get(key, reset()), score, n, policy)
    return out
