"""Telemetry (issue 7): raw records, hourly roll-ups, per-device stream state, what each
device serves (for ``/metrics``), and an index for the retention of device reports.

``device_serving`` is filled from each device's last report, so the gauge is right before
the next check-in.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub._reports import served_versions
from modelfleet.hub.db import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_index("ix_device_reports_received_at", "device_reports", ["received_at"])
    op.create_table(
        "device_serving",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("slot", sa.String(16), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_serving_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("device_id", "model", "slot", name="pk_device_serving"),
    )
    op.create_table(
        "telemetry_records",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("buffer_id", sa.String(256), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(256), nullable=False),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("version", sa.String(256), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("rollout_id", sa.String(256), nullable=True),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("device_at", UTCDateTime(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_telemetry_records_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_records"),
        sa.UniqueConstraint("device_id", "buffer_id", "seq", name="uq_telemetry_records_identity"),
    )
    op.create_index("ix_telemetry_records_model_time", "telemetry_records", ["model", "device_at"])
    op.create_index("ix_telemetry_records_device_recent", "telemetry_records", ["device_id", "id"])
    op.create_index("ix_telemetry_records_received_at", "telemetry_records", ["received_at"])
    op.create_table(
        "telemetry_rollups",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("hour", UTCDateTime(), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("rollout_id", sa.String(256), nullable=False),
        sa.Column("windows", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("device_ids", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry_rollups"),
        sa.UniqueConstraint(
            "hour",
            "model",
            "version",
            "role",
            "site",
            "rollout_id",
            name="uq_telemetry_rollups_key",
        ),
    )
    op.create_index("ix_telemetry_rollups_model_hour", "telemetry_rollups", ["model", "hour"])
    op.create_table(
        "device_telemetry",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("buffer_id", sa.String(256), nullable=False),
        sa.Column("highest_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("newest_closed_at", UTCDateTime(), nullable=True),
        sa.Column("clock_skew_s", sa.Float(), nullable=False),
        sa.Column("skew_flagged", sa.Boolean(), nullable=False),
        sa.Column("buffered", sa.BigInteger(), nullable=False),
        sa.Column("evicted_total", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_telemetry_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_telemetry"),
    )
    _fill_device_serving()


def _fill_device_serving() -> None:
    bind = op.get_bind()
    devices = sa.table("devices", sa.column("id"), sa.column("reported", sa.JSON()))
    serving = sa.table(
        "device_serving",
        sa.column("device_id"),
        sa.column("model"),
        sa.column("slot"),
        sa.column("version"),
    )
    rows = [
        {"device_id": device_id, "model": model, "slot": slot, "version": version}
        for device_id, reported in bind.execute(sa.select(devices.c.id, devices.c.reported))
        if isinstance(reported, dict)
        for model, slot, version in served_versions(reported)
    ]
    if rows:
        bind.execute(serving.insert(), rows)


def downgrade() -> None:
    op.drop_table("device_telemetry")
    op.drop_index("ix_telemetry_rollups_model_hour", table_name="telemetry_rollups")
    op.drop_table("telemetry_rollups")
    op.drop_index("ix_telemetry_records_received_at", table_name="telemetry_records")
    op.drop_index("ix_telemetry_records_device_recent", table_name="telemetry_records")
    op.drop_index("ix_telemetry_records_model_time", table_name="telemetry_records")
    op.drop_table("telemetry_records")
    op.drop_table("device_serving")
    op.drop_index("ix_device_reports_received_at", table_name="device_reports")
