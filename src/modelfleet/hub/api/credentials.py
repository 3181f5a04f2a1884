"""Device credentials (issue 10, ADR 0026): bootstrap tokens, enrolment, rotation,
revocation, decommissioning, listings.

``POST /enrol`` and ``POST /devices/{id}/credentials/rotate`` read their bearer token
themselves: the first takes a bootstrap token (no other token is valid there), the second a
device's own credential, an expired one included (renewal after a long time offline).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from modelfleet.hub.api._deps import Service, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import Text
from modelfleet.hub.auth import Permission, check

__all__ = ["router"]

router = APIRouter(tags=["credentials"])

_bearer = HTTPBearer(auto_error=False, description="a bootstrap token or a device credential")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class BootstrapIn(BaseModel):
    site: Text = Field(default="", description="the device's site, if it enrols as new")
    tags: list[Text] = Field(default_factory=list)
    ttl_s: float | None = Field(
        default=None, ge=60, le=30 * 86400, description="validity in seconds (default 1 day)"
    )


class EnrolIn(BaseModel):
    device_id: Text | None = Field(
        default=None, description="the id the device expects (refused if not the token's)"
    )


class ReasonIn(BaseModel):
    reason: Text = Field(default="", max_length=256)


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class BootstrapOut(_Out):
    id: str
    device_id: str
    token: str = Field(description="one-time bootstrap token, shown only in this answer")
    expires_at: str


class CredentialSecretOut(_Out):
    device_id: str
    credential_id: str
    token: str = Field(description="the device credential, shown only in this answer")
    not_after: str


class CredentialOut(_Out):
    id: str
    device_id: str
    state: str = Field(description="active, rotating, revoked or expired")
    not_after: str
    grace_until: str | None = None


@router.post(
    "/devices/{device_id}/bootstrap-tokens",
    status_code=201,
    response_model=BootstrapOut,
    responses=error_responses(400, 401, 403, 409),
)
def create_bootstrap_token(
    device_id: str, body: BootstrapIn, who: Who, service: Service
) -> dict[str, Any]:
    """A one-time bootstrap token for a device (operator): the device exchanges it at
    ``POST /enrol`` for its credential. The device need not be enrolled yet."""
    check(who, Permission.OPERATE)
    return service.create_bootstrap_token(
        device_id, who.actor, site=body.site, tags=body.tags, ttl_s=body.ttl_s
    )


@router.post(
    "/enrol",
    status_code=201,
    response_model=CredentialSecretOut,
    responses=error_responses(400, 401, 403, 409),
)
def enrol(body: EnrolIn, bearer: Bearer, service: Service) -> dict[str, Any]:
    """Exchange a bootstrap token (the bearer) for the device's credential, once."""
    return service.enrol_device(bearer.credentials if bearer else None, body.device_id)


@router.post(
    "/devices/{device_id}/credentials/rotate",
    response_model=CredentialSecretOut,
    responses=error_responses(400, 401, 403),
)
def rotate(device_id: str, bearer: Bearer, service: Service) -> dict[str, Any]:
    """A device renews its own credential (the bearer; an expired one too, within the
    renewal window). The old one is accepted for the grace window more."""
    return service.rotate_credential(bearer.credentials if bearer else None, device_id)


@router.get(
    "/devices/{device_id}/credentials",
    response_model=list[CredentialOut],
    responses=error_responses(400, 401, 403, 404),
)
def device_credentials(device_id: str, who: Who, service: Service) -> list[dict[str, Any]]:
    """A device's credentials, newest first, never their secrets (viewer, or the device)."""
    check(who, Permission.READ, device_id=device_id)
    return service.device_credentials(device_id)


@router.get("/credentials", response_model=list[CredentialOut], responses=error_responses(401, 403))
def all_credentials(who: Who, service: Service) -> list[dict[str, Any]]:
    """Every device credential (viewer)."""
    check(who, Permission.READ)
    return service.device_credentials()


@router.post(
    "/credentials/{credential_id}/revoke",
    response_model=CredentialOut,
    responses=error_responses(400, 401, 403, 404),
)
def revoke_credential(
    credential_id: str, body: ReasonIn, who: Who, service: Service
) -> dict[str, Any]:
    """Revoke one device credential (operator)."""
    check(who, Permission.OPERATE)
    return service.revoke_credential(credential_id, who.actor, body.reason)


@router.post("/devices/{device_id}/revoke", responses=error_responses(400, 401, 403, 404))
def revoke_device(device_id: str, body: ReasonIn, who: Who, service: Service) -> dict[str, Any]:
    """Revoke every credential and token of a device (operator)."""
    check(who, Permission.OPERATE)
    return service.revoke_device(device_id, who.actor, body.reason)


@router.post(
    "/devices/{device_id}/decommission", responses=error_responses(400, 401, 403, 404, 409)
)
def decommission(device_id: str, body: ReasonIn, who: Who, service: Service) -> dict[str, Any]:
    """Take a device out of the fleet (operator): credentials revoked, assignments and
    desired state removed; deploys and rollouts skip it."""
    check(who, Permission.OPERATE)
    return service.decommission_device(device_id, who.actor, body.reason)


class MediaAccessOut(BaseModel):
    site: str
    devices: dict[str, list[str]] = Field(
        description="device id -> SHA-256 digests of the credentials it may use offline"
    )


@router.get(
    "/sites/{site}/media-access",
    response_model=MediaAccessOut,
    responses=error_responses(400, 401, 403),
)
def media_access(site: str, who: Who, service: Service) -> dict[str, Any]:
    """A site's devices and the digests (never the secrets) of the credentials a site
    mirror fed by removable media may accept from them (admin; issue 11). An unknown site
    has no devices."""
    check(who, Permission.ADMIN)
    return {"site": site, "devices": service.media_access(site)}
