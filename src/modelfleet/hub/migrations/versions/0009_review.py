"""Review queue (issue 9, branch review): sampled requests of suspect windows and the labels
imported for them (ADR 0020).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "review_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sample_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(256), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("reasons", sa.String(128), nullable=False),
        sa.Column("anomaly_score", sa.Float(), nullable=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_review_samples"),
        sa.UniqueConstraint("sample_id", name="uq_review_samples_sample_id"),
    )
    op.create_index("ix_review_samples_model_status", "review_samples", ["model", "status", "id"])
    op.create_index("ix_review_samples_at", "review_samples", ["at"])
    op.create_table(
        "review_labels",
        sa.Column("sample_id", sa.String(128), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("imported_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sample_id", name="pk_review_labels"),
    )


def downgrade() -> None:
    op.drop_table("review_labels")
    op.drop_index("ix_review_samples_at", table_name="review_samples")
    op.drop_index("ix_review_samples_model_status", table_name="review_samples")
    op.drop_table("review_samples")
