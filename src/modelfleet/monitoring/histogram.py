"""One fixed-edge histogram type for every distribution modelfleet keeps.

The guard's sliding window, the Prometheus latency series and (next) drift statistics all
count values into buckets with *fixed* upper edges, so histograms of one kind merge by
adding counts, a quantile is a walk over the counts, and a coarser exposition (Prometheus'
``le`` buckets) is exact as long as its edges are a subset of the fine ones.

Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = ["LATENCY_EDGES_S", "PROMETHEUS_LATENCY_EDGES_S", "Histogram", "decimal_edges"]

#: Mantissas of :func:`decimal_edges`: 20 per decade, neighbours at most ~14 % apart, and
#: 1, 2.5 and 5 among them so the usual Prometheus bounds are edges too.
_MANTISSAS: Final = (
    "1", "1.1", "1.25", "1.4", "1.6", "1.8", "2", "2.25", "2.5", "2.8",
    "3.2", "3.6", "4", "4.5", "5", "5.6", "6.3", "7.1", "8", "9",
)  # fmt: skip


def decimal_edges(low_exp: int, high_exp: int) -> tuple[float, ...]:
    """Edges ``m * 10**e`` for ``low_exp <= e < high_exp`` over 20 mantissas per decade.

    Built from decimal strings, so ``0.00025`` is exactly the float ``0.00025`` (the
    Prometheus ``le`` labels read as written).
    """
    return tuple(float(f"{m}e{e}") for e in range(low_exp, high_exp) for m in _MANTISSAS)


#: Latency upper edges in seconds: 10 µs … 90 s (the last bucket is +Inf).
LATENCY_EDGES_S: Final = decimal_edges(-5, 2)

#: The ``le`` bounds the Prometheus latency series expose: a subset of
#: :data:`LATENCY_EDGES_S`, so the coarse counts are exact sums of the fine ones.
PROMETHEUS_LATENCY_EDGES_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class Histogram:
    """Counts of values in fixed buckets ``(-inf, e0], (e0, e1], …, (e_last, +inf)``.

    ``le`` semantics as in Prometheus: a value equal to an edge falls in that edge's bucket.
    Not thread-safe by itself; owners that share one across threads hold a lock.

    Args:
        edges: strictly increasing upper edges; the histogram keeps a reference (share one
            tuple between histograms that are to be merged).

    Attributes:
        edges: the upper edges.
        counts: ``len(edges) + 1`` counts, the last for values above the last edge.
        total: sum of the recorded values.
    """

    __slots__ = ("counts", "edges", "total")

    def __init__(self, edges: Sequence[float] = LATENCY_EDGES_S) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)
        self.total = 0.0

    def record(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect_left(self.edges, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return sum(self.counts)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts into this one.

        Raises:
            ValueError: the edges differ.
        """
        if other.edges is not self.edges and tuple(other.edges) != tuple(self.edges):
            raise ValueError("histograms with different edges cannot be merged")
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.total += other.total

    def copy(self) -> Histogram:
        """An independent copy."""
        twin = Histogram(self.edges)
        twin.counts = list(self.counts)
        twin.total = self.total
        return twin

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile as the upper edge of the bucket it falls in (an upper bound).

        Returns:
            None when empty; ``math.inf`` when it falls above the last edge.

        Raises:
            ValueError: ``q`` is not within [0, 1].
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError("a quantile must be within [0, 1]")
        total = self.count
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return self.edges[i] if i < len(self.edges) else math.inf
        return math.inf  # pragma: no cover - seen reaches total

    def cumulative(self, at: Iterable[float] | None = None) -> list[tuple[float, int]]:
        """Cumulative counts ``(le, n)`` at each edge (or at the edges ``at``), then +Inf.

        Raises:
            ValueError: an ``at`` bound is not one of this histogram's edges (the count
                there would be a guess).
        """
        running = 0
        out: list[tuple[float, int]] = []
        if at is None:
            for edge, n in zip(self.edges, self.counts, strict=False):
                running += n
                out.append((edge, running))
        else:
            i = 0
            for bound in at:
                j = bisect_left(self.edges, bound)
                if j >= len(self.edges) or self.edges[j] != bound:
                    raise ValueError(f"{bound!r} is not an edge of this histogram")
                while i <= j:
                    running += self.counts[i]
                    i += 1
                out.append((bound, running))
        out.append((math.inf, self.count))
        return out
