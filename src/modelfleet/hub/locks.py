"""Every PostgreSQL advisory-lock key the hub takes, in one place (issue 6 contract 9).

Hub replicas sharing one PostgreSQL database serialise with transaction-scoped advisory
locks (``pg_advisory_xact_lock``: released at commit or rollback). A key is any 64-bit
constant every replica agrees on; keeping them here keeps them distinct. On SQLite (one
writer per file anyway) taking a lock does nothing.
"""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

__all__ = [
    "AUDIT",
    "MIGRATE",
    "RETENTION",
    "ROLLOUT_CONTROLLER",
    "TUF_COUNTERS",
    "WRITE",
    "xact_lock",
]

WRITE = 0x6D66_6875_6277
"""Every state-changing transaction: version numbers, serials and the audit chain stay linear."""

MIGRATE = 0x6D66_6875_626D
"""Schema migrations: replicas starting together migrate one after the other."""

AUDIT = 0x6D66_6175_6469
"""Appending to the audit chain (also taken inside :data:`WRITE` transactions)."""

TUF_COUNTERS = 0x6D66_7475_6676
"""Raising the published TUF role-version counters (ADR 0007)."""

RETENTION = 0x6D66_7465_6C72
"""Telemetry retention: one replica at a time rolls raw windows up (issue 7, ADR 0011)."""

ROLLOUT_CONTROLLER = 0x6D66_726F_6C6C
"""The rollout controller's lease (issue 8): a *session* advisory lock held by the one hub
process that runs the controller; the others try again each interval."""


def xact_lock(bind: Session | Connection, key: int) -> None:
    """Take advisory lock ``key`` until the end of the current transaction (PostgreSQL only).

    Args:
        bind: a session or connection inside an open transaction.
        key: one of this module's constants.
    """
    dialect = bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect
    if dialect.name == "postgresql":
        bind.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
