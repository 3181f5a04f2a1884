"""Telemetry: batches from devices, summaries for operators and rollout gates, a device's
recent records (issue 7 contracts 1 and 2)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request

from modelfleet.errors import ForbiddenError, InvalidInputError, PayloadTooLargeError
from modelfleet.hub.api._deps import Service, Who, check_length
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import SummaryOut, TelemetryIngestOut
from modelfleet.hub.auth import Permission, check
from modelfleet.hub.telemetry import MAX_RECENT

__all__ = ["router"]

router = APIRouter(tags=["telemetry"])

_BATCH_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "a telemetry batch, wire format v1 (docs/telemetry-format.md)",
                    "required": ["format", "device_id", "buffer_id", "sent_at", "records"],
                    "properties": {
                        "format": {"type": "integer", "minimum": 1},
                        "device_id": {"type": "string"},
                        "buffer_id": {"type": "string"},
                        "sent_at": {"type": "string", "format": "date-time"},
                        "records": {"type": "array", "items": {"type": "object"}},
                        "buffered": {"type": "integer", "minimum": 0},
                        "evicted_total": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    }
}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes without reading the rest."""
    check_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the telemetry batch exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/devices/{device_id}/telemetry",
    response_model=TelemetryIngestOut,
    responses=error_responses(400, 401, 403, 404, 413),
    openapi_extra=_BATCH_SCHEMA,
)
async def ingest(device_id: str, request: Request, who: Who, service: Service) -> dict[str, Any]:
    """A device's telemetry batch (its own token, or admin): stored in one transaction,
    each record once; records already stored count as duplicates."""
    try:
        check(who, Permission.ADMIN, device_id=device_id)
    except ForbiddenError:
        service.metrics.batches.labels("refused").inc()
        raise
    limit = service.config.max_telemetry_bytes
    try:
        body = await _read_body(request, limit)
    except PayloadTooLargeError:
        service.metrics.batches.labels("invalid").inc()
        raise
    result: dict[str, Any] = await anyio.to_thread.run_sync(
        service.ingest_telemetry, device_id, body
    )
    return result


Name = Annotated[str | None, Query(max_length=256)]

#: RFC 3339 date and time, the offset optional (a time without one is UTC). A bare number is
#: refused: it would otherwise be read as seconds since 1970.
_RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"


def _time_query(description: str) -> Any:
    return Query(pattern=_RFC3339, max_length=40, description=f"RFC 3339 time; {description}")


def _parse_time(value: str | None, what: str) -> datetime | None:
    """``value`` (already matched against :data:`_RFC3339`) as a datetime.

    Raises:
        InvalidInputError: not a real date or time (month 13, hour 25).
    """
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as e:
        raise InvalidInputError(f"{what} is not a valid time: {value!r}") from e


@router.get(
    "/telemetry/summary", response_model=SummaryOut, responses=error_responses(400, 401, 403)
)
def summary(
    who: Who,
    service: Service,
    model: Name = None,
    version: Name = None,
    role: Annotated[Literal["production", "candidate", "shadow"] | None, Query()] = None,
    site: Name = None,
    tag: Name = None,
    rollout_id: Name = None,
    device_id: Name = None,
    since: Annotated[str | None, _time_query("default: until - 24 h")] = None,
    until: Annotated[str | None, _time_query("exclusive; default: now")] = None,
) -> dict[str, Any]:
    """Windows merged exactly over raw records and hourly roll-ups (viewer): those whose
    device-time ``closed_at`` is in ``[since, until)``. Tag and device filters see raw
    windows only (``"partial"`` says when roll-ups were left out)."""
    check(who, Permission.READ)
    return service.telemetry_summary(
        since=_parse_time(since, "since"),
        until=_parse_time(until, "until"),
        model=model,
        version=version,
        role=role,
        site=site,
        tag=tag,
        rollout_id=rollout_id,
        device_id=device_id,
    )


@router.get(
    "/devices/{device_id}/windows",
    response_model=list[dict[str, Any]],
    responses=error_responses(400, 401, 403, 404),
)
def windows(
    device_id: str,
    who: Who,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_RECENT)] = 50,
) -> list[dict[str, Any]]:
    """A device's recent raw telemetry records, newest first (viewer, or the device)."""
    check(who, Permission.READ, device_id=device_id)
    return service.device_windows(device_id, limit)
