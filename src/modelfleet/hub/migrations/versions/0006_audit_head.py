"""Audit chain anchoring (issue 8, ADR 0016): the chain's head record and filter indexes.

``audit_head`` holds one row: the seq and hash of the last entry, rewritten in the
transaction of every append and signed with the hub's audit key. An existing chain gets its
head from its last entry here, unsigned: the hub signs it once at its next start if no
checkpoint outside the database says otherwise (:mod:`modelfleet.hub.audit_anchor`).
The hash rule of the entries is unchanged, so existing chains keep verifying.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from modelfleet.hub.db import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_audit_log_actor_seq": ["actor", "seq"],
    "ix_audit_log_action_seq": ["action", "seq"],
    "ix_audit_log_subject_seq": ["subject", "seq"],
    "ix_audit_log_at": ["at"],
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "audit_log", columns)
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("keyid", sa.String(64), nullable=True),
        sa.Column("signature", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )
    # The head of an existing chain is its last entry (trusted on upgrade; ADR 0016).
    op.execute(
        "INSERT INTO audit_head (id, seq, hash, at) "
        "SELECT 1, seq, hash, at FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)"
    )


def downgrade() -> None:
    op.drop_table("audit_head")
    for name in _INDEXES:
        op.drop_index(name, table_name="audit_log")
