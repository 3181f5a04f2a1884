"""The hub's audit operations: pages with filters, verification against the anchors,
the signed head for exports, and keeping the home's checkpoint file current (ADR 0016).

The chain is read in pages outside any long transaction, so entries appended while it is
read must not look like tampering: the head is read first and the walk stops at its seq;
entries after it are then checked against a head read again afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select

from modelfleet.audit.checkpoint import Checkpoint, verify_checkpoint
from modelfleet.audit.log import AuditQuery, AuditRecord, list_entries
from modelfleet.audit.verify import ChainProblem, ChainReport, ProblemKind, check_chain
from modelfleet.errors import InvalidInputError, StorageError
from modelfleet.hub import db
from modelfleet.hub._values import JSONDict
from modelfleet.hub.audit_anchor import WitnessFile
from modelfleet.hub.context import HubContext

__all__ = ["AuditChain"]

_BATCH = 1000


class AuditChain:
    """Reads and checks of the audit chain.

    Args:
        ctx: the hub's sessions, config (``audit_page_limit``) and audit key.
        witness: the checkpoint file in the hub's home.
    """

    def __init__(self, ctx: HubContext, witness: WitnessFile) -> None:
        self._ctx = ctx
        self._witness = witness

    # -- reading -------------------------------------------------------------------------

    def entries(self, after_seq: int = 0, limit: int = 100) -> list[JSONDict]:
        """See ``HubService.audit``."""
        limit = self._cap(limit)
        with self._ctx.read() as s:
            return [r.to_dict() for r in list_entries(self._ctx.audit_store(s), after_seq, limit)]

    def page(self, query: AuditQuery) -> JSONDict:
        """See ``HubService.audit_page``."""
        if query.after_seq is not None and query.before_seq is not None:
            raise InvalidInputError("give before_seq or after_seq, not both")
        if query.since is not None and query.since.tzinfo is None:
            raise InvalidInputError("since needs a time zone, e.g. 2026-12-02T10:00:00Z")
        limit = self._cap(query.limit)
        q = AuditQuery(
            limit + 1,  # one more tells whether another page follows
            query.before_seq,
            query.after_seq,
            query.since,
            query.subject or None,
            query.actor or None,
            query.action or None,
        )
        with self._ctx.read() as s:
            rows = self._ctx.audit_store(s).query(q)
        more, rows = len(rows) > limit, rows[:limit]
        cursor = rows[-1].seq if more and rows else None
        return {
            "entries": [r.to_dict() for r in rows],
            "next_before_seq": cursor if q.newest_first else None,
            "next_after_seq": None if q.newest_first else cursor,
        }

    def _cap(self, limit: int) -> int:
        return max(1, min(int(limit), self._ctx.config.audit_page_limit))

    # -- anchors -------------------------------------------------------------------------

    def anchor(self) -> JSONDict:
        """See ``HubService.audit_anchor``."""
        signer = self._ctx.audit_signer
        with self._ctx.read() as s:
            head = self._ctx.audit_store(s).head()
        return {
            "checkpoint": head.to_dict() if head else None,
            "public_key": (
                {"keytype": "ed25519", "keyid": signer.keyid, "public": signer.public_hex}
                if signer
                else None
            ),
            "witness": self._witness_dict(),
        }

    def _witness_dict(self) -> dict[str, Any] | None:
        try:
            w = self._witness.read()
        except StorageError:
            return None
        return w.to_dict() if w else None

    def adopt(self) -> None:
        """Sign an unsigned head once, at start-up (ADR 0016: trust on upgrade).

        A chain from before migration 0006 has an unsigned head; the hub signs it when
        it matches the last entry and no checkpoint file exists yet (a hub that ever
        signed here leaves one, so an unsigned head later is reported, not re-signed).
        """
        signer = self._ctx.audit_signer
        if signer is None or self._witness.exists():
            return
        with self._ctx.write() as s:
            store = self._ctx.audit_store(s)
            last, head = store.last(), store.head()
            if last is None or (head is not None and head.signature):
                signed = head
            elif head is None or (head.seq, head.hash) == (last.seq, last.hash):
                signed = store.set_head(Checkpoint(last.seq, last.hash, last.at))
            else:
                return  # the head contradicts the rows: verify reports it
        if signed is not None and verify_checkpoint(signed, signer.public) is None:
            self._witness.advance(signed)

    def advance_witness(self) -> bool:
        """Move the home's checkpoint file to the head if it is newer and validly signed
        (the upkeep round). An older head than the file's is left for verify to report.

        Returns:
            True when the file moved.
        """
        signer = self._ctx.audit_signer
        if signer is None:
            return False
        with self._ctx.read() as s:
            head = self._ctx.audit_store(s).head()
        if head is None or verify_checkpoint(head, signer.public) is not None:
            return False
        try:
            return self._witness.advance(head)
        except StorageError:
            return False  # a malformed file is verify's finding, not upkeep's failure

    # -- verification --------------------------------------------------------------------

    def verify(self) -> JSONDict:
        """See ``HubService.audit_verify``."""
        signer = self._ctx.audit_signer
        public = signer.public if signer else None
        try:
            witness = self._witness.read()
        except StorageError as e:
            return self._report(ChainReport(0, 0, "", ChainProblem(0, ProblemKind.HEAD, str(e))))
        with self._ctx.read() as s:
            head = self._ctx.audit_store(s).head()
        upto = head.seq if head is not None else None
        report = check_chain(self._records(upto), head, public_key=public, witness=witness)
        if report.ok and head is not None:
            report = self._check_tail(report)
        if report.ok and head is not None and public is not None:
            self._witness.advance(head)
        return self._report(report, head)

    def _report(self, report: ChainReport, head: Checkpoint | None = None) -> JSONDict:
        out = report.to_dict()
        if head is not None:  # the recorded head, also when the rows fall short of it
            out["head"] = {"seq": head.seq, "hash": head.hash}
        signer = self._ctx.audit_signer
        out["keyid"] = signer.keyid if signer else None
        return out

    def _records(self, upto: int | None) -> Iterator[AuditRecord]:
        after = 0
        while True:
            with self._ctx.read() as s:
                page = self._ctx.audit_store(s).page(after, _BATCH)
            for r in page:
                if upto is not None and r.seq > upto:
                    return
                yield r
            if len(page) < _BATCH:
                return
            after = page[-1].seq

    def _check_tail(self, report: ChainReport) -> ChainReport:
        # The highest seq first, then the head: an append in between only raises the head.
        with self._ctx.read() as s:
            top = s.scalar(select(func.max(db.AuditEntry.seq))) or 0
            head = self._ctx.audit_store(s).head()
        head_seq = head.seq if head else 0
        if top > head_seq:
            return ChainReport(
                report.entries,
                report.last_seq,
                report.last_hash,
                ChainProblem(
                    head_seq + 1,
                    ProblemKind.INSERTED,
                    f"entries {head_seq + 1}-{top} come after the head (entry {head_seq})",
                ),
            )
        return report
