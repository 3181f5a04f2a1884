"""Devices: enrolment, listing, and check-in reports."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

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


_REPORT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": True,
                "description": "the agent's state, with its recent rollbacks under 'rollbacks'",
            }
        }
    },
}


@router.post(
    "/devices/{device_id}/report",
    response_model=ReportOut,
    responses=error_responses(400, 401, 403, 404, 409, 413),
    openapi_extra={"requestBody": _REPORT_BODY},
)
async def report(device_id: str, request: Request, who: Who, service: Service) -> Response:
    """A device's check-in (its own token, or admin). The answer names the device
    rollbacks in the report that the hub has applied (now or earlier), and the current
    TUF versions (``tuf``; the director's timestamp is the device's own): an agent holding
    exactly these skips its TUF refresh (issue 8).

    The fleet's hottest route: the body is read as bytes and parsed once (orjson) in
    the service, on the thread pool like every other handler; the answer is serialised
    here (its shape is ReportOut's)."""
    check(who, Permission.ADMIN, device_id=device_id)
    check_length(request, service.config.max_report_bytes)
    raw = await request.body()
    outcome = await run_in_threadpool(service.record_report, device_id, raw)
    return Response(orjson.dumps({**outcome, "status": "recorded"}), media_type="application/json")


# --- issue 11: return channel ---


class DeviceKeyIn(BaseModel):
    """A device's Ed25519 public key (64 hex digits)."""

    public_key: str = Field(min_length=64, max_length=64, pattern="^[0-9a-fA-F]{64}$")


@router.put(
    "/devices/{device_id}/key",
    response_model=dict[str, Any],
    responses=error_responses(400, 401, 403, 404, 409),
)
def put_device_key(
    device_id: str, body: DeviceKeyIn, who: Who, service: Service, replace: bool = False
) -> dict[str, Any]:
    """Register the device's public key for return bundles (issue 11, ADR 0029): the
    device's own token (its first key, or the same again) or an admin; replacing a
    different key needs an admin and ``replace=true``."""
    from modelfleet.hub.bundle_ingest import DeviceKeys

    check(who, Permission.ADMIN, device_id=device_id)
    if replace:
        check(who, Permission.ADMIN)
    return DeviceKeys(service.context).register(
        device_id, bytes.fromhex(body.public_key), who.actor, replace=replace
    )


# --- end issue 11: return channel ---
