"""The one fixed-edge histogram: merge, quantile and coarse exposition stay exact."""

from __future__ import annotations

import itertools
import math

import pytest

from modelfleet.monitoring.histogram import (
    LATENCY_EDGES_S,
    PROMETHEUS_LATENCY_EDGES_S,
    Histogram,
    decimal_edges,
)


def test_prometheus_bounds_are_edges_of_the_shared_histogram() -> None:
    assert set(PROMETHEUS_LATENCY_EDGES_S) <= set(LATENCY_EDGES_S)
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_EDGES_S)]
    assert max(ratios) < 1.15  # the guard's p99 is at most ~14 % high
    assert decimal_edges(-4, -3)[8] == 0.00025  # exact decimals: le labels read as written


def test_value_on_an_edge_counts_in_that_edge_as_prometheus_le() -> None:
    h = Histogram()
    h.record(0.001)
    assert h.cumulative([0.001])[0] == (0.001, 1)


def test_merge_adds_counts_and_refuses_other_edges() -> None:
    a, b = Histogram(), Histogram()
    for _ in range(3):
        a.record(0.002)
    b.record(0.5)
    a.merge(b)
    assert a.count == 4 and a.total == pytest.approx(0.506)
    with pytest.raises(ValueError, match="different edges"):
        a.merge(Histogram((1.0, 2.0)))


@pytest.mark.parametrize(
    ("values", "q", "want"),
    [([], 0.99, None), ([0.003] * 99 + [2.0], 0.99, 0.0032), ([0.003] * 98 + [2.0] * 2, 0.99, 2.0),
     ([1000.0], 0.5, math.inf)],
    ids=["empty", "tail-below-one-percent", "tail-at-two-percent", "beyond-the-last-edge"],
)  # fmt: skip
def test_quantile_is_the_upper_edge_of_its_bucket(
    values: list[float], q: float, want: float | None
) -> None:
    h = Histogram()
    for v in values:
        h.record(v)
    assert h.quantile(q) == want


def test_coarse_cumulative_counts_are_exact_sums_of_fine_ones() -> None:
    h = Histogram()
    for v in (0.00009, 0.0001, 0.0003, 0.004, 3.0):
        h.record(v)
    coarse = dict(h.cumulative(PROMETHEUS_LATENCY_EDGES_S))
    assert coarse[0.0001] == 2 and coarse[0.0005] == 3 and coarse[2.5] == 4
    assert coarse[math.inf] == 5
    with pytest.raises(ValueError, match="not an edge"):
        h.cumulative([0.0003])
