"""Drift at the hub (issue 9, ADR 0019): hourly drift roll-ups merged at ingest per
``(model, version, site, hour)``, and the sequential drift state per ``(model, site)``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drift_rollups",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("hour", UTCDateTime(), nullable=False),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("windows", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_drift_rollups"),
        sa.UniqueConstraint("model", "version", "site", "hour", name="uq_drift_rollups_key"),
    )
    op.create_index("ix_drift_rollups_hour", "drift_rollups", ["hour"])
    op.create_table(
        "drift_states",
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("statistic", sa.Float(), nullable=False),
        sa.Column("windows", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("drift_windows", sa.BigInteger(), nullable=False),
        sa.Column("last_score", sa.Float(), nullable=True),
        sa.Column("last_rows", sa.BigInteger(), nullable=False),
        sa.Column("period", UTCDateTime(), nullable=True),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model", "site", name="pk_drift_states"),
    )


def downgrade() -> None:
    op.drop_table("drift_states")
    op.drop_index("ix_drift_rollups_hour", table_name="drift_rollups")
    op.drop_table("drift_rollups")
