"""Device rollback events applied once, and the published TUF role-version counters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_rollback_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("from_version", sa.BigInteger(), nullable=False),
        sa.Column("to_version", sa.BigInteger(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_rollback_events_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_device_rollback_events"),
        sa.UniqueConstraint("device_id", "event_id", name="uq_device_rollback_events_event"),
    )
    op.create_index("ix_device_rollback_events_device_id", "device_rollback_events", ["device_id"])
    op.create_table(
        "tuf_role_versions",
        sa.Column("repo", sa.String(32), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("repo", "role", name="pk_tuf_role_versions"),
    )


def downgrade() -> None:
    op.drop_table("tuf_role_versions")
    op.drop_index("ix_device_rollback_events_device_id", table_name="device_rollback_events")
    op.drop_table("device_rollback_events")
