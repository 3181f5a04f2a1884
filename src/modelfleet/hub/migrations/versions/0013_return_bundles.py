"""Return channel (issue 11, ADR 0029): each device's Ed25519 public key, and the digests
of the return bundles already ingested (a second ingest of the same file changes nothing).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_keys",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("keyid", sa.String(64), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.Column("added_by", sa.String(256), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_keys_device_id_devices"
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_keys"),
    )
    op.create_table(
        "return_bundles",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("ingested_at", UTCDateTime(), nullable=False),
        sa.Column("ingested_by", sa.String(256), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_return_bundles"),
    )


def downgrade() -> None:
    op.drop_table("return_bundles")
    op.drop_table("device_keys")
