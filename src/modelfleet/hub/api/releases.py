"""Release keys and release approvals (issue 10, ADR 0027).

Registering and removing a release key is for admins; reading what to sign is for any
reader; posting a release signature needs the ``approve`` permission (approvers and
admins). The private key never reaches the hub: the body carries only a signature over the
canonical bytes that ``GET .../release`` hands out.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from modelfleet.hub.api._deps import Service, VersionNumber, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import Text
from modelfleet.hub.auth import Permission, check

__all__ = [
    "ReleaseKeyIn",
    "ReleaseKeyOut",
    "ReleaseKeyRemovedOut",
    "ReleaseOut",
    "ReleaseSignatureIn",
    "router",
]

router = APIRouter(tags=["releases"])


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ReleaseKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: Text = Field(max_length=4096, description="PEM ed25519 public key")
    label: Text = Field(default="", max_length=256, description="whose key it is")


class ReleaseKeyOut(_Out):
    keyid: str
    label: str
    added_at: str | None
    added_by: str


class ReleaseKeyRemovedOut(_Out):
    keyid: str
    label: str
    removed_by: str
    keys_left: int = Field(description="release keys still registered")
    recounted: list[dict[str, Any]] = Field(
        description="pending requests that lost the key's signature: version, signatures, threshold"
    )


class ReleaseSignatureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keyid: Text = Field(max_length=64, description="the release key's TUF key id")
    sig: Text = Field(max_length=1024, description="hex signature over the canonical bytes")


class ReleaseSignatureOut(_Out):
    keyid: str
    label: str
    actor: str
    at: str | None


class ReleaseOut(_Out):
    model: str
    version: int
    role: str = Field(description="the delegated catalog role listing this version")
    state: str = Field(description="pending, approved or revoked")
    threshold: int = Field(description="release signatures needed")
    signatures: list[ReleaseSignatureOut]
    release_keys: list[dict[str, str]]
    signed: str = Field(description="base64 of the canonical bytes to sign")
    installable: bool = Field(description="the catalog lists the version through its role")


@router.post(
    "/release-keys",
    status_code=201,
    response_model=ReleaseKeyOut,
    responses=error_responses(400, 401, 403, 409),
)
def add_release_key(body: ReleaseKeyIn, who: Who, service: Service) -> dict[str, Any]:
    """Register a public release key (admin); unpublished versions then need approvals."""
    check(who, Permission.ADMIN)
    return service.approvals.add_key(body.public_key.encode(), body.label, who.actor)


@router.delete(
    "/release-keys/{keyid}",
    response_model=ReleaseKeyRemovedOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
def remove_release_key(keyid: str, who: Who, service: Service) -> dict[str, Any]:
    """Retire a release key (admin): its signatures are refused from now on and pending
    requests recount without it; versions it helped approve stay approved. Refused (409)
    when the keys left could not approve a pending version."""
    check(who, Permission.ADMIN)
    return service.approvals.remove_key(keyid, who.actor)


@router.get(
    "/release-keys", response_model=list[ReleaseKeyOut], responses=error_responses(401, 403)
)
def list_release_keys(who: Who, service: Service) -> list[dict[str, Any]]:
    """The registered release keys (viewer)."""
    check(who, Permission.READ)
    return service.approvals.list_keys()


@router.get(
    "/models/{name}/versions/{version}/release",
    response_model=ReleaseOut,
    responses=error_responses(400, 401, 403, 404),
)
def get_release(name: str, version: VersionNumber, who: Who, service: Service) -> dict[str, Any]:
    """What to sign to approve a version, and its signatures so far (viewer)."""
    check(who, Permission.READ)
    return service.approvals.request(name, version)


@router.post(
    "/models/{name}/versions/{version}/release/signatures",
    response_model=ReleaseOut,
    responses=error_responses(400, 401, 403, 404),
)
def post_release_signature(
    name: str, version: VersionNumber, body: ReleaseSignatureIn, who: Who, service: Service
) -> dict[str, Any]:
    """Add a release signature (approver); at the threshold the version is installable.
    A signature that does not verify with the registered key is refused (400)."""
    check(who, Permission.APPROVE)
    return service.approvals.approve(name, version, body.keyid, body.sig, who.actor)
