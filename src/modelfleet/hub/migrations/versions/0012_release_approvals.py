"""Release approvals (issue 10, ADR 0027): release keys, release requests (the canonical
bytes approvers sign and their state) and the release signatures posted for them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "release_keys",
        sa.Column("keyid", sa.String(64), nullable=False),
        sa.Column("key", sa.JSON(), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.Column("added_by", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("keyid", name="pk_release_keys"),
    )
    op.create_table(
        "release_requests",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("keyids", sa.JSON(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_release_requests"),
        sa.UniqueConstraint("model", "version", name="uq_release_requests_model"),
    )
    op.create_table(
        "release_signatures",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("request_id", _BigId, nullable=False),
        sa.Column("keyid", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(1024), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["release_requests.id"],
            name="fk_release_signatures_request_id_release_requests",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_release_signatures"),
        sa.UniqueConstraint("request_id", "keyid", name="uq_release_signatures_request_id"),
    )


def downgrade() -> None:
    op.drop_table("release_signatures")
    op.drop_table("release_requests")
    op.drop_table("release_keys")
