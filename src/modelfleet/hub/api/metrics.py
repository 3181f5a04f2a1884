"""``GET /metrics``: the hub's Prometheus exposition (issue 7 contract 3)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from modelfleet.hub.api._deps import Service
from modelfleet.hub.auth import Permission, check

__all__ = ["router"]

router = APIRouter(tags=["hub"])
_bearer = HTTPBearer(auto_error=False)


@router.get("/metrics", include_in_schema=False)
def metrics(
    service: Service,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Response:
    """Prometheus text exposition; no token needed unless the hub config says
    ``metrics_token_required = true`` (then a viewer token)."""
    if service.config.metrics_token_required:
        check(service.authenticate(creds.credentials if creds else None), Permission.READ)
    return Response(service.metrics_text(), media_type=CONTENT_TYPE_LATEST)
