"""Telemetry windows of a simulated device: what it served, as wire-format v1 records
(:mod:`modelfleet.telemetry.wire`; pure: a random source in, records out).

A closed window is kept as a small :class:`ServedWindow` (counts only) until it is sent;
its histograms are drawn when it is encoded, from a random source seeded by the window,
so a device offline for hours buffers a few hundred bytes per window, not a record.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.histogram import LATENCY_EDGES_S, Histogram
from modelfleet.sim.faults import VersionEffects
from modelfleet.telemetry.wire import CONFIDENCE_EDGES, encode_histogram

__all__ = ["ServedWindow", "Traffic", "draw_counts", "poisson"]

#: Values drawn per histogram; the counts are scaled to the window's request count.
_SAMPLES = 40


@dataclass(frozen=True)
class Traffic:
    """What a healthy version's traffic looks like on one device.

    Attributes:
        rps: requests per second per device (0 to 10,000).
        latency_ms: median server-side latency (lognormal, ``latency_sigma``).
        latency_sigma: spread of the latency's logarithm.
        base_error_rate: share of requests answered with a server error.
        client_error_rate: share answered with a client error.
        confidence: mean top-class confidence of the answers.
        disagreement: share of shadow comparisons that disagree.
    """

    rps: float = 1.0
    latency_ms: float = 8.0
    latency_sigma: float = 0.4
    base_error_rate: float = 0.002
    client_error_rate: float = 0.005
    confidence: float = 0.85
    disagreement: float = 0.02

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rps) and 0.0 <= self.rps <= 10_000.0):
            raise InvalidInputError("rps must be within [0, 10000]")
        if not (math.isfinite(self.latency_ms) and 0.001 <= self.latency_ms <= 60_000.0):
            raise InvalidInputError("latency_ms must be within [0.001, 60000]")


def poisson(mean: float, rng: random.Random) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal above 30)."""
    if mean <= 0.0:
        return 0
    if mean > 30.0:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _binomial(n: int, p: float, rng: random.Random) -> int:
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if n * p < 30.0:
        return min(n, poisson(n * p, rng))
    return min(n, max(0, round(rng.gauss(n * p, math.sqrt(n * p * (1.0 - p))))))


@dataclass(frozen=True, slots=True)
class ServedWindow:
    """One closed window of one (model, version, role), before it is encoded.

    ``opened_at``/``closed_at`` are device-time ISO strings; ``seed`` makes its
    histograms reproducible.
    """

    seq: int
    model: str
    version: int
    role: str
    rollout_id: str | None
    opened_at: str
    closed_at: str
    requests: int
    server_errors: int
    client_errors: int
    timeouts: int
    latency_median_s: float
    confidence: float
    shadow_compared: int
    shadow_disagreed: int
    guard_breaches: int
    guard_rollbacks: int
    crashes: int
    refusals: int
    updates: int
    seed: int

    def to_record(self, device_id: str, sigma: float) -> dict[str, Any]:
        """The wire record (``kind: window``); ``crashes`` is an additive field (the wire
        format keeps unknown fields) that the rollout gates read."""
        rng = random.Random(self.seed)
        n = self.requests
        latency = Histogram(LATENCY_EDGES_S)
        compute = Histogram(LATENCY_EDGES_S)
        queue = Histogram(LATENCY_EDGES_S)
        confidence = Histogram(CONFIDENCE_EDGES)
        k = min(n, _SAMPLES)
        mu = math.log(self.latency_median_s)
        for _ in range(k):
            total = rng.lognormvariate(mu, sigma)
            share = 0.7 + 0.25 * rng.random()
            latency.record(total)
            compute.record(total * share)
            queue.record(total * (1.0 - share))
            confidence.record(min(1.0, max(0.0, rng.gauss(self.confidence, 0.08))))
        if k and n > k:
            for h in (latency, compute, queue, confidence):
                _scale(h, n, k)
        ok = max(0, n - self.server_errors - self.client_errors - self.timeouts)
        return {
            "kind": "window",
            "seq": self.seq,
            "device_id": device_id,
            "model": self.model,
            "version": str(self.version),
            "role": self.role,
            "rollout_id": self.rollout_id,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "requests": {
                "ok": ok,
                "client_error": self.client_errors,
                "server_error": self.server_errors,
                "timeout": self.timeouts,
            },
            "latency_s": encode_histogram(latency, "latency_s.v1"),
            "compute_s": encode_histogram(compute, "latency_s.v1"),
            "queue_s": encode_histogram(queue, "latency_s.v1"),
            "confidence": encode_histogram(confidence, "confidence.v1"),
            "guard": {"breaches": self.guard_breaches, "rollbacks": self.guard_rollbacks},
            "shadow": {
                "compared": self.shadow_compared,
                "disagreed": self.shadow_disagreed,
                "dropped": 0,
            },
            "cascade": {"local": 0, "upstream": 0, "failed": 0},
            "refusals": self.refusals,
            "updates": self.updates,
            "crashes": self.crashes,
        }


def _scale(h: Histogram, n: int, k: int) -> None:
    """Scale ``k`` drawn values to ``n`` requests, keeping the total exactly ``n``."""
    exact = [c * n / k for c in h.counts]
    counts = [math.floor(x) for x in exact]
    short = n - sum(counts)
    order = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[:short]:
        counts[i] += 1
    h.counts = counts
    h.total *= n / k


@dataclass(frozen=True, slots=True)
class Counts:
    """The counts drawn for one route of one window."""

    requests: int
    server_errors: int
    client_errors: int
    timeouts: int
    crashes: int
    latency_median_s: float
    confidence: float
    shadow_compared: int
    shadow_disagreed: int


def draw_counts(
    traffic: Traffic,
    effects: VersionEffects,
    seconds: float,
    share: float,
    rng: random.Random,
    *,
    shadow: bool = False,
) -> Counts:
    """Draw one route's counts for a window of ``seconds`` taking ``share`` of the
    device's requests (a shadow route compares that share instead of answering it)."""
    mean = traffic.rps * max(0.0, seconds) * share
    n = poisson(mean, rng)
    crashes = poisson(effects.crash_per_h * max(0.0, seconds) / 3600.0, rng)
    median = traffic.latency_ms / 1000.0 * effects.latency_x
    confidence = max(0.0, traffic.confidence - effects.drift)
    if shadow:
        disagree = min(1.0, traffic.disagreement + effects.drift)
        return Counts(0, 0, 0, 0, crashes, median, confidence, n, _binomial(n, disagree, rng))
    errors = _binomial(n, min(1.0, traffic.base_error_rate + effects.error_rate), rng)
    client = _binomial(n - errors, traffic.client_error_rate, rng)
    # A version slower than a second starts to time out (the agent's default deadline).
    timeouts = _binomial(n - errors - client, min(0.5, max(0.0, median - 1.0)), rng)
    return Counts(n, errors, client, timeouts, crashes, median, confidence, 0, 0)
