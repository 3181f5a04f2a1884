"""Realistic telemetry records for the tests and the benchmark."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from modelfleet.monitoring.histogram import LATENCY_EDGES_S, Histogram
from modelfleet.telemetry.wire import CONFIDENCE_EDGES, encode_histogram

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def window(
    i: int = 0,
    device_id: str = "edge-1",
    model: str = "m",
    role: str = "production",
    busy: bool = True,
) -> dict[str, Any]:
    """A window as the recorder closes it, with ~40 latency buckets filled when busy."""
    rng = random.Random(i)
    lat, comp, queue = (Histogram(LATENCY_EDGES_S) for _ in range(3))
    conf = Histogram(CONFIDENCE_EDGES)
    for _ in range(200 if busy else 0):
        c = rng.lognormvariate(-7, 0.8)
        q = rng.lognormvariate(-9, 1.0)
        comp.record(c)
        queue.record(q)
        lat.record(c + q)
        conf.record(rng.random())
    opened = T0 + timedelta(seconds=60 * i)
    return {
        "kind": "window",
        "device_id": device_id,
        "model": model,
        "version": "3",
        "role": role,
        "rollout_id": "ro-1",
        "opened_at": opened.isoformat(),
        "closed_at": (opened + timedelta(seconds=60)).isoformat(),
        "requests": {"ok": 198 if busy else 0, "client_error": 2 if busy else 0,
                     "server_error": 0, "timeout": 0},
        "latency_s": encode_histogram(lat, "latency_s.v1"),
        "compute_s": encode_histogram(comp, "latency_s.v1"),
        "queue_s": encode_histogram(queue, "latency_s.v1"),
        "confidence": encode_histogram(conf, "confidence.v1"),
        "guard": {"breaches": 0, "rollbacks": 0},
        "shadow": {"compared": 0, "disagreed": 0, "dropped": 0},
        "cascade": {"local": 0, "upstream": 0, "failed": 0},
        "refusals": 0,
        "updates": 0,
    }  # fmt: skip
