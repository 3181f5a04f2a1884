"""Device credentials (issue 10, ADR 0026): per-device credentials (hashes only), one-time
bootstrap tokens, decommissioned devices.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_credentials",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False),
        sa.Column("grace_until", UTCDateTime(), nullable=True),
        sa.Column("replaced_by", sa.String(32), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_reason", sa.String(256), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_credentials_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_device_credentials"),
        sa.UniqueConstraint("secret_sha256", name="uq_device_credentials_secret_sha256"),
    )
    op.create_index("ix_device_credentials_device_id", "device_credentials", ["device_id"])
    op.create_table(
        "bootstrap_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bootstrap_tokens"),
        sa.UniqueConstraint("token_sha256", name="uq_bootstrap_tokens_token_sha256"),
    )
    op.create_index("ix_bootstrap_tokens_device_id", "bootstrap_tokens", ["device_id"])
    op.create_table(
        "device_decommissions",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("by", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_decommissions_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_decommissions"),
    )


def downgrade() -> None:
    op.drop_table("device_decommissions")
    op.drop_index("ix_bootstrap_tokens_device_id", table_name="bootstrap_tokens")
    op.drop_table("bootstrap_tokens")
    op.drop_index("ix_device_credentials_device_id", table_name="device_credentials")
    op.drop_table("device_credentials")
