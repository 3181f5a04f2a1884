"""Webhooks (issue 9, ADR 0021): subscribe a URL to the hub's events, read the delivery
log, send a test event. Managing subscriptions is for admins (a webhook sends the hub's
events outside it); reading them is for any reader. A secret is shown only in the answer
that created it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from modelfleet.hub.api._deps import INT32_MAX, Service, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import Text
from modelfleet.hub.auth import Permission, check
from modelfleet.hub.events import EVENT_KINDS

__all__ = [
    "WebhookAttemptOut",
    "WebhookCreatedOut",
    "WebhookDeliveryOut",
    "WebhookIn",
    "WebhookOut",
    "WebhookPatchIn",
    "WebhookRedriveIn",
    "WebhookRedriveOut",
    "WebhookTestOut",
    "router",
]

router = APIRouter(tags=["webhooks"])

WebhookId = Annotated[int, Path(ge=1, le=INT32_MAX, description="a webhook id")]


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookIn(_In):
    url: Text = Field(max_length=2048, description="http(s) URL the events are POSTed to")
    kinds: list[Annotated[Text, Field(max_length=128)]] = Field(
        default_factory=list,
        max_length=16,
        description=f"event kinds to send, of {', '.join(EVENT_KINDS)} (empty: every kind)",
    )
    description: Text = Field(default="", max_length=512)


class WebhookCountsOut(_Out):
    pending: int
    delivered: int
    dead: int


class WebhookOut(_Out):
    id: int
    url: str
    kinds: list[str]
    enabled: bool
    description: str
    created_at: str
    created_by: str
    cursor: int
    counts: WebhookCountsOut


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="the HMAC key; shown only here")


class WebhookAttemptOut(_Out):
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookDeliveryOut(_Out):
    id: int
    subscription_id: int
    event_id: int
    kind: str
    subject: str
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: str | None
    created_at: str
    log: list[WebhookAttemptOut]


class WebhookTestOut(_Out):
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    event_id: str


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookCreatedOut,
    responses=error_responses(400, 401, 403),
)
def create_webhook(body: WebhookIn, who: Who, service: Service) -> dict[str, Any]:
    """Subscribe a URL to the hub's events from now on (admin). The answer holds the
    signing secret, shown this once."""
    check(who, Permission.ADMIN)
    return service.webhooks.create(body.url, body.kinds, body.description, actor=who.actor)


@router.get("/webhooks", response_model=list[WebhookOut], responses=error_responses(401, 403))
def list_webhooks(who: Who, service: Service) -> list[dict[str, Any]]:
    """Every subscription with its delivery counts (viewer); secrets are never shown."""
    check(who, Permission.READ)
    return service.webhooks.subscriptions()


@router.get(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    responses=error_responses(400, 401, 403, 404),
)
def get_webhook(webhook_id: WebhookId, who: Who, service: Service) -> dict[str, Any]:
    """One subscription (viewer)."""
    check(who, Permission.READ)
    return service.webhooks.get(webhook_id)


@router.delete(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    responses=error_responses(400, 401, 403, 404),
)
def delete_webhook(webhook_id: WebhookId, who: Who, service: Service) -> dict[str, Any]:
    """Remove a subscription, its deliveries and their log (admin)."""
    check(who, Permission.ADMIN)
    return service.webhooks.delete(webhook_id, actor=who.actor)


class WebhookPatchIn(_In):
    enabled: bool = Field(description="false pauses the subscription, true resumes it")


class WebhookRedriveIn(_In):
    delivery_ids: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, max_length=1000, description="dead deliveries; empty: every one"
    )


class WebhookRedriveOut(_Out):
    subscription_id: int
    redriven: list[int]


@router.patch(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    responses=error_responses(400, 401, 403, 404),
)
def patch_webhook(
    webhook_id: WebhookId, body: WebhookPatchIn, who: Who, service: Service
) -> dict[str, Any]:
    """Pause or resume a subscription (admin); a paused one keeps its cursor and gets what
    it missed when resumed."""
    check(who, Permission.ADMIN)
    return service.webhooks.set_enabled(webhook_id, body.enabled, actor=who.actor)


@router.post(
    "/webhooks/{webhook_id}/redrive",
    response_model=WebhookRedriveOut,
    responses=error_responses(400, 401, 403, 404),
)
def redrive_webhook(
    webhook_id: WebhookId, body: WebhookRedriveIn, who: Who, service: Service
) -> dict[str, Any]:
    """Send dead deliveries again from attempt one (admin): the named ones, or every dead
    one when none is named."""
    check(who, Permission.ADMIN)
    return service.webhooks.redrive(webhook_id, actor=who.actor, delivery_ids=body.delivery_ids)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=list[WebhookDeliveryOut],
    responses=error_responses(400, 401, 403, 404),
)
def webhook_deliveries(
    webhook_id: WebhookId,
    who: Who,
    service: Service,
    state: Annotated[
        Literal["pending", "delivered", "dead"] | None, Query(description="only this state")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 50,
) -> list[dict[str, Any]]:
    """A subscription's deliveries, newest first, each with its attempt log (viewer)."""
    check(who, Permission.READ)
    return service.webhooks.deliveries(webhook_id, state=state, limit=limit)


@router.post(
    "/webhooks/{webhook_id}/test",
    response_model=WebhookTestOut,
    responses=error_responses(400, 401, 403, 404),
)
def test_webhook(webhook_id: WebhookId, who: Who, service: Service) -> dict[str, Any]:
    """Send one signed ``webhook.test`` event now and report the answer (admin); it is
    neither stored nor retried."""
    check(who, Permission.ADMIN)
    return service.webhooks.test(webhook_id)
