"""Per-device director repositories (issue 8, ADR 0014): staged desired states and the
signed per-device targets, snapshot and timestamp, served from the database.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "director_devices",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("dirty", sa.Boolean(), nullable=False),
        sa.Column("staged", sa.LargeBinary(), nullable=True),
        sa.Column("staged_sha256", sa.String(64), nullable=True),
        sa.Column("listed", sa.LargeBinary(), nullable=True),
        sa.Column("listed_sha256", sa.String(64), nullable=True),
        sa.Column("targets_version", sa.BigInteger(), nullable=False),
        sa.Column("snapshot_version", sa.BigInteger(), nullable=False),
        sa.Column("timestamp_version", sa.BigInteger(), nullable=False),
        sa.Column("targets_expires", UTCDateTime(), nullable=True),
        sa.Column("snapshot_expires", UTCDateTime(), nullable=True),
        sa.Column("timestamp_expires", UTCDateTime(), nullable=True),
        sa.Column("targets_json", sa.LargeBinary(), nullable=True),
        sa.Column("snapshot_json", sa.LargeBinary(), nullable=True),
        sa.Column("timestamp_json", sa.LargeBinary(), nullable=True),
        sa.Column("signed_at", UTCDateTime(), nullable=True),
        sa.Column("resign_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name="pk_director_devices"),
    )
    op.create_index("ix_director_devices_dirty", "director_devices", ["dirty"])
    op.create_index("ix_director_devices_resign_at", "director_devices", ["resign_at"])


def downgrade() -> None:
    op.drop_index("ix_director_devices_resign_at", table_name="director_devices")
    op.drop_index("ix_director_devices_dirty", table_name="director_devices")
    op.drop_table("director_devices")
