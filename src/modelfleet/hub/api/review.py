"""The review queue (issue 9): samples of suspect windows, exports for labelling, label
imports, and the accuracy, precision and recall the labels give per version, site or day."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response

from modelfleet.errors import InvalidInputError, PayloadTooLargeError
from modelfleet.hub.api._deps import Service, Who, check_length
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.auth import Permission, check
from modelfleet.hub.review import MAX_LIST, ReviewQuery

__all__ = ["router"]

router = APIRouter(tags=["review"])

Name = Annotated[str | None, Query(max_length=256)]
Format = Annotated[Literal["jsonl", "label-studio"], Query()]
_RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"
Time = Annotated[str | None, Query(pattern=_RFC3339, max_length=40, description="RFC 3339")]
#: Largest label import accepted.
MAX_IMPORT_BYTES = 64 * 1024 * 1024


def _time(value: str | None, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as e:
        raise InvalidInputError(f"{what} is not a valid time: {value!r}") from e


def _query(
    model: str | None,
    version: str | None,
    site: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> ReviewQuery:
    return ReviewQuery(
        model=model,
        version=version,
        site=site,
        status=status,
        since=_time(since, "since"),
        until=_time(until, "until"),
        limit=limit,
    )


@router.get(
    "/review", response_model=list[dict[str, Any]], responses=error_responses(400, 401, 403)
)
def list_samples(
    who: Who,
    service: Service,
    model: Name = None,
    version: Name = None,
    site: Name = None,
    status: Annotated[Literal["pending", "labelled"] | None, Query()] = None,
    since: Time = None,
    until: Time = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
) -> list[dict[str, Any]]:
    """Review samples, oldest first, without their tensors (viewer)."""
    check(who, Permission.READ)
    return service.review.list(_query(model, version, site, status, since, until, limit))


@router.get(
    "/review/counts", response_model=dict[str, Any], responses=error_responses(400, 401, 403)
)
def counts(who: Who, service: Service, model: Name = None) -> dict[str, Any]:
    """Pending and labelled samples per model, and the queue limit (viewer)."""
    check(who, Permission.READ)
    return service.review.counts(model)


@router.get(
    "/review/export",
    responses={
        200: {
            "description": "JSONL (one sample per line) or a Label Studio task list",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            },
        },
        **error_responses(400, 401, 403),
    },
)
def export(
    who: Who,
    service: Service,
    format: Format = "jsonl",
    model: Name = None,
    version: Name = None,
    site: Name = None,
    status: Annotated[Literal["pending", "labelled"] | None, Query()] = "pending",
    since: Time = None,
    until: Time = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 1000,
) -> Response:
    """Samples with their inputs and outputs: JSONL, or Label Studio import JSON (viewer)."""
    check(who, Permission.READ)
    q = _query(model, version, site, status, since, until, limit)
    body = service.review.export(q, format)
    media = "application/x-ndjson" if format == "jsonl" else "application/json"
    return Response(body, media_type=media)


@router.post(
    "/review/labels",
    response_model=dict[str, Any],
    responses=error_responses(400, 401, 403, 413),
)
async def import_labels(
    request: Request, who: Who, service: Service, format: Format = "jsonl"
) -> dict[str, Any]:
    """Labels for samples (operator): JSONL lines ``{"sample_id", "label"}`` or Label
    Studio's JSON export; the latest import of a sample wins."""
    check(who, Permission.OPERATE)
    check_length(request, MAX_IMPORT_BYTES)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_IMPORT_BYTES:
            raise PayloadTooLargeError(f"a label import is at most {MAX_IMPORT_BYTES} bytes")
        chunks.append(chunk)
    result: dict[str, Any] = await anyio.to_thread.run_sync(
        service.review.import_labels, b"".join(chunks), format
    )
    return result


@router.get(
    "/review/metrics", response_model=dict[str, Any], responses=error_responses(400, 401, 403)
)
def metrics(
    who: Who,
    service: Service,
    model: Annotated[str, Query(max_length=256)],
    by: Annotated[Literal["version", "site", "day"], Query()] = "version",
    since: Time = None,
    until: Time = None,
) -> dict[str, Any]:
    """Accuracy, precision and recall (macro) of labelled samples vs the model's answers,
    per version, site or day (viewer)."""
    check(who, Permission.READ)
    return service.review.metrics(model, by, _time(since, "since"), _time(until, "until"))
