"""Who-am-I and tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modelfleet.hub.api._deps import Service, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import TokenIn, TokenOut, WhoAmIOut
from modelfleet.hub.api.credentials import Bearer
from modelfleet.hub.auth import Permission, Role, check
from modelfleet.hub.credentials import is_device_credential

__all__ = ["router"]

router = APIRouter(tags=["auth"])


@router.get("/whoami", response_model=WhoAmIOut, responses=error_responses(401))
def whoami(who: Who, service: Service, bearer: Bearer) -> dict[str, Any]:
    """Who holds this token (any valid token): its subject, role, and for a device token
    the device id; for a device credential also ``credential`` (its id, state and
    ``not_after``: the agent renews before it, issue 10)."""
    answer: dict[str, Any] = {
        "subject": who.subject,
        "role": who.role.value,
        "device_id": who.subject if who.role is Role.DEVICE else None,
    }
    if who.role is Role.DEVICE and bearer and is_device_credential(bearer.credentials):
        answer["credential"] = service.credential_of(bearer.credentials)
    return answer


@router.post(
    "/tokens",
    status_code=201,
    response_model=TokenOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
def create_token(body: TokenIn, who: Who, service: Service) -> dict[str, Any]:
    """Mint a token (admin). The token is shown only in this answer; a device token
    needs an enrolled device (404 otherwise)."""
    check(who, Permission.ADMIN)
    token = service.create_token(body.role, body.subject, actor=who.actor)
    return {"token": token, "role": body.role.value, "subject": body.subject}
