"""Override helpers for hub tests (ADR 0040): windows carrying operator overrides, through
real ingest."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from modelfleet.hub.service import HubService
from tests.hub._telemetry import batch, window


def override_window(
    seq: int,
    device: str,
    closed: datetime,
    overridden: int,
    confirmed: int,
    *,
    version: str = "1",
    role: str = "production",
    model: str = "iris",
) -> dict[str, Any]:
    return window(
        seq,
        device,
        closed,
        model=model,
        version=version,
        role=role,
        overrides={"overridden": overridden, "confirmed": confirmed},
    )


def send_overrides(
    service: HubService,
    device: str,
    seq: int,
    closed: datetime,
    overridden: int,
    confirmed: int,
    **kw: Any,
) -> dict[str, Any]:
    """One window of ``device`` with these override counts, through real ingest."""
    record = override_window(seq, device, closed, overridden, confirmed, **kw)
    return service.ingest_telemetry(device, orjson.dumps(batch(device, [record], closed)))
