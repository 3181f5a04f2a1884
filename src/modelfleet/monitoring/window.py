"""Sliding windows of per-version serving statistics, in one-second buckets.

Each bucket holds counts and a fixed-edge latency histogram, so windows merge by addition
and the p99 comes from the histogram (an upper bound at bucket resolution, ~12 % wide).
Time is passed in by the caller (a monotonic reading): nothing here reads a clock.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

__all__ = ["LATENCY_EDGES_S", "SlidingWindow", "WindowStats"]

#: Latency bucket upper edges in seconds: 50 µs … ~60 s, geometric with ratio 1.12.
LATENCY_EDGES_S: tuple[float, ...] = tuple(50e-6 * 1.12**i for i in range(125))


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What a window saw.

    Attributes:
        count: requests answered or failed.
        errors: requests that failed inside the model (not caller mistakes).
        p99_s: 99th percentile latency in seconds (bucket upper edge), None when empty.
        mean_confidence: mean top-class probability, None when no classifier output was seen.
        compared: shadow comparisons made.
        disagreed: shadow comparisons that disagreed.
    """

    count: int = 0
    errors: int = 0
    p99_s: float | None = None
    mean_confidence: float | None = None
    compared: int = 0
    disagreed: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    @property
    def disagreement_rate(self) -> float:
        return self.disagreed / self.compared if self.compared else 0.0


@dataclass(slots=True)
class _Bucket:
    second: int
    count: int = 0
    errors: int = 0
    confidence_sum: float = 0.0
    confidence_n: int = 0
    compared: int = 0
    disagreed: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_S) + 1))


class SlidingWindow:
    """The last ``span_s`` seconds of one version's traffic.

    Not thread-safe by itself: the agent records from the event loop only.
    """

    def __init__(self, span_s: float = 30.0) -> None:
        if not 1.0 <= span_s <= 3600.0:
            raise ValueError("window span must be between 1 s and 1 h")
        self.span = math.ceil(span_s)
        self._buckets: list[_Bucket | None] = [None] * self.span

    def _bucket(self, now: float) -> _Bucket:
        second = int(now)
        slot = second % self.span
        b = self._buckets[slot]
        if b is None or b.second != second:
            b = _Bucket(second)
            self._buckets[slot] = b
        return b

    def record(
        self,
        now: float,
        latency_s: float,
        error: bool = False,
        confidence: float | None = None,
    ) -> None:
        """Count one request at monotonic time ``now``."""
        b = self._bucket(now)
        b.count += 1
        if error:
            b.errors += 1
        b.latency[bisect.bisect_left(LATENCY_EDGES_S, latency_s)] += 1
        if confidence is not None:
            b.confidence_sum += confidence
            b.confidence_n += 1

    def record_comparison(self, now: float, disagreed: bool) -> None:
        """Count one shadow comparison at monotonic time ``now``."""
        b = self._bucket(now)
        b.compared += 1
        if disagreed:
            b.disagreed += 1

    def stats(self, now: float) -> WindowStats:
        """Aggregate the buckets of the last ``span`` seconds before ``now``."""
        oldest = int(now) - self.span + 1
        count = errors = compared = disagreed = conf_n = 0
        conf_sum = 0.0
        hist = [0] * (len(LATENCY_EDGES_S) + 1)
        for b in self._buckets:
            if b is None or b.second < oldest or b.second > int(now):
                continue
            count += b.count
            errors += b.errors
            compared += b.compared
            disagreed += b.disagreed
            conf_sum += b.confidence_sum
            conf_n += b.confidence_n
            for i, n in enumerate(b.latency):
                if n:
                    hist[i] += n
        return WindowStats(
            count=count,
            errors=errors,
            p99_s=_quantile(hist, 0.99),
            mean_confidence=conf_sum / conf_n if conf_n else None,
            compared=compared,
            disagreed=disagreed,
        )

    def clear(self) -> None:
        self._buckets = [None] * self.span


def _quantile(hist: list[int], q: float) -> float | None:
    total = sum(hist)
    if total == 0:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return LATENCY_EDGES_S[i] if i < len(LATENCY_EDGES_S) else math.inf
    return math.inf  # pragma: no cover
