"""TUF serving: the trust root, and the catalog's and director's metadata and targets."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from modelfleet.errors import ForbiddenError
from modelfleet.hub.api._deps import Service, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.auth import Permission, Role, check

__all__ = ["api_router", "tuf_router"]

log = logging.getLogger("modelfleet.hub")

api_router = APIRouter(tags=["trust"])  # under /api/v1
tuf_router = APIRouter(prefix="/tuf", tags=["trust"])  # the TUF repositories' base URLs

_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


@api_router.get(
    "/trust-root",
    response_class=Response,
    responses={
        200: {"description": "the trust-root bundle", "content": _JSON_OBJECT},
        **error_responses(401),
    },
)
def trust_root(who: Who, service: Service) -> Response:
    """The trust-root bundle devices bootstrap TUF from (any valid token)."""
    check(who, Permission.TUF)
    return Response(service.trust_root(), media_type="application/json")


@tuf_router.get(
    "/{repo}/metadata/{filename}",
    response_class=Response,
    responses={
        200: {"description": "signed TUF metadata", "content": _JSON_OBJECT},
        **error_responses(400, 401, 404),
    },
)
def tuf_metadata(repo: str, filename: str, who: Who, service: Service) -> Response:
    """Signed metadata of the catalog or director repository (any valid token)."""
    check(who, Permission.TUF)
    return FileResponse(
        service.tuf_metadata(repo, filename),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@tuf_router.get(
    "/director/devices/{device_id}/metadata/{filename}",
    response_class=Response,
    responses={
        200: {"description": "signed per-device director metadata", "content": _JSON_OBJECT},
        **error_responses(400, 401, 403, 404),
    },
)
def tuf_device_metadata(device_id: str, filename: str, who: Who, service: Service) -> Response:
    """One device's own director repository (Uptane per-vehicle; issue 8): the shared
    ``<N>.root.json``, its ``timestamp.json``, ``<N>.snapshot.json`` and
    ``<N>.targets.json``. A device token reads only its own; other tokens any."""
    check(who, Permission.TUF)
    if who.role is Role.DEVICE and who.subject != device_id:
        log.warning(
            "device %s refused: it asked for device %s's director metadata", who.subject, device_id
        )
        raise ForbiddenError("a device may read only its own director metadata")
    return Response(
        service.tuf_device_metadata(device_id, filename),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@tuf_router.get(
    "/{repo}/targets/{path:path}",
    response_class=Response,
    responses={
        200: {"description": "a listed target's bytes", "content": _BINARY},
        **error_responses(400, 401, 403, 404),
    },
)
def tuf_target(repo: str, path: str, who: Who, service: Service) -> Response:
    """A listed target by its consistent-snapshot path (any valid token).

    A device token reads only its own director targets: one device cannot learn what
    another is told to run.
    """
    check(who, Permission.TUF)
    if (
        who.role is Role.DEVICE
        and repo == "director"
        and not path.startswith(f"devices/{who.subject}/")
    ):
        log.warning("device %s refused: it asked for director target %s", who.subject, path)
        raise ForbiddenError("a device may read only its own desired state")
    if repo == "director":
        return Response(service.director_target(path), media_type="application/octet-stream")
    return FileResponse(service.tuf_target(repo, path), media_type="application/octet-stream")
