"""Hub events outbox (issue 9): what happened that a subscriber (a webhook, a training
pipeline) may want to hear, written in the transaction of the change that caused it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hub_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hub_events"),
    )
    op.create_index("ix_hub_events_kind_id", "hub_events", ["kind", "id"])


def downgrade() -> None:
    op.drop_index("ix_hub_events_kind_id", table_name="hub_events")
    op.drop_table("hub_events")
