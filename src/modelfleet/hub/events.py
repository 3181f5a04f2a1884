"""The hub's events outbox (issue 9): changes a subscriber may act on, such as a model's
drift state at a site changing or a review queue filling up.

An event is written with :func:`record_event` inside the transaction of the change that
caused it, so it exists exactly when the change does (the transactional-outbox pattern);
delivery (webhooks) reads the outbox afterwards, by growing id, and never loses an event
to a crash between the change and the delivery. Events never trigger a deployment: they
tell someone outside the hub that something happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.hub import db

__all__ = [
    "DRIFT_STATE_CHANGED",
    "EVENT_KINDS",
    "OVERRIDES_STATE_CHANGED",
    "REVIEW_QUEUE_FULL",
    "events_after",
    "record_event",
]

#: A model's drift state at a site changed (payload: model, site, version, from, to, score).
DRIFT_STATE_CHANGED: Final = "drift.state_changed"
#: A model's review queue reached its limit (payload: model, pending, limit).
REVIEW_QUEUE_FULL: Final = "review.queue_full"
#: A model's override-rate state at a site changed (ADR 0040; payload: model, site,
#: version, from, to, rate, judged, baseline, excess, statistic, hour).
OVERRIDES_STATE_CHANGED: Final = "overrides.state_changed"
#: Every kind the hub records.
EVENT_KINDS: Final = (DRIFT_STATE_CHANGED, REVIEW_QUEUE_FULL, OVERRIDES_STATE_CHANGED)

_MAX_SUBJECT: Final = 512


def record_event(
    s: Session, kind: str, subject: str, payload: Mapping[str, Any], at: datetime
) -> int:
    """Add an event to the outbox in the caller's transaction and return its id.

    Raises:
        ValueError: ``kind`` is not one of :data:`EVENT_KINDS`, or ``subject`` is empty or
            longer than 512 characters (a programming error, not user input).
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if not subject or len(subject) > _MAX_SUBJECT:
        raise ValueError("an event's subject must be 1 to 512 characters")
    row = db.HubEvent(
        kind=kind,
        subject=subject,
        payload=orjson.dumps(dict(payload)).decode(),
        at=at,
    )
    s.add(row)
    s.flush()
    return row.id


def events_after(s: Session, after_id: int, limit: int = 100) -> list[dict[str, Any]]:
    """The events with an id above ``after_id``, oldest first, at most ``limit``: each
    ``{"id", "kind", "subject", "payload", "at"}`` with ``payload`` decoded."""
    rows = s.scalars(
        select(db.HubEvent).where(db.HubEvent.id > after_id).order_by(db.HubEvent.id).limit(limit)
    ).all()
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "subject": r.subject,
            "payload": orjson.loads(r.payload),
            "at": r.at.isoformat(),
        }
        for r in rows
    ]
