"""The audit chain's rows in the hub database: :class:`modelfleet.audit.log.AuditStore`
over the ``audit_log`` table and its signed head in ``audit_head``, bound to one session
(its caller's transaction)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from modelfleet.audit.checkpoint import Checkpoint, CheckpointSigner
from modelfleet.audit.log import AuditQuery, AuditRecord
from modelfleet.hub import db, locks

__all__ = ["SqlAuditStore"]

_HEAD_ID = 1


class SqlAuditStore:
    """The ``audit_log`` table seen through one session.

    :meth:`last` takes the :data:`~modelfleet.hub.locks.AUDIT` advisory lock on
    PostgreSQL, so appenders on several replicas chain one after the other. :meth:`add`
    rewrites the head row in the same transaction, signed with ``signer`` when given
    (ADR 0016): the rows and their anchor commit together or not at all.

    Args:
        session: the caller's session (its transaction).
        signer: the hub's audit key; None leaves the head unsigned.
    """

    def __init__(self, session: Session, signer: CheckpointSigner | None = None) -> None:
        self.session = session
        self.signer = signer

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
        self.set_head(Checkpoint(record.seq, record.hash, record.at))
        self.session.flush()

    def set_head(self, head: Checkpoint) -> Checkpoint:
        """Write ``head`` as the head row, signed when this store has a signer.

        Returns:
            What was written.
        """
        if self.signer is not None:
            head = self.signer.sign(head)
        row = self.session.get(db.AuditHead, _HEAD_ID)
        if row is None:
            row = db.AuditHead(id=_HEAD_ID)
            self.session.add(row)
        row.seq, row.hash, row.at = head.seq, head.hash, head.at
        row.keyid, row.signature = head.keyid or None, head.signature or None
        return head

    def head(self) -> Checkpoint | None:
        """The head row, or None when there is none."""
        row = self.session.get(db.AuditHead, _HEAD_ID)
        if row is None:
            return None
        return Checkpoint(row.seq, row.hash, row.at, row.keyid or "", row.signature or "")

    def page(self, after_seq: int, limit: int) -> list[AuditRecord]:
        rows = self.session.scalars(
            select(db.AuditEntry)
            .where(db.AuditEntry.seq > after_seq)
            .order_by(db.AuditEntry.seq)
            .limit(limit)
        )
        return [AuditRecord.of(r) for r in rows]

    def query(self, query: AuditQuery) -> list[AuditRecord]:
        e = db.AuditEntry
        stmt = select(e)
        where: list[ColumnElement[bool]] = []
        if query.after_seq is not None:
            where.append(e.seq > query.after_seq)
        if query.before_seq is not None:
            where.append(e.seq < query.before_seq)
        if query.since is not None:
            where.append(e.at >= query.since)
        if query.actor is not None:
            where.append(e.actor == query.actor)
        if query.action is not None:
            where.append(e.action == query.action)
        if query.subject is not None:
            below = e.subject.startswith(query.subject + "/", autoescape=True)
            where.append(or_(e.subject == query.subject, below))
        order = e.seq.desc() if query.newest_first else e.seq.asc()
        rows = self.session.scalars(stmt.where(*where).order_by(order).limit(query.limit))
        return [AuditRecord.of(r) for r in rows]
