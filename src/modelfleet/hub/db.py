"""The hub's database: SQLAlchemy 2 ORM tables and engine setup (SQLite or PostgreSQL).

The schema is created and changed only by the Alembic migrations in
``modelfleet/hub/migrations``; :func:`migrate` runs them programmatically.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from modelfleet.errors import ConfigError, StorageError
from modelfleet.hub import locks

__all__ = [
    "NAMING_CONVENTION",
    "Assignment",
    "AuditEntry",
    "AuditHead",
    "Base",
    "Device",
    "DeviceKey",
    "DeviceReport",
    "DeviceRollbackEvent",
    "DeviceServing",
    "DeviceState",
    "DeviceTelemetry",
    "DirectorDevice",
    "DriftRollup",
    "DriftStateRow",
    "GateEvaluation",
    "HubEvent",
    "Model",
    "ModelVersion",
    "ReturnBundle",
    "ReviewLabel",
    "ReviewSample",
    "Rollout",
    "RolloutDevice",
    "RolloutTransition",
    "TelemetryRecord",
    "TelemetryRollup",
    "Token",
    "TufRoleVersion",
    "UTCDateTime",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookSubscription",
    "make_engine",
    "make_sessionmaker",
    "migrate",
]


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every hub table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - read once by SQLAlchemy
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class Model(Base):
    """A registered model name."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(256))
    # Issue 8: rollouts of a safety-classified model need a ticket and a second person's
    # approval (see hub/rollouts.py).
    safety_classified: Mapped[bool] = mapped_column(Boolean, default=False)


class ModelVersion(Base):
    """One immutable version of a model: its artefact, manifest and schema."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    manifest_length: Mapped[int] = mapped_column(BigInteger)
    opset: Mapped[int] = mapped_column(Integer)
    ir_version: Mapped[int] = mapped_column(Integer)
    schema: Mapped[dict[str, Any]]
    lineage: Mapped[dict[str, Any]]
    smoke_vectors: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(256))
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Device(Base):
    """An enrolled device and what it last said about itself."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    site: Mapped[str] = mapped_column(String(128), default="")
    tags: Mapped[list[Any]]
    created_at: Mapped[datetime]
    last_seen: Mapped[datetime | None]
    reported: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Token(Base):
    """An API token; only its SHA-256 is stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(256))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Assignment(Base):
    """The director's current assignment of one model on one device."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("device_id", "model", name="uq_assignments_device_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    production_version: Mapped[int] = mapped_column(Integer)
    candidate_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mode: Mapped[str] = mapped_column(String(16))
    share: Mapped[float] = mapped_column(Float)
    slo: Mapped[dict[str, Any]]
    rollout_id: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]


class DeviceState(Base):
    """The latest desired state signed for a device (its serial and blob digest)."""

    __tablename__ = "desired_states"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    serial: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    issued_at: Mapped[datetime]


class DeviceReport(Base):
    """One check-in report of a device, kept as received (for ``telemetry_raw_days``,
    and each device's newest for good)."""

    __tablename__ = "device_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    report: Mapped[dict[str, Any]]


class DeviceServing(Base):
    """What a device's last report says it serves: one row per model and slot
    (``active`` or ``candidate``), so ``/metrics`` counts with a GROUP BY."""

    __tablename__ = "device_serving"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    slot: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))


# 64-bit ids on PostgreSQL; SQLite's rowid alias must be spelled INTEGER.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class TelemetryRecord(Base):
    """One telemetry record (window, event or a newer kind) as a device sent it (issue 7).

    Identity ``(device_id, buffer_id, seq)`` is unique: a replayed record is never stored
    twice. ``device_at`` is the device's time (a window's ``closed_at``, an event's
    ``at``), ``received_at`` the hub's; ``body`` is the record's JSON, unknown fields kept.
    ``site`` is the device's site when the record arrived.
    """

    __tablename__ = "telemetry_records"
    __table_args__ = (
        UniqueConstraint("device_id", "buffer_id", "seq", name="uq_telemetry_records_identity"),
        Index("ix_telemetry_records_model_time", "model", "device_at"),
        Index("ix_telemetry_records_device_recent", "device_id", "id"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    buffer_id: Mapped[str] = mapped_column(String(256))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(256))
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    version: Mapped[str | None] = mapped_column(String(256), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rollout_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    site: Mapped[str] = mapped_column(String(128))
    device_at: Mapped[datetime | None] = mapped_column(nullable=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    body: Mapped[str] = mapped_column(Text)


class TelemetryRollup(Base):
    """Windows of one hour merged exactly (``wire.merge_windows``), per
    ``(hour, model, version, role, site, rollout_id)`` (``rollout_id`` ``""`` for none).

    ``body`` is :meth:`WindowTotals.to_record` as JSON; ``device_ids`` the JSON list of
    the devices whose windows it holds (for an exact device count).
    """

    __tablename__ = "telemetry_rollups"
    __table_args__ = (
        UniqueConstraint(
            "hour",
            "model",
            "version",
            "role",
            "site",
            "rollout_id",
            name="uq_telemetry_rollups_key",
        ),
        Index("ix_telemetry_rollups_model_hour", "model", "hour"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    hour: Mapped[datetime]
    model: Mapped[str] = mapped_column(String(256))
    version: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    site: Mapped[str] = mapped_column(String(128))
    rollout_id: Mapped[str] = mapped_column(String(256))
    windows: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)
    device_ids: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class DeviceTelemetry(Base):
    """Per device: the state of its telemetry stream as of its last batch."""

    __tablename__ = "device_telemetry"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    buffer_id: Mapped[str] = mapped_column(String(256))
    highest_seq: Mapped[int] = mapped_column(BigInteger)
    last_at: Mapped[datetime]
    sent_at: Mapped[datetime]
    newest_closed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    clock_skew_s: Mapped[float] = mapped_column(Float)
    skew_flagged: Mapped[bool] = mapped_column(Boolean)
    buffered: Mapped[int] = mapped_column(BigInteger)
    evicted_total: Mapped[int] = mapped_column(BigInteger)


class HubEvent(Base):
    """One event in the hub's outbox (issue 9): ``kind`` (e.g. ``drift.state_changed``),
    ``subject`` (what it is about, e.g. ``model/site``), ``payload`` its JSON. Written in
    the transaction of the change that caused it (:func:`modelfleet.hub.events.record_event`);
    ids only grow, so a subscriber resumes after the last id it delivered.
    """

    __tablename__ = "hub_events"
    __table_args__ = (Index("ix_hub_events_kind_id", "kind", "id"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(512))
    payload: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


# --- issue 9: drift-hub ---


class DriftRollup(Base):
    """Drift counts of one hour merged exactly at ingest (ADR 0019), per
    ``(model, version, site, hour)``: the windows' ``profile`` fields merged with
    :func:`~modelfleet.monitoring.profile_counts.merge_wire`, stored as the merged
    window's wire form (``body``, JSON; sketches base64 while every window had them).
    ``digest`` is the reference profile's; ``rows`` the input rows counted.
    """

    __tablename__ = "drift_rollups"
    __table_args__ = (
        UniqueConstraint("model", "version", "site", "hour", name="uq_drift_rollups_key"),
        Index("ix_drift_rollups_hour", "hour"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(256))
    version: Mapped[str] = mapped_column(String(256))
    site: Mapped[str] = mapped_column(String(128))
    hour: Mapped[datetime]
    digest: Mapped[str] = mapped_column(String(128))
    windows: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class DriftStateRow(Base):
    """The sequential drift state of a model at a site (ADR 0019): the CUSUM of
    :mod:`modelfleet.monitoring.sequential` stepped once per closed hour, ``period`` the
    start of the last hour stepped (None before the first), ``version`` the version whose
    windows it reads (a new version starts the state afresh)."""

    __tablename__ = "drift_states"

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    site: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))
    statistic: Mapped[float] = mapped_column(Float)
    windows: Mapped[int] = mapped_column(BigInteger)
    skipped: Mapped[int] = mapped_column(BigInteger)
    drift_windows: Mapped[int] = mapped_column(BigInteger)
    last_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_rows: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[datetime | None] = mapped_column(nullable=True)
    changed_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class OverrideRollup(Base):
    """Operator overrides of one hour summed exactly at ingest (ADR 0040), per
    ``(model, version, site, hour)`` of the windows' device-time ``closed_at``: the
    windows' ``overrides`` counters added (``windows`` the windows with a judged answer)."""

    __tablename__ = "override_rollups"
    __table_args__ = (
        UniqueConstraint("model", "version", "site", "hour", name="uq_override_rollups_key"),
        Index("ix_override_rollups_hour", "hour"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(256))
    version: Mapped[str] = mapped_column(String(256))
    site: Mapped[str] = mapped_column(String(128))
    hour: Mapped[datetime]
    windows: Mapped[int] = mapped_column(BigInteger)
    overridden: Mapped[int] = mapped_column(BigInteger)
    confirmed: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class OverrideStateRow(Base):
    """The sequential override-rate state of a model at a site (ADR 0040): the CUSUM of
    :mod:`modelfleet.monitoring.sequential` on each closed hour's excess override rate of
    ``version`` over the baseline frozen when the version's state started; ``period`` the
    start of the last hour stepped (None before the first)."""

    __tablename__ = "override_states"

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    site: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))
    statistic: Mapped[float] = mapped_column(Float)
    hours: Mapped[int] = mapped_column(BigInteger)
    skipped: Mapped[int] = mapped_column(BigInteger)
    high_hours: Mapped[int] = mapped_column(BigInteger)
    last_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_excess: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_judged: Mapped[int] = mapped_column(BigInteger)
    baseline_rate: Mapped[float] = mapped_column(Float)
    baseline_source: Mapped[str] = mapped_column(String(32))
    baseline_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    baseline_judged: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[datetime | None] = mapped_column(nullable=True)
    changed_at: Mapped[datetime]
    updated_at: Mapped[datetime]


# --- issue 9: review ---


class ReviewSample(Base):
    """One sampled request of a suspect window, as a device sent it (issue 9, ADR 0020).

    Stored once per ``sample_id`` (the device's; ingest itself is exactly-once per
    ``(device_id, buffer_id, seq)``). ``status`` is ``pending`` until a label is imported,
    then ``labelled``. ``reasons`` the window's suspect reasons, comma-separated; ``at`` the
    window's device-time close; ``body`` the sample's JSON (inputs, outputs, request id).
    """

    __tablename__ = "review_samples"
    __table_args__ = (
        UniqueConstraint("sample_id", name="uq_review_samples_sample_id"),
        Index("ix_review_samples_model_status", "model", "status", "id"),
        Index("ix_review_samples_at", "at"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    sample_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str] = mapped_column(String(256))
    model: Mapped[str] = mapped_column(String(256))
    version: Mapped[str] = mapped_column(String(256))
    site: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[str] = mapped_column(String(128))
    anomaly_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    at: Mapped[datetime]
    received_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)


class ReviewLabel(Base):
    """The label a human gave one review sample (imported later; the latest import wins)."""

    __tablename__ = "review_labels"

    sample_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    label: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(32))
    imported_at: Mapped[datetime]


# --- end issue 9: review ---


# --- issue 9: webhooks ---


class WebhookSubscription(Base):
    """A webhook subscription (issue 9, ADR 0021): where to POST the hub's events.

    ``kinds`` is a JSON list of event kinds (empty: every kind); ``secret`` the HMAC key
    (kept as given: signing needs it; shown to the operator only when created);
    ``cursor`` the id of the last hub event queued for it (events after it are queued
    next). A new subscription starts at the newest event: it hears what happens next.
    """

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(String(2048))
    kinds: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(256))
    enabled: Mapped[bool] = mapped_column(Boolean)
    description: Mapped[str] = mapped_column(String(512))
    cursor: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(256))


class WebhookDelivery(Base):
    """One event to deliver to one subscription: its state (``pending`` until it is
    ``delivered`` or, after the last attempt, ``dead``), attempts so far, when the next
    attempt is due and the last attempt's outcome. Unique per (subscription, event)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("hub_events.id"))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime]


class WebhookAttempt(Base):
    """The delivery log: one row per attempt (when, HTTP status or None, error, time taken)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)


# --- issue 10: approvals ---


class ReleaseKey(Base):
    """A public release key the hub knows (issue 10, ADR 0027); its private half stays
    with its approver. ``key`` is the securesystemslib key dict."""

    __tablename__ = "release_keys"

    keyid: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[dict[str, Any]]
    label: Mapped[str] = mapped_column(String(256))
    added_at: Mapped[datetime]
    added_by: Mapped[str] = mapped_column(String(256))


class ReleaseRequest(Base):
    """A package version that needs release signatures before the catalog lists it.

    ``signed`` holds the canonical bytes approvers sign (fixed when the request opens);
    ``state`` is ``pending``, ``approved`` (``keyids`` and ``threshold`` are then the
    delegation the catalog signs) or ``revoked``. One per (model, version).
    """

    __tablename__ = "release_requests"
    __table_args__ = (UniqueConstraint("model", "version", name="uq_release_requests_model"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    signed: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16))
    keyids: Mapped[list[Any]]
    threshold: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    decided_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ReleaseSignature(Base):
    """One approver's signature over a request's ``signed`` bytes (verified when posted)."""

    __tablename__ = "release_signatures"
    __table_args__ = (
        UniqueConstraint("request_id", "keyid", name="uq_release_signatures_request_id"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("release_requests.id"))
    keyid: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(1024))
    actor: Mapped[str] = mapped_column(String(256))
    at: Mapped[datetime]


# --- end issue 10: approvals ---


# --- issue 10: credentials ---


class DeviceCredential(Base):
    """A device's bearer credential (issue 10, ADR 0026): only its SHA-256 is stored; the
    check-in finds it, its device's stored report and director versions in one indexed
    query (``secret_sha256`` is unique)."""

    __tablename__ = "device_credentials"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(256))
    not_after: Mapped[datetime]
    grace_until: Mapped[datetime | None] = mapped_column(nullable=True)
    replaced_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_reason: Mapped[str] = mapped_column(String(256), default="")


class BootstrapToken(Base):
    """A one-time enrolment token for one device id (issue 10): only its SHA-256 is kept;
    ``used_at`` is set by the one exchange that may succeed."""

    __tablename__ = "bootstrap_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    site: Mapped[str] = mapped_column(String(128), default="")
    tags: Mapped[list[Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)


class DeviceDecommission(Base):
    """A decommissioned device (issue 10): no credential, no assignment, no desired state;
    deploys and rollouts skip it."""

    __tablename__ = "device_decommissions"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    at: Mapped[datetime]
    by: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(String(512), default="")


# --- end issue 10: credentials ---


class DeviceRollbackEvent(Base):
    """A rollback a device reported (issue 6 contract 2), stored so it applies at most once.

    ``applied`` is False for a stale event: the hub had moved on when it arrived.
    """

    __tablename__ = "device_rollback_events"
    __table_args__ = (
        UniqueConstraint("device_id", "event_id", name="uq_device_rollback_events_event"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    event_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[int] = mapped_column(BigInteger)
    to_version: Mapped[int] = mapped_column(BigInteger)
    applied: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime]


class TufRoleVersion(Base):
    """The highest version of one TUF role ever published (ADR 0007, defect 14)."""

    __tablename__ = "tuf_role_versions"

    repo: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class DirectorDevice(Base):
    """One device's director repository (issue 8, ADR 0014): the desired state staged for
    it, and the signed per-device targets, snapshot and timestamp served from here.

    ``staged`` is written with the change (``Director.stage``) and ``dirty`` set; the
    signing after the commit (``Director.publish``) fills the signed columns and clears
    ``dirty`` in one transaction. Versions only grow: a row is never deleted (a
    decommissioned device keeps its row with no target listed).
    """

    __tablename__ = "director_devices"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    dirty: Mapped[bool] = mapped_column(Boolean, index=True)
    staged: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    staged_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    listed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    listed_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    targets_version: Mapped[int] = mapped_column(BigInteger)
    snapshot_version: Mapped[int] = mapped_column(BigInteger)
    timestamp_version: Mapped[int] = mapped_column(BigInteger)
    targets_expires: Mapped[datetime | None] = mapped_column(nullable=True)
    snapshot_expires: Mapped[datetime | None] = mapped_column(nullable=True)
    timestamp_expires: Mapped[datetime | None] = mapped_column(nullable=True)
    targets_json: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    snapshot_json: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    timestamp_json: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    signed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    resign_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    """When the first of the signed roles is due for re-signing (upkeep looks here)."""
    signed_keyid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The director key that signed the roles (None: before migration 0014); rows signed
    by a key other than the current one are re-signed (issue 10, ADR 0039)."""


class AuditEntry(Base):
    """One link of the hash-chained audit log (see :mod:`modelfleet.audit.log`)."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    ticket: Mapped[str | None] = mapped_column(String(128), nullable=True)
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_log_actor_seq", "actor", "seq"),
        Index("ix_audit_log_action_seq", "action", "seq"),
        Index("ix_audit_log_subject_seq", "subject", "seq"),
        Index("ix_audit_log_at", "at"),
    )


class AuditHead(Base):
    """The audit chain's signed head (one row, ``id`` 1), rewritten in the transaction of
    every append: the anchor that shows a truncated chain (ADR 0016)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    keyid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Rollout(Base):
    """A staged rollout of one model version (issue 8; see :mod:`modelfleet.hub.rollouts`).

    ``plan`` is ``RolloutPlan.to_dict()``; ``state``, ``stage``, ``stage_started_at``,
    ``streaks`` and ``reason`` are the state machine's ``Progress``; ``revision`` grows with
    every change of the row, so a writer that read an older one knows it lost a race.
    ``from_version`` is the control: the production most target devices ran at creation.
    ``stage_count`` is the cohort plan's (blast-radius overflow stages included).
    ``stable_since`` is when it reached its last stage below 100 % (or completed), for the
    safety lag of other rollouts of the same version.
    """

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_state", "state"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    plan: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(32))
    stage: Mapped[int] = mapped_column(Integer)
    stage_count: Mapped[int] = mapped_column(Integer)
    stage_started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    streaks: Mapped[dict[str, Any]]
    reason: Mapped[str] = mapped_column(Text, default="")
    ticket: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    approved_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    stable_since: Mapped[datetime | None] = mapped_column(nullable=True)
    revision: Mapped[int] = mapped_column(Integer)


class RolloutDevice(Base):
    """One target device of a rollout: the first stage it is in (its cohort) and where it
    stands: ``waiting`` (its stage has not started), ``assigned`` (the version is assigned),
    ``rolled_back`` (the rollout, or the device's own guard, took it back)."""

    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_device_id", "device_id"),)

    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    stage_of: Mapped[int] = mapped_column(Integer)
    assigned_at: Mapped[datetime | None] = mapped_column(nullable=True)
    state: Mapped[str] = mapped_column(String(16))


class GateEvaluation(Base):
    """One evaluation of a stage's gates with its evidence: ``Evaluation.to_dict()``, the
    merged statistics of the stage and the control group it was computed from, and the
    streaks it started from (so it can be recomputed exactly)."""

    __tablename__ = "gate_evaluations"
    __table_args__ = (Index("ix_gate_evaluations_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"))
    stage: Mapped[int] = mapped_column(Integer)
    evaluated_at: Mapped[datetime]
    verdict: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[dict[str, Any]]


class RolloutTransition(Base):
    """One transition of a rollout (the view's history; each also has its audit entry)."""

    __tablename__ = "rollout_transitions"
    __table_args__ = (Index("ix_rollout_transitions_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    stage: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    ticket: Mapped[str | None] = mapped_column(String(128), nullable=True)


# --- issue 11: return channel ---


class DeviceKey(Base):
    """A device's Ed25519 public key (issue 11, ADR 0029): it verifies the envelopes of
    return bundles. Learnt over the device's token or from an admin, never from a bundle."""

    __tablename__ = "device_keys"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    keyid: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime]
    added_by: Mapped[str] = mapped_column(String(256))


class ReturnBundle(Base):
    """A return bundle ingested (issue 11): its digest makes a second ingest of the same
    file a no-op; ``summary`` is what the first ingest stored."""

    __tablename__ = "return_bundles"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime]
    ingested_at: Mapped[datetime]
    ingested_by: Mapped[str] = mapped_column(String(256))
    summary: Mapped[dict[str, Any]]


# --- end issue 11: return channel ---


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(database_url: str) -> Engine:
    """Create an engine; SQLite gets WAL mode, foreign keys and a busy timeout.

    Raises:
        ConfigError: the URL is malformed or names a driver that is not installed.
    """
    try:
        if database_url.startswith("sqlite"):
            engine = create_engine(
                database_url, connect_args={"check_same_thread": False, "timeout": 30.0}
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            path = engine.url.database
            if path and path != ":memory:" and not path.startswith("file:"):
                _create_private_file(Path(path))
            return engine
        return create_engine(database_url, pool_pre_ping=True)
    except (ArgumentError, ImportError, OSError) as e:
        raise ConfigError(f"unusable database URL: {e}") from e


def _create_private_file(path: Path) -> None:
    """Create the SQLite file mode 0600 if missing: SQLite gives its ``-wal`` and ``-shm``
    files the mode of the database file, and the database holds token hashes (defect 5)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def migrate(database_url: str | Engine, revision: str = "head") -> None:
    """Bring the database schema up to ``revision`` with the packaged Alembic scripts.

    Raises:
        StorageError: the database cannot be reached or a migration fails.
    """
    from alembic import command
    from alembic.config import Config

    engine = make_engine(database_url) if isinstance(database_url, str) else database_url
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas starting together migrate one after the other.
                locks.xact_lock(connection, locks.MIGRATE)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    except SQLAlchemyError as e:
        raise StorageError(f"database migration failed: {e}") from e
    finally:
        if isinstance(database_url, str):
            engine.dispose()
