"""Director key rotation (issue 10, ADR 0039): the key id each device's director
repository was last signed with, so rows signed by a replaced key are found and re-signed.

Rows from before are NULL: they count as signed by another key and are re-signed once,
at the hub's first start after the upgrade.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("director_devices") as batch:
        batch.add_column(sa.Column("signed_keyid", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("director_devices") as batch:
        batch.drop_column("signed_keyid")
