"""Retry timing, pure: capped exponential backoff with full jitter, and jittered polling.

Full jitter (a delay drawn uniformly from ``[0, min(cap, base * 2**n)]``) spreads a fleet
that lost its hub at the same moment, so it does not return in lockstep (issue 6,
defect 8). The random source is passed in: tests give a fixed one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from modelfleet.errors import ConfigError

__all__ = ["BackoffPolicy", "jittered_interval"]

#: No retry is sooner than this, so a draw near zero never spins.
MIN_DELAY_S = 0.05


@dataclass(frozen=True)
class BackoffPolicy:
    """Capped exponential backoff with full jitter.

    Attributes:
        base_s: the ceiling of the first delay (0.01 s to 1 h).
        cap_s: no ceiling grows above this (at least ``base_s``, at most one day).
    """

    base_s: float = 1.0
    cap_s: float = 300.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_s) and 0.01 <= self.base_s <= 3600):
            raise ConfigError(f"backoff base {self.base_s} s is outside [0.01, 3600]")
        if not (math.isfinite(self.cap_s) and self.base_s <= self.cap_s <= 86400):
            raise ConfigError(f"backoff cap {self.cap_s} s must be in [base, 86400]")

    def ceiling(self, failures: int) -> float:
        """The largest delay after ``failures`` consecutive failures (>= 1)."""
        exponent = min(max(failures, 1) - 1, 60)
        return min(self.cap_s, self.base_s * 2.0**exponent)

    def delay(self, failures: int, rand: Callable[[], float]) -> float:
        """A delay after ``failures`` consecutive failures; ``rand()`` is uniform in [0, 1)."""
        return max(MIN_DELAY_S, self.ceiling(failures) * rand())


def jittered_interval(interval_s: float, rand: Callable[[], float], spread: float = 0.2) -> float:
    """``interval_s`` spread by ``±spread`` so routine polls of a fleet drift apart."""
    return max(MIN_DELAY_S, interval_s * (1.0 - spread + 2.0 * spread * rand()))
