"""Devices: enrolment, listing, and check-in reports."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Request, Response

from modelfleet.hub.api._deps import Service, Who, check_length
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import DeviceIn, DeviceOut, DeviceWithTokenOut, ReportOut
from modelfleet.hub.auth import Permission, check

__all__ = ["router"]

router = APIRouter(tags=["devices"])


@router.post(
    "/devices",
    status_code=201,
    response_model=DeviceWithTokenOut,
    responses=error_responses(400, 401, 403, 409),
)
def add_device(body: DeviceIn, who: Who, service: Service) -> dict[str, Any]:
    """Enrol a device (operator); answers its token, shown only here."""
    check(who, Permission.OPERATE)
    device, token = service.add_device(
        body.id, body.site, body.tags, actor=who.actor, ticket=body.ticket
    )
    return {**device, "token": token}


@router.get("/devices", response_model=list[DeviceOut], responses=error_responses(401, 403))
def list_devices(who: Who, service: Service) -> list[dict[str, Any]]:
    """Every device with its assignments and last report (viewer)."""
    check(who, Permission.READ)
    return service.list_devices()


@router.get(
    "/devices/{device_id}",
    response_model=DeviceOut,
    responses=error_responses(400, 401, 403, 404),
)
def get_device(device_id: str, who: Who, service: Service) -> dict[str, Any]:
    """One device (viewer, or the device itself)."""
    check(who, Permission.READ, device_id=device_id)
    return service.get_device(device_id)


@router.post(
    "/devices/{device_id}/report",
    response_model=ReportOut,
    responses=error_responses(400, 401, 403, 404, 409, 413),
)
def report(
    device_id: str,
    body: Annotated[
        dict[str, Any],
        Body(description="the agent's state, with its recent rollbacks under 'rollbacks'"),
    ],
    request: Request,
    who: Who,
    service: Service,
) -> Response:
    """A device's check-in (its own token, or admin). The answer names the device
    rollbacks in the report that the hub has applied (now or earlier), and the current
    TUF versions (``tuf``; the director's timestamp is the device's own): an agent holding
    exactly these skips its TUF refresh (issue 8)."""
    check(who, Permission.ADMIN, device_id=device_id)
    check_length(request, service.config.max_report_bytes)
    outcome = service.record_report(device_id, body)  # {"applied_rollbacks", "tuf"}
    # Serialised here (the shape is ReportOut's): this is the fleet's hottest route.
    return Response(orjson.dumps({**outcome, "status": "recorded"}), media_type="application/json")
