"""The local SLO guard: a pure decision over window statistics.

The agent feeds it the watched version's window (a candidate, or a freshly promoted
production), the statistics of the version it would fall back to as measured on this
device, and the window split by caller. A breach means "roll back now", with the reasons.
Nothing here sleeps, reads a clock or does I/O (issue 3: "the guard's decision is a pure
function of window statistics").

Two kinds of rule (issue 6, defect 17; ADR 0010):

* **relative** (on by default): the watched version against the one it replaces, on this
  device — p99 latency above ``p99_ratio`` times the baseline's, error rate above the
  baseline's plus ``error_rate_margin``, mean confidence ``confidence_drop`` below it.
  Without ``min_samples`` measurements of the baseline these rules wait.
* **absolute** (off unless set): ``p99_ms`` and ``error_rate`` limits the operator chose.

A request rule broken in the whole window must also be broken in the own traffic of
``min_callers`` callers (or of every caller present, when fewer are): one caller's burst
cannot roll back a version that serves others well (issue 6, defect 10).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.window import WindowStats

__all__ = ["SloPolicy", "Verdict", "evaluate"]

_INT_KEYS = frozenset({"min_samples", "min_callers"})


@dataclass(frozen=True, slots=True)
class SloPolicy:
    """Limits one version must stay within; ``None`` switches a rule off.

    Attributes:
        p99_ms: absolute 99th percentile server-side latency limit in milliseconds.
        error_rate: absolute share of requests failing inside the server.
        p99_ratio: relative limit: p99 latency at most this many times the baseline's.
        error_rate_margin: relative limit: error rate at most the baseline's plus this
            (0.05 = five percentage points).
        confidence_drop: allowed relative drop of mean top-class confidence vs the baseline
            (0.25 = the watched version may be at most 25 % less confident).
        disagreement: share of shadow comparisons allowed to disagree.
        min_samples: no verdict before this many requests (or comparisons) in the window,
            and no relative verdict before this many measurements of the baseline.
        min_callers: a request rule must be broken for this many distinct callers (peer
            addresses), or for all callers in the window when fewer are present.
        window_s: sliding window length in seconds.
    """

    p99_ms: float | None = None
    error_rate: float | None = None
    p99_ratio: float | None = 2.0
    error_rate_margin: float | None = 0.05
    confidence_drop: float | None = 0.25
    disagreement: float | None = 0.3
    min_samples: int = 50
    min_callers: int = 2
    window_s: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "p99_ms",
            "error_rate",
            "p99_ratio",
            "error_rate_margin",
            "confidence_drop",
            "disagreement",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInputError(f"SLO {name} must not be negative")
        if self.p99_ratio is not None and self.p99_ratio < 1:
            raise InvalidInputError("SLO p99_ratio must be at least 1")
        if self.min_samples < 1:
            raise InvalidInputError("SLO min_samples must be at least 1")
        if self.min_callers < 1:
            raise InvalidInputError("SLO min_callers must be at least 1")
        if not 1.0 <= self.window_s <= 3600.0:
            raise InvalidInputError("SLO window_s must be between 1 and 3600")

    @property
    def caller_min_samples(self) -> int:
        """Requests a caller needs in the window before its own traffic can confirm a rule."""
        return max(1, self.min_samples // 5)

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> SloPolicy:
        """Build a policy from ``--slo`` style pairs over the defaults.

        Raises:
            InvalidInputError: an unknown key or a bad value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(
                f"unknown SLO key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, float | int] = {}
        for key, value in values.items():
            kwargs[key] = int(value) if key in _INT_KEYS else float(value)
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's decision: ``breach`` with human-readable ``reasons``, or why it waits."""

    breach: bool
    reasons: tuple[str, ...] = ()
    waiting: str = ""


def _request_rules(
    policy: SloPolicy, s: WindowStats, baseline: WindowStats | None, baseline_name: str
) -> dict[str, str]:
    """The request rules ``s`` breaks, as ``{rule: reason}``."""
    broken: dict[str, str] = {}
    p99_ms = None if s.p99_s is None else s.p99_s * 1000
    if policy.p99_ms is not None and p99_ms is not None and p99_ms > policy.p99_ms:
        broken["p99"] = f"p99 latency {p99_ms:.1f} ms > {policy.p99_ms:g} ms"
    if policy.error_rate is not None and s.error_rate > policy.error_rate:
        broken["errors"] = f"error rate {s.error_rate:.1%} > {policy.error_rate:.1%}"
    if baseline is None or baseline.count < policy.min_samples:
        return broken
    if (
        "p99" not in broken
        and policy.p99_ratio is not None
        and p99_ms is not None
        and baseline.p99_s is not None
        and p99_ms > policy.p99_ratio * baseline.p99_s * 1000
    ):
        broken["p99"] = (
            f"p99 latency {p99_ms:.1f} ms > {policy.p99_ratio:g}x {baseline_name}'s "
            f"{baseline.p99_s * 1000:.1f} ms"
        )
    if (
        "errors" not in broken
        and policy.error_rate_margin is not None
        and s.error_rate > baseline.error_rate + policy.error_rate_margin
    ):
        broken["errors"] = (
            f"error rate {s.error_rate:.1%} > {baseline_name}'s {baseline.error_rate:.1%} "
            f"+ {policy.error_rate_margin * 100:g} points"
        )
    if (
        policy.confidence_drop is not None
        and s.mean_confidence is not None
        and baseline.mean_confidence
    ):
        drop = 1 - s.mean_confidence / baseline.mean_confidence
        if drop > policy.confidence_drop:
            broken["confidence"] = (
                f"mean confidence {s.mean_confidence:.3f} is {drop:.1%} below "
                f"{baseline_name}'s {baseline.mean_confidence:.3f} "
                f"(limit {policy.confidence_drop:.0%})"
            )
    return broken


def evaluate(
    policy: SloPolicy,
    subject: WindowStats,
    baseline: WindowStats | None,
    callers: Mapping[str, WindowStats] | None = None,
    *,
    baseline_name: str = "the previous version",
) -> Verdict:
    """Decide whether ``subject`` (candidate or new production) breaches ``policy``.

    Args:
        policy: the limits.
        subject: the watched version's window, all callers together.
        baseline: the version it is compared with (production for a candidate, the
            previous version for a new production), as measured on this device; None
            switches the relative rules off.
        callers: the watched version's window per caller; None judges the pooled window
            alone (as if every request came from distinct callers).
        baseline_name: how reasons name the baseline (e.g. ``"v1"``).

    Returns:
        A breach verdict listing every rule broken, or a non-breach saying what it is
        waiting for (samples, baseline measurements, confirmation by more callers).
    """
    reasons: list[str] = []
    waiting = ""
    enough = subject.count >= policy.min_samples
    if enough:
        broken = _request_rules(policy, subject, baseline, baseline_name)
        if broken and callers is not None:
            needed = min(policy.min_callers, len(callers))
            confirmed: dict[str, int] = dict.fromkeys(broken, 0)
            for stats in callers.values():
                if stats.count < policy.caller_min_samples:
                    continue
                for rule in _request_rules(policy, stats, baseline, baseline_name):
                    if rule in confirmed:
                        confirmed[rule] += 1
            for rule, n in confirmed.items():
                if n < needed:
                    del broken[rule]
                    waiting = f"{rule} breach seen by {n} of the {needed} callers needed"
        reasons.extend(broken.values())
        unmeasured = baseline is None or baseline.count < policy.min_samples
        no_limits = policy.p99_ms is None and policy.error_rate is None
        if not broken and not waiting and unmeasured and no_limits:
            waiting = f"no {policy.min_samples} measurements of {baseline_name} to compare with"
    if (
        policy.disagreement is not None
        and subject.compared >= policy.min_samples
        and subject.disagreement_rate > policy.disagreement
    ):
        reasons.append(
            f"shadow disagreement {subject.disagreement_rate:.1%} > {policy.disagreement:.1%}"
        )
    if reasons:
        return Verdict(True, tuple(reasons))
    if not enough and subject.compared < policy.min_samples:
        return Verdict(False, waiting=f"{subject.count}/{policy.min_samples} samples")
    return Verdict(False, waiting=waiting)
