"""The audit chain's rows in the hub database: :class:`modelfleet.audit.log.AuditStore`
over the ``audit_log`` table, bound to one session (its caller's transaction)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.audit.log import AuditRecord
from modelfleet.hub import db, locks

__all__ = ["SqlAuditStore"]


class SqlAuditStore:
    """The ``audit_log`` table seen through one session.

    :meth:`last` takes the :data:`~modelfleet.hub.locks.AUDIT` advisory lock on
    PostgreSQL, so appenders on several replicas chain one after the other.
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def last(self) -> AuditRecord | None:
        locks.xact_lock(self.session, locks.AUDIT)
        row = self.session.scalars(
            select(db.AuditEntry).order_by(db.AuditEntry.seq.desc()).limit(1)
        ).first()
        return AuditRecord.of(row) if row is not None else None

    def add(self, record: AuditRecord) -> None:
        self.session.add(
            db.AuditEntry(
                seq=record.seq,
                at=record.at,
                actor=record.actor,
                action=record.action,
                subject=record.subject,
                ticket=record.ticket,
                details=record.details,
                prev_hash=record.prev_hash,
                hash=record.hash,
            )
        )
        self.session.flush()

    def page(self, after_seq: int, limit: int) -> list[AuditRecord]:
        rows = self.session.scalars(
            select(db.AuditEntry)
            .where(db.AuditEntry.seq > after_seq)
            .order_by(db.AuditEntry.seq)
            .limit(limit)
        )
        return [AuditRecord.of(r) for r in rows]
