"""The local SLO guard: a pure decision over window statistics.

The agent feeds it the candidate's window (or a freshly promoted version's) and the
production baseline; a breach means "roll back now", with the reasons. Nothing here
sleeps, reads a clock or does I/O (issue 3: "the guard's decision is a pure function of
window statistics").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.window import WindowStats

__all__ = ["SloPolicy", "Verdict", "evaluate"]


@dataclass(frozen=True, slots=True)
class SloPolicy:
    """Limits one version must stay within; ``None`` switches a rule off.

    Attributes:
        p99_ms: 99th percentile latency limit in milliseconds.
        error_rate: share of requests failing inside the model.
        confidence_drop: allowed relative drop of mean top-class confidence vs production
            (0.15 = the candidate may be at most 15 % less confident).
        disagreement: share of shadow comparisons allowed to disagree.
        min_samples: no verdict before this many requests (or comparisons) in the window.
        window_s: sliding window length in seconds.
    """

    p99_ms: float | None = 250.0
    error_rate: float | None = 0.05
    confidence_drop: float | None = 0.25
    disagreement: float | None = 0.3
    min_samples: int = 50
    window_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("p99_ms", "error_rate", "confidence_drop", "disagreement"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInputError(f"SLO {name} must not be negative")
        if self.min_samples < 1:
            raise InvalidInputError("SLO min_samples must be at least 1")
        if not 1.0 <= self.window_s <= 3600.0:
            raise InvalidInputError("SLO window_s must be between 1 and 3600")

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
            kwargs[key] = int(value) if key == "min_samples" else float(value)
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's decision: ``breach`` with human-readable ``reasons``, or why it waits."""

    breach: bool
    reasons: tuple[str, ...] = ()
    waiting: str = ""


def evaluate(policy: SloPolicy, subject: WindowStats, baseline: WindowStats | None) -> Verdict:
    """Decide whether ``subject`` (candidate or new production) breaches ``policy``.

    Args:
        policy: the limits.
        subject: the watched version's window.
        baseline: production's window, for the relative confidence rule (None: rule skipped).

    Returns:
        A breach verdict listing every rule broken, or a non-breach saying whether it is
        still waiting for ``min_samples``.
    """
    reasons: list[str] = []
    enough = subject.count >= policy.min_samples
    if enough:
        if policy.p99_ms is not None and subject.p99_s is not None:
            p99_ms = subject.p99_s * 1000
            if p99_ms > policy.p99_ms:
                reasons.append(f"p99 latency {p99_ms:.1f} ms > {policy.p99_ms:g} ms")
        if policy.error_rate is not None and subject.error_rate > policy.error_rate:
            reasons.append(f"error rate {subject.error_rate:.1%} > {policy.error_rate:.1%}")
        if (
            policy.confidence_drop is not None
            and baseline is not None
            and baseline.count >= policy.min_samples
            and subject.mean_confidence is not None
            and baseline.mean_confidence
        ):
            drop = 1 - subject.mean_confidence / baseline.mean_confidence
            if drop > policy.confidence_drop:
                reasons.append(
                    f"mean confidence {subject.mean_confidence:.3f} is {drop:.1%} below "
                    f"production's {baseline.mean_confidence:.3f} "
                    f"(limit {policy.confidence_drop:.0%})"
                )
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
    return Verdict(False)
