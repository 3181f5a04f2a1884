"""Sliding windows of per-version serving statistics, in one-second buckets, per caller.

Each bucket holds, per caller, counts and latency counts in the fixed buckets of
:data:`LATENCY_EDGES_S` (a :class:`Histogram`'s), so windows merge by addition and the p99
comes from the histogram (an upper bound at bucket resolution, ≤ 14 % wide). The per-caller
split lets the guard ask whether a breach is seen by several callers or made by one
(ADR 0010). Time is passed in by the caller (a monotonic reading): nothing here reads a
clock.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Final

from modelfleet.monitoring.histogram import LATENCY_EDGES_S, Histogram

__all__ = [
    "LATENCY_EDGES_S",
    "OTHER_CALLERS",
    "SlidingWindow",
    "Tally",
    "WindowStats",
    "latency_bucket",
]

#: The caller key under which callers beyond ``max_callers`` in one second are counted.
OTHER_CALLERS: Final = "(other)"

_BUCKETS: Final = len(LATENCY_EDGES_S) + 1
_NO_SECOND: Final = -(2**62)


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What a window (or a tally) saw.

    Attributes:
        count: requests answered or failed by the server.
        errors: requests that failed inside the server (not caller mistakes).
        p99_s: 99th percentile server-side latency in seconds (bucket upper edge), None
            when empty.
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


class Tally:
    """Counts of one stream of requests: errors, confidence, latency histogram.

    Per request only integers move (and a float sum when a confidence comes): the count,
    the error count and one latency bucket, found once by the caller (:func:`latency_bucket`)
    and shared by every tally the request lands in. Quantiles and means are derived when
    asked for (:meth:`stats`), at evaluation time (issue 6).

    Attributes:
        counts: requests per latency bucket of :data:`LATENCY_EDGES_S` (the last: above it).
    """

    __slots__ = ("confidence_n", "confidence_sum", "count", "counts", "errors")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.confidence_sum = 0.0
        self.confidence_n = 0
        self.counts = [0] * _BUCKETS

    def record(self, latency_s: float, error: bool, confidence: float | None) -> None:
        """Count one request."""
        self.record_bucket(bisect_left(LATENCY_EDGES_S, latency_s), error, confidence)

    def record_bucket(self, bucket: int, error: bool, confidence: float | None) -> None:
        """Count one request whose latency fell in ``bucket`` (:func:`latency_bucket`)."""
        self.count += 1
        self.counts[bucket] += 1
        if error:
            self.errors += 1
        if confidence is not None:
            self.confidence_sum += confidence
            self.confidence_n += 1

    @property
    def latency(self) -> Histogram:
        """The latency histogram (a copy; no latency sum is kept, so its ``total`` is 0)."""
        hist = Histogram(LATENCY_EDGES_S)
        hist.counts = list(self.counts)
        return hist

    def merge(self, other: Tally) -> None:
        """Add ``other`` into this tally."""
        self.count += other.count
        self.errors += other.errors
        self.confidence_sum += other.confidence_sum
        self.confidence_n += other.confidence_n
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n

    def stats(self, compared: int = 0, disagreed: int = 0) -> WindowStats:
        """This tally as :class:`WindowStats`."""
        return WindowStats(
            count=self.count,
            errors=self.errors,
            p99_s=self.latency.quantile(0.99),
            mean_confidence=(
                self.confidence_sum / self.confidence_n if self.confidence_n else None
            ),
            compared=compared,
            disagreed=disagreed,
        )


def latency_bucket(latency_s: float) -> int:
    """The index of the :data:`LATENCY_EDGES_S` bucket ``latency_s`` falls in (``le``)."""
    return bisect_left(LATENCY_EDGES_S, latency_s)


@dataclass(slots=True)
class _Bucket:
    second: int
    callers: dict[str, Tally] = field(default_factory=dict)
    compared: int = 0
    disagreed: int = 0


class SlidingWindow:
    """The last ``span_s`` seconds of one version's traffic, stretched back when sparse.

    A heavy model served at one request every 0.7 s never has 50 requests in 30 s; so
    :meth:`stats` and :meth:`caller_stats` can be asked for ``at_least`` requests, and then
    reach further back, up to ``reach`` times the span, until they have them.

    Args:
        span_s: window length, 1 s … 1 h.
        max_callers: distinct callers kept apart per second; more are counted together
            under :data:`OTHER_CALLERS` (bounds memory whatever the traffic).
        reach: how many spans back a sparse window may stretch.

    Not thread-safe by itself: the agent records from the event loop only.
    """

    def __init__(self, span_s: float = 30.0, max_callers: int = 32, reach: int = 10) -> None:
        if not 1.0 <= span_s <= 3600.0:
            raise ValueError("window span must be between 1 s and 1 h")
        if reach < 1:
            raise ValueError("reach must be at least 1")
        self.span = math.ceil(span_s)
        self._max_callers = max_callers
        self._size = self.span * reach
        self._buckets: list[_Bucket | None] = [None] * self._size
        # the bucket last written, where most requests land; at first one no second matches
        self._current = _Bucket(_NO_SECOND)

    def _bucket(self, now: float) -> _Bucket:
        second = int(now)
        current = self._current
        if current.second == second:
            return current
        slot = second % self._size
        b = self._buckets[slot]
        if b is None or b.second != second:
            b = _Bucket(second)
            self._buckets[slot] = b
        self._current = b
        return b

    def record(
        self,
        now: float,
        latency_s: float,
        error: bool = False,
        confidence: float | None = None,
        caller: str = "",
    ) -> None:
        """Count one request from ``caller`` at monotonic time ``now``."""
        self.record_bucket(now, bisect_left(LATENCY_EDGES_S, latency_s), error, confidence, caller)

    def record_bucket(
        self,
        now: float,
        bucket: int,
        error: bool = False,
        confidence: float | None = None,
        caller: str = "",
    ) -> None:
        """:meth:`record`, the latency given as its bucket (:func:`latency_bucket`)."""
        b = self._current
        if b.second != int(now):
            b = self._bucket(now)
        tally = b.callers.get(caller)
        if tally is None:
            tally = self._new_caller(b.callers, caller)
        tally.count += 1  # Tally.record_bucket, inlined: once per watched request
        tally.counts[bucket] += 1
        if error:
            tally.errors += 1
        if confidence is not None:
            tally.confidence_sum += confidence
            tally.confidence_n += 1

    def _new_caller(self, callers: dict[str, Tally], caller: str) -> Tally:
        if len(callers) >= self._max_callers:
            caller = OTHER_CALLERS
            tally = callers.get(caller)
            if tally is not None:
                return tally
        tally = callers[caller] = Tally()
        return tally

    def record_comparison(self, now: float, disagreed: bool) -> None:
        """Count one shadow comparison at monotonic time ``now``."""
        b = self._bucket(now)
        b.compared += 1
        if disagreed:
            b.disagreed += 1

    def _live(self, now: float, at_least: int) -> list[_Bucket]:
        newest = int(now)
        span_start = newest - self.span + 1
        live: list[_Bucket] = []
        seen = 0
        buckets, size = self._buckets, self._size
        for second in range(newest, newest - size, -1):
            if second < span_start and seen >= at_least:
                break
            b = buckets[second % size]
            if b is None or b.second != second:
                continue
            live.append(b)
            if second < span_start or at_least:
                seen += sum(t.count for t in b.callers.values())
        return live

    def stats(self, now: float, at_least: int = 0) -> WindowStats:
        """Aggregate all callers over the last ``span`` seconds before ``now`` (further back,
        up to ``reach`` spans, until it holds ``at_least`` requests)."""
        total = Tally()
        compared = disagreed = 0
        for b in self._live(now, at_least):
            compared += b.compared
            disagreed += b.disagreed
            for tally in b.callers.values():
                total.merge(tally)
        return total.stats(compared, disagreed)

    def caller_stats(self, now: float, at_least: int = 0) -> dict[str, WindowStats]:
        """Per caller, what :meth:`stats` with the same arguments covers."""
        per: dict[str, Tally] = {}
        for b in self._live(now, at_least):
            for caller, tally in b.callers.items():
                mine = per.get(caller)
                if mine is None:
                    mine = per[caller] = Tally()
                mine.merge(tally)
        return {caller: tally.stats() for caller, tally in per.items()}

    def clear(self) -> None:
        self._buckets = [None] * self._size
        self._current = _Bucket(_NO_SECOND)
