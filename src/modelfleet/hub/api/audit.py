"""The audit log: filtered pages, the chain check and the signed head (issue 8)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from modelfleet.audit.log import AuditQuery
from modelfleet.errors import InvalidInputError
from modelfleet.hub.api._deps import INT32_MAX, Service, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import AuditAnchorOut, AuditPageOut, AuditVerifyOut
from modelfleet.hub.auth import Permission, check

__all__ = ["router"]

router = APIRouter(tags=["audit"])

# The config allows audit_page_limit up to 100000; the service caps a page at the
# configured limit.
_MAX_PAGE = 100_000

#: RFC 3339 date and time, the offset optional (a time without one is UTC), as in telemetry.
_RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"

Seq = Annotated[int | None, Query(ge=0, le=INT32_MAX)]
Name = Annotated[str | None, Query(max_length=256)]


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError as e:
        raise InvalidInputError(f"since is not a valid time: {value!r}") from e
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@router.get("/audit", response_model=AuditPageOut, responses=error_responses(400, 401, 403))
def audit(
    who: Who,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=_MAX_PAGE, description="at most this many")] = 100,
    before_seq: Annotated[
        int | None,
        Query(ge=1, le=INT32_MAX, description="newest first, entries before this seq"),
    ] = None,
    after_seq: Annotated[
        int | None,
        Query(ge=0, le=INT32_MAX, description="oldest first, entries after this seq"),
    ] = None,
    since: Annotated[
        str | None,
        Query(pattern=_RFC3339, max_length=40, description="RFC 3339; entries at or after"),
    ] = None,
    subject: Name = None,
    actor: Name = None,
    action: Name = None,
) -> dict[str, Any]:
    """Audit entries (viewer): newest first, paged with ``before_seq`` (the answer's
    ``next_before_seq``); with ``after_seq``, oldest first instead (``next_after_seq``).
    ``subject`` matches that subject and those below it (``iris`` matches ``iris/3``);
    ``actor`` and ``action`` match exactly."""
    check(who, Permission.READ)
    query = AuditQuery(limit, before_seq, after_seq, _since(since), subject, actor, action)
    return service.audit_page(query)


@router.get("/audit/verify", response_model=AuditVerifyOut, responses=error_responses(401, 403))
def audit_verify(who: Who, service: Service) -> dict[str, Any]:
    """Check the hash chain against its signed head and the hub's checkpoint (viewer):
    any edit, insertion, deletion or truncation is a ``problem``."""
    check(who, Permission.READ)
    return service.audit_verify()


@router.get("/audit/head", response_model=AuditAnchorOut, responses=error_responses(401, 403))
def audit_head(who: Who, service: Service) -> dict[str, Any]:
    """The chain's signed head checkpoint and the public key that verifies it (viewer),
    for ``modelfleet audit export``."""
    check(who, Permission.READ)
    return service.audit_anchor()
