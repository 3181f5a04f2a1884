"""Telemetry records and batches for hub tests (wire format v1), made here, not recorded."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from modelfleet.monitoring.histogram import LATENCY_EDGES_S, Histogram
from modelfleet.telemetry.wire import encode_histogram


def window(
    seq: int,
    device: str,
    closed_at: datetime,
    *,
    model: str = "iris",
    version: str = "1",
    role: str = "production",
    rollout_id: str | None = None,
    ok: int = 10,
    server_error: int = 0,
    latencies: Sequence[float] = (0.004, 0.02),
    **extra: Any,
) -> dict[str, Any]:
    """One window record; ``latencies`` are recorded into its latency histogram."""
    hist = Histogram(LATENCY_EDGES_S)
    for v in latencies:
        hist.record(v)
    return {
        "kind": "window",
        "seq": seq,
        "device_id": device,
        "model": model,
        "version": version,
        "role": role,
        "rollout_id": rollout_id,
        "opened_at": (closed_at - timedelta(seconds=60)).isoformat(),
        "closed_at": closed_at.isoformat(),
        "requests": {"ok": ok, "client_error": 1, "server_error": server_error, "timeout": 0},
        "latency_s": encode_histogram(hist, "latency_s.v1"),
        "guard": {"breaches": 0, "rollbacks": 0},
        "refusals": 0,
        "updates": 0,
        **extra,
    }


def event(seq: int, device: str, at: datetime, name: str = "switch") -> dict[str, Any]:
    return {"kind": "event", "seq": seq, "device_id": device, "at": at.isoformat(),
            "event": name, "model": "iris", "version": "1", "message": "switched"}  # fmt: skip


def batch(
    device: str,
    records: Iterable[dict[str, Any]],
    sent_at: datetime,
    *,
    buffer_id: str = "buf-1",
    buffered: int = 0,
    evicted_total: int = 0,
) -> dict[str, Any]:
    return {
        "format": 1,
        "device_id": device,
        "buffer_id": buffer_id,
        "sent_at": sent_at.isoformat(),
        "records": list(records),
        "buffered": buffered,
        "evicted_total": evicted_total,
    }
