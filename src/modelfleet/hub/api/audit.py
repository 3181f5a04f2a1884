"""The audit log: pages of entries and the hash-chain check."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from modelfleet.hub.api._deps import INT32_MAX, Service, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import AuditPageOut, AuditVerifyOut
from modelfleet.hub.auth import Permission, check

__all__ = ["router"]

router = APIRouter(tags=["audit"])

# The config allows audit_page_limit up to 100000; the service caps a page at the
# configured limit.
_MAX_PAGE = 100_000


@router.get("/audit", response_model=AuditPageOut, responses=error_responses(400, 401, 403))
def audit(
    who: Who,
    service: Service,
    after_seq: Annotated[int, Query(ge=0, le=INT32_MAX, description="entries after this")] = 0,
    limit: Annotated[int, Query(ge=1, le=_MAX_PAGE, description="at most this many")] = 100,
) -> dict[str, Any]:
    """Audit entries after ``after_seq``, oldest first (viewer)."""
    check(who, Permission.READ)
    return {"entries": service.audit(after_seq, limit)}


@router.get("/audit/verify", response_model=AuditVerifyOut, responses=error_responses(401, 403))
def audit_verify(who: Who, service: Service) -> dict[str, Any]:
    """Check the audit hash chain (viewer)."""
    check(who, Permission.READ)
    broken = service.verify_audit()
    return {"intact": broken is None, "first_broken_seq": broken}
