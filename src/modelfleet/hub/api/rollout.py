"""Deployments and rollbacks."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter

from modelfleet.errors import InvalidInputError
from modelfleet.hub.api._deps import Service, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import DeploymentIn, DeploymentOut, RollbackIn, RollbackOut
from modelfleet.hub.auth import Permission, check
from modelfleet.hub.service import ALL_DEVICES

__all__ = ["router"]

router = APIRouter(tags=["rollout"])


def _device_selection(devices: list[str] | None, all_devices: bool) -> list[str] | Literal["all"]:
    if all_devices and devices:
        raise InvalidInputError("give either a device list or all=true, not both")
    if all_devices:
        return ALL_DEVICES
    if not devices:
        raise InvalidInputError("name the devices, or set all=true")
    return devices


@router.post(
    "/deployments",
    status_code=201,
    response_model=DeploymentOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
def deploy(body: DeploymentIn, who: Who, service: Service) -> dict[str, Any]:
    """Assign a version to devices (operator)."""
    check(who, Permission.OPERATE)
    return service.deploy(
        body.model,
        body.version,
        _device_selection(body.devices, body.all),
        body.mode,
        body.share,
        body.slo,
        actor=who.actor,
        ticket=body.ticket,
    )


@router.post(
    "/rollbacks",
    status_code=201,
    response_model=RollbackOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
def rollback(body: RollbackIn, who: Who, service: Service) -> dict[str, Any]:
    """Send devices back to their last good version (operator)."""
    check(who, Permission.OPERATE)
    return service.rollback(
        body.model,
        _device_selection(body.devices, body.all),
        actor=who.actor,
        ticket=body.ticket,
    )
