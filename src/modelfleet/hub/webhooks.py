"""Webhooks (issue 9, ADR 0021): subscriptions to the hub's events outbox, delivered as
signed HTTP POSTs with retries and a delivery log.

A round (:meth:`Webhooks.run_once`, run by :class:`~modelfleet.hub.webhooks_loop.WebhookLoop`
in ``hub serve``) does three things:

1. **queue**: for each enabled subscription, the events after its cursor
   (:func:`modelfleet.hub.events.events_after`) whose kind it wants become ``pending``
   deliveries, and the cursor moves past them, in one transaction (so an event is queued
   once per subscription whatever crashes);
2. **claim**: due pending deliveries (``next_attempt_at <= now``) are claimed by moving
   ``next_attempt_at`` past the request deadline, in a write transaction: two hub replicas
   never send the same attempt, and a claim left by a crashed process falls due again;
3. **send**: each claimed delivery is POSTed (no transaction open) with the event JSON as
   the body, ``X-Modelfleet-Signature`` (:mod:`~modelfleet.hub.webhooks_signature`) and
   ``X-Modelfleet-Event-Id``; a 2xx answer delivers it; anything else (another status, a
   refused connection, the deadline) schedules the next attempt after a capped
   exponential delay with full jitter (:class:`~modelfleet.backoff.BackoffPolicy`), and
   after ``max_attempts`` the delivery is ``dead`` (dead-lettered: kept in the log, never
   retried). Every attempt is a row of the delivery log.

Delivery is at least once and not ordered: a receiver dedups on the event id. Nothing a
webhook answers changes the hub (events never deploy anything).

Return values are JSON-ready dicts:

* subscription: ``{"id", "url", "kinds", "enabled", "description", "created_at",
  "created_by", "cursor", "counts": {"pending", "delivered", "dead"}}``; at creation
  also ``"secret"`` (shown once);
* delivery: ``{"id", "subscription_id", "event_id", "kind", "subject", "state",
  "attempts", "next_attempt_at", "last_status_code", "last_error", "delivered_at",
  "created_at", "log": [{"attempt", "at", "status_code", "error", "duration_ms"}]}``.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import httpx
import orjson
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from modelfleet import __version__
from modelfleet.backoff import BackoffPolicy
from modelfleet.errors import ConfigError, InvalidInputError, NotFoundError, TransportError
from modelfleet.hub import db, events
from modelfleet.hub.context import HubContext
from modelfleet.hub.webhooks_signature import (
    EVENT_ID_HEADER,
    EVENT_KIND_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)

__all__ = [
    "DELIVERY_STATES",
    "SECRET_PREFIX",
    "TEST_KIND",
    "HttpxSender",
    "RoundResult",
    "Sender",
    "WebhookSettings",
    "Webhooks",
    "event_body",
]

_log = logging.getLogger(__name__)

#: What a delivery can be: waiting for an attempt, done, or given up (dead-lettered).
DELIVERY_STATES: Final = ("pending", "delivered", "dead")
#: Secrets look like ``whsec_...`` (256 random bits).
SECRET_PREFIX: Final = "whsec_"
#: The kind of the event that ``webhook test`` sends (never stored in the outbox).
TEST_KIND: Final = "webhook.test"

_MAX_URL: Final = 2048
_MAX_DESCRIPTION: Final = 512
_MAX_ERROR: Final = 1024
_CLAIM_MARGIN_S: Final = 30.0


@dataclass(frozen=True)
class WebhookSettings:
    """How deliveries are tried.

    Attributes:
        max_attempts: attempts before a delivery is dead (1 to 50).
        backoff: delay before attempt n+1 after n failures: uniform in
            ``[0, min(cap, base * 2**(n-1))]`` (full jitter), at least 50 ms.
        timeout_s: the deadline of one POST, connecting included (0.1 to 120 s).
        batch: most events queued per subscription, and most deliveries sent, per round.
    """

    max_attempts: int = 8
    backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(base_s=10.0, cap_s=3600.0))
    timeout_s: float = 10.0
    batch: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 50:
            raise ConfigError(f"webhook max_attempts {self.max_attempts} is outside [1, 50]")
        if not (math.isfinite(self.timeout_s) and 0.1 <= self.timeout_s <= 120):
            raise ConfigError(f"webhook timeout {self.timeout_s} s is outside [0.1, 120]")
        if not 1 <= self.batch <= 10_000:
            raise ConfigError(f"webhook batch {self.batch} is outside [1, 10000]")


class Sender(Protocol):
    """Sends one POST; the one interface to the outside (tests use real loopback servers
    or an ``httpx.MockTransport``)."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        """POST ``body`` and return the HTTP status code.

        Raises:
            TransportError: no answer (refused, reset, DNS, TLS, or the deadline passed).
        """
        ...


class HttpxSender:
    """:class:`Sender` over one httpx client (keep-alive; redirects not followed, so a
    3xx is a failed attempt rather than a POST to somewhere else).

    Args:
        transport: an httpx transport to use (tests: ``httpx.MockTransport``).
    """

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(transport=transport, follow_redirects=False)

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        try:
            response = self._client.post(
                url, content=body, headers=dict(headers), timeout=httpx.Timeout(timeout_s)
            )
        except httpx.TimeoutException as e:
            raise TransportError(f"no answer within {timeout_s:g} s") from e
        except httpx.HTTPError as e:
            raise TransportError(f"{type(e).__name__}: {e}") from e
        return response.status_code

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class RoundResult:
    """What one round did."""

    queued: int = 0
    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0


@dataclass(frozen=True)
class _Claim:
    delivery_id: int
    attempt: int
    url: str
    secret: str
    event_id: int
    kind: str
    body: bytes


def _check_url(url: str) -> str:
    url = url.strip()
    if not url or len(url) > _MAX_URL:
        raise InvalidInputError(f"a webhook URL must be 1 to {_MAX_URL} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as e:
        raise InvalidInputError(f"not a URL: {url!r} ({e})") from e
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInputError(f"a webhook URL must be http(s)://host/...: {url!r}")
    return url


def _check_kinds(kinds: Sequence[str]) -> list[str]:
    unknown = sorted(set(kinds) - set(events.EVENT_KINDS))
    if unknown:
        known = ", ".join(events.EVENT_KINDS)
        raise InvalidInputError(f"unknown event kind(s) {', '.join(unknown)}; use {known}")
    return sorted(set(kinds))


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def event_body(event: Mapping[str, Any]) -> bytes:
    """The body of a delivery: the event as ``{"id", "kind", "subject", "payload", "at"}``."""
    return orjson.dumps(
        {k: event[k] for k in ("id", "kind", "subject", "payload", "at")},
        option=orjson.OPT_SORT_KEYS,
    )


class Webhooks:
    """Subscriptions, the delivery rounds and the delivery log.

    Args:
        context: the hub context (sessions, clock, audit).
        sender: who POSTs (:class:`HttpxSender` if None).
        settings: retry and deadline settings.
        rand: uniform in [0, 1) for the jitter (``random.random`` if None; tests fix it).
    """

    def __init__(
        self,
        context: HubContext,
        sender: Sender | None = None,
        settings: WebhookSettings | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self._ctx = context
        self._sender = sender or HttpxSender()
        self.settings = settings or WebhookSettings()
        self._rand = rand or random.random

    def close(self) -> None:
        """Close the sender's connections (when it has any)."""
        close = getattr(self._sender, "close", None)
        if callable(close):
            close()

    # -- subscriptions ---------------------------------------------------------------------

    def create(
        self, url: str, kinds: Sequence[str], description: str, actor: str
    ) -> dict[str, Any]:
        """Subscribe ``url`` to events of ``kinds`` (empty: every kind) from now on.

        Returns:
            The subscription with its ``secret`` (the only time it is shown).

        Raises:
            InvalidInputError: a URL that is not http(s), an unknown kind, a description
                over 512 characters.
        """
        url = _check_url(url)
        wanted = _check_kinds(kinds)
        if len(description) > _MAX_DESCRIPTION:
            raise InvalidInputError(f"a description is at most {_MAX_DESCRIPTION} characters")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        with self._ctx.write() as s:
            newest = s.scalar(select(func.max(db.HubEvent.id))) or 0
            row = db.WebhookSubscription(
                url=url,
                kinds=orjson.dumps(wanted).decode(),
                secret=secret,
                enabled=True,
                description=description,
                cursor=newest,
                created_at=self._ctx.now(),
                created_by=actor,
            )
            s.add(row)
            s.flush()
            self._ctx.audit(
                s, actor, "webhook.create", f"webhook/{row.id}", {"url": url, "kinds": wanted}
            )
            out = self._view(s, row)
        return {**out, "secret": secret}

    def subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription, oldest first (secrets never shown)."""
        with self._ctx.read() as s:
            rows = s.scalars(select(db.WebhookSubscription).order_by(db.WebhookSubscription.id))
            return [self._view(s, r) for r in rows]

    def get(self, subscription_id: int) -> dict[str, Any]:
        """One subscription.

        Raises:
            NotFoundError: no such subscription.
        """
        with self._ctx.read() as s:
            return self._view(s, self._row(s, subscription_id))

    def delete(self, subscription_id: int, actor: str) -> dict[str, Any]:
        """Remove a subscription with its deliveries and their log.

        Raises:
            NotFoundError: no such subscription.
        """
        with self._ctx.write() as s:
            row = self._row(s, subscription_id)
            out = self._view(s, row)
            ids = select(db.WebhookDelivery.id).where(
                db.WebhookDelivery.subscription_id == subscription_id
            )
            s.execute(delete(db.WebhookAttempt).where(db.WebhookAttempt.delivery_id.in_(ids)))
            s.execute(
                delete(db.WebhookDelivery).where(
                    db.WebhookDelivery.subscription_id == subscription_id
                )
            )
            s.delete(row)
            self._ctx.audit(
                s, actor, "webhook.delete", f"webhook/{subscription_id}", {"url": row.url}
            )
        return out

    def set_enabled(self, subscription_id: int, enabled: bool, actor: str) -> dict[str, Any]:
        """Pause (``enabled=False``) or resume a subscription, audited. A paused one queues
        nothing and sends nothing; its cursor stays, so on resume it gets the events it
        missed (as far as the outbox still keeps them) and its pending deliveries resume.

        Raises:
            NotFoundError: no such subscription.
        """
        with self._ctx.write() as s:
            row = self._row(s, subscription_id)
            if row.enabled != enabled:
                row.enabled = enabled
                action = "webhook.enable" if enabled else "webhook.disable"
                self._ctx.audit(s, actor, action, f"webhook/{subscription_id}", {"url": row.url})
            return self._view(s, row)

    def redrive(
        self, subscription_id: int, actor: str, delivery_ids: Sequence[int] = ()
    ) -> dict[str, Any]:
        """Give dead deliveries a fresh start: ``pending``, due now, attempts from zero (the
        log of earlier attempts is kept). ``delivery_ids`` picks some (each must be this
        subscription's and dead); empty means every dead one. Audited; returns
        ``{"subscription_id", "redriven": [ids]}``.

        Raises:
            InvalidInputError: a named delivery is not dead or not this subscription's.
            NotFoundError: no such subscription.
        """
        now = self._ctx.now()
        with self._ctx.write() as s:
            self._row(s, subscription_id)
            q = select(db.WebhookDelivery).where(
                db.WebhookDelivery.subscription_id == subscription_id
            )
            if delivery_ids:
                q = q.where(db.WebhookDelivery.id.in_(list(delivery_ids)))
            else:
                q = q.where(db.WebhookDelivery.state == "dead")
            rows = list(s.scalars(q.order_by(db.WebhookDelivery.id)))
            found = {d.id: d for d in rows}
            wrong = [i for i in delivery_ids if i not in found or found[i].state != "dead"]
            if wrong:
                raise InvalidInputError(
                    f"not a dead delivery of webhook {subscription_id}: "
                    + ", ".join(str(i) for i in wrong)
                )
            for d in rows:
                d.state, d.attempts, d.next_attempt_at = "pending", 0, now
            ids = [d.id for d in rows]
            if ids:
                self._ctx.audit(
                    s, actor, "webhook.redrive", f"webhook/{subscription_id}", {"deliveries": ids}
                )
        return {"subscription_id": subscription_id, "redriven": ids}

    def deliveries(
        self, subscription_id: int, state: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """A subscription's deliveries, newest first, each with its attempt log.

        Raises:
            InvalidInputError: an unknown ``state``.
            NotFoundError: no such subscription.
        """
        if state is not None and state not in DELIVERY_STATES:
            raise InvalidInputError(
                f"unknown delivery state {state!r}; use {', '.join(DELIVERY_STATES)}"
            )
        with self._ctx.read() as s:
            self._row(s, subscription_id)
            q = (
                select(db.WebhookDelivery, db.HubEvent.kind, db.HubEvent.subject)
                .join(db.HubEvent, db.HubEvent.id == db.WebhookDelivery.event_id)
                .where(db.WebhookDelivery.subscription_id == subscription_id)
                .order_by(db.WebhookDelivery.id.desc())
                .limit(limit)
            )
            if state is not None:
                q = q.where(db.WebhookDelivery.state == state)
            rows = s.execute(q).all()
            logs: dict[int, list[dict[str, Any]]] = {d.id: [] for d, _, _ in rows}
            if logs:
                attempts = s.scalars(
                    select(db.WebhookAttempt)
                    .where(db.WebhookAttempt.delivery_id.in_(list(logs)))
                    .order_by(db.WebhookAttempt.delivery_id, db.WebhookAttempt.id)  # by time
                )
                for a in attempts:
                    logs[a.delivery_id].append(
                        {
                            "attempt": a.attempt,
                            "at": a.at.isoformat(),
                            "status_code": a.status_code,
                            "error": a.error,
                            "duration_ms": round(a.duration_ms, 3),
                        }
                    )
            return [
                {
                    "id": d.id,
                    "subscription_id": d.subscription_id,
                    "event_id": d.event_id,
                    "kind": kind,
                    "subject": subject,
                    "state": d.state,
                    "attempts": d.attempts,
                    "next_attempt_at": _iso(d.next_attempt_at) if d.state == "pending" else None,
                    "last_status_code": d.last_status_code,
                    "last_error": d.last_error,
                    "delivered_at": _iso(d.delivered_at),
                    "created_at": d.created_at.isoformat(),
                    "log": logs[d.id],
                }
                for d, kind, subject in rows
            ]

    def test(self, subscription_id: int) -> dict[str, Any]:
        """Send one signed ``webhook.test`` event to the subscription now (not stored, not
        retried): ``{"ok", "status_code", "error", "duration_ms", "event_id"}``.

        Raises:
            NotFoundError: no such subscription.
        """
        with self._ctx.read() as s:
            row = self._row(s, subscription_id)
            url, secret = row.url, row.secret
        now = self._ctx.now()
        event_id = f"test-{secrets.token_hex(8)}"
        body = orjson.dumps(
            {
                "at": now.isoformat(),
                "id": event_id,
                "kind": TEST_KIND,
                "payload": {"subscription_id": subscription_id},
                "subject": f"webhook/{subscription_id}",
            }
        )
        status, error, duration_ms = self._post(url, secret, event_id, TEST_KIND, body)
        return {
            "ok": status is not None and 200 <= status < 300,
            "status_code": status,
            "error": error,
            "duration_ms": round(duration_ms, 3),
            "event_id": event_id,
        }

    # -- retention ---------------------------------------------------------------------------

    def apply_retention(self, cutoff: datetime, budget: int) -> dict[str, int]:
        """Delete, oldest first and at most ``budget`` rows of each kind: deliveries that
        are ``delivered`` or ``dead`` and were created before ``cutoff`` (with their log),
        then outbox events from before ``cutoff`` that every subscription's cursor has
        passed and no delivery still names. Pending deliveries and the events they need
        are never deleted. Returns ``{"webhook_deliveries_deleted", "events_deleted"}``.
        """
        with self._ctx.write() as s:
            ids = list(
                s.scalars(
                    select(db.WebhookDelivery.id)
                    .where(
                        db.WebhookDelivery.state.in_(("delivered", "dead")),
                        db.WebhookDelivery.created_at < cutoff,
                    )
                    .order_by(db.WebhookDelivery.id)
                    .limit(budget)
                )
            )
            for i in range(0, len(ids), 1000):
                chunk = ids[i : i + 1000]
                s.execute(delete(db.WebhookAttempt).where(db.WebhookAttempt.delivery_id.in_(chunk)))
                s.execute(delete(db.WebhookDelivery).where(db.WebhookDelivery.id.in_(chunk)))
            lowest_cursor = s.scalar(select(func.min(db.WebhookSubscription.cursor)))
            still_named = select(db.WebhookDelivery.event_id)
            q = select(db.HubEvent.id).where(
                db.HubEvent.at < cutoff, db.HubEvent.id.not_in(still_named)
            )
            if lowest_cursor is not None:
                q = q.where(db.HubEvent.id <= lowest_cursor)
            events_gone = list(s.scalars(q.order_by(db.HubEvent.id).limit(budget)))
            for i in range(0, len(events_gone), 1000):
                s.execute(delete(db.HubEvent).where(db.HubEvent.id.in_(events_gone[i : i + 1000])))
        return {"webhook_deliveries_deleted": len(ids), "events_deleted": len(events_gone)}

    # -- delivery rounds -------------------------------------------------------------------

    def run_once(self) -> RoundResult:
        """One round: queue new events, claim due deliveries, send them, log the outcomes.

        Raises:
            StorageError: the database failed (the loop logs it and tries next round).
        """
        queued = self._queue()
        claims = self._claim()
        delivered = retrying = dead = 0
        for claim in claims:
            status, error, duration_ms = self._post(
                claim.url, claim.secret, str(claim.event_id), claim.kind, claim.body
            )
            outcome = self._record(claim, status, error, duration_ms)
            if outcome == "delivered":
                delivered += 1
            elif outcome == "dead":
                dead += 1
            else:
                retrying += 1
        return RoundResult(queued, len(claims), delivered, retrying, dead)

    def _queue(self) -> int:
        queued = 0
        with self._ctx.write() as s:
            now = self._ctx.now()
            subs = s.scalars(
                select(db.WebhookSubscription).where(db.WebhookSubscription.enabled.is_(True))
            ).all()
            for sub in subs:
                wanted = set(orjson.loads(sub.kinds))
                batch = events.events_after(s, sub.cursor, self.settings.batch)
                for event in batch:
                    if wanted and event["kind"] not in wanted:
                        continue
                    s.add(
                        db.WebhookDelivery(
                            subscription_id=sub.id,
                            event_id=event["id"],
                            state="pending",
                            attempts=0,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
                    queued += 1
                if batch:
                    sub.cursor = batch[-1]["id"]
        return queued

    def _claim(self) -> list[_Claim]:
        with self._ctx.write() as s:
            now = self._ctx.now()
            rows = s.execute(
                select(db.WebhookDelivery, db.WebhookSubscription, db.HubEvent)
                .join(
                    db.WebhookSubscription,
                    db.WebhookSubscription.id == db.WebhookDelivery.subscription_id,
                )
                .join(db.HubEvent, db.HubEvent.id == db.WebhookDelivery.event_id)
                .where(
                    db.WebhookDelivery.state == "pending",
                    db.WebhookDelivery.next_attempt_at <= now,
                    db.WebhookSubscription.enabled.is_(True),  # a paused one sends nothing
                )
                .order_by(db.WebhookDelivery.next_attempt_at, db.WebhookDelivery.id)
                .limit(self.settings.batch)
            ).all()
            # Claimed past the deadline: a crash before the outcome is written makes it
            # due again then (at least once).
            until = now + timedelta(seconds=self.settings.timeout_s + _CLAIM_MARGIN_S)
            claims = []
            for delivery, sub, event in rows:
                delivery.next_attempt_at = until
                body = event_body(
                    {
                        "id": event.id,
                        "kind": event.kind,
                        "subject": event.subject,
                        "payload": orjson.loads(event.payload),
                        "at": event.at.isoformat(),
                    }
                )
                claims.append(
                    _Claim(
                        delivery.id,
                        delivery.attempts + 1,
                        sub.url,
                        sub.secret,
                        event.id,
                        event.kind,
                        body,
                    )
                )
            return claims

    def _post(
        self, url: str, secret: str, event_id: str, kind: str, body: bytes
    ) -> tuple[int | None, str | None, float]:
        clock = self._ctx.clock
        timestamp = int(clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"modelfleet-hub/{__version__}",
            SIGNATURE_HEADER: signature_header(secret, timestamp, body),
            EVENT_ID_HEADER: event_id,
            EVENT_KIND_HEADER: kind,
        }
        started = clock.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            status = self._sender.post(url, body, headers, self.settings.timeout_s)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except TransportError as e:
            error = str(e)[:_MAX_ERROR]
        return status, error, max(0.0, (clock.monotonic() - started) * 1000.0)

    def _record(
        self, claim: _Claim, status: int | None, error: str | None, duration_ms: float
    ) -> str:
        with self._ctx.write() as s:
            now = self._ctx.now()
            delivery = s.get(db.WebhookDelivery, claim.delivery_id)
            if delivery is None:  # the subscription was deleted meanwhile
                return "dead"
            s.add(
                db.WebhookAttempt(
                    delivery_id=delivery.id,
                    attempt=claim.attempt,
                    at=now,
                    status_code=status,
                    error=error,
                    duration_ms=duration_ms,
                )
            )
            delivery.attempts = claim.attempt
            delivery.last_status_code = status
            delivery.last_error = error
            if error is None:
                delivery.state = "delivered"
                delivery.delivered_at = now
                delivery.next_attempt_at = None
            elif claim.attempt >= self.settings.max_attempts:
                delivery.state = "dead"
                delivery.next_attempt_at = None
                _log.warning(
                    "webhook delivery %d (event %d to %s) is dead after %d attempts: %s",
                    delivery.id,
                    claim.event_id,
                    claim.url,
                    claim.attempt,
                    error,
                )
            else:
                delay = self.settings.backoff.delay(claim.attempt, self._rand)
                delivery.next_attempt_at = now + timedelta(seconds=delay)
            return delivery.state if delivery.state != "pending" else "retrying"

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _row(s: Session, subscription_id: int) -> db.WebhookSubscription:
        row = s.get(db.WebhookSubscription, subscription_id)
        if row is None:
            raise NotFoundError(f"no webhook {subscription_id}")
        return row

    @staticmethod
    def _view(s: Session, row: db.WebhookSubscription) -> dict[str, Any]:
        counts = dict.fromkeys(DELIVERY_STATES, 0)
        for state, n in s.execute(
            select(db.WebhookDelivery.state, func.count())
            .where(db.WebhookDelivery.subscription_id == row.id)
            .group_by(db.WebhookDelivery.state)
        ):
            counts[state] = int(n)
        return {
            "id": row.id,
            "url": row.url,
            "kinds": orjson.loads(row.kinds),
            "enabled": row.enabled,
            "description": row.description,
            "created_at": row.created_at.isoformat(),
            "created_by": row.created_by,
            "cursor": row.cursor,
            "counts": counts,
        }
