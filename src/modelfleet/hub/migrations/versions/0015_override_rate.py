"""The operator-override rate as a drift layer (issue 9, ADR 0040): hourly override
roll-ups summed at ingest per ``(model, version, site, hour)``, and the sequential
override-rate state per ``(model, site)``.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "override_rollups",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("hour", UTCDateTime(), nullable=False),
        sa.Column("windows", sa.BigInteger(), nullable=False),
        sa.Column("overridden", sa.BigInteger(), nullable=False),
        sa.Column("confirmed", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_override_rollups"),
        sa.UniqueConstraint("model", "version", "site", "hour", name="uq_override_rollups_key"),
    )
    op.create_index("ix_override_rollups_hour", "override_rollups", ["hour"])
    op.create_table(
        "override_states",
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("statistic", sa.Float(), nullable=False),
        sa.Column("hours", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("high_hours", sa.BigInteger(), nullable=False),
        sa.Column("last_rate", sa.Float(), nullable=True),
        sa.Column("last_excess", sa.Float(), nullable=True),
        sa.Column("last_judged", sa.BigInteger(), nullable=False),
        sa.Column("baseline_rate", sa.Float(), nullable=False),
        sa.Column("baseline_source", sa.String(32), nullable=False),
        sa.Column("baseline_version", sa.Integer(), nullable=True),
        sa.Column("baseline_judged", sa.BigInteger(), nullable=False),
        sa.Column("period", UTCDateTime(), nullable=True),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model", "site", name="pk_override_states"),
    )


def downgrade() -> None:
    op.drop_table("override_states")
    op.drop_index("ix_override_rollups_hour", table_name="override_rollups")
    op.drop_table("override_rollups")
