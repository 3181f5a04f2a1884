"""Verify the audit chain against its anchors: edits, insertions, deletions, truncation.

The rows alone show an edit (an entry's hash no longer matches its fields), an insertion or
a replaced entry (a ``prev_hash`` that does not link) and a deletion in the middle (a gap in
``seq``). A chain cut at the end is still a valid chain, so :func:`check_chain` also takes

* ``head``: the signed head checkpoint the store rewrites with every append (ADR 0016). Fewer
  entries than it names is a truncation; more is an insertion at the end; its hash must be
  the last entry's, and its signature must verify when a key is given;
* ``witness``: a checkpoint kept outside the database (the hub's home, or an earlier export).
  The chain must still hold the entry it names with the same hash: this finds a database
  put back to an older, validly signed state (a replayed head).

Pure: it reads what it is given and returns a :class:`ChainReport`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelfleet.audit.checkpoint import Checkpoint, verify_checkpoint
from modelfleet.audit.log import GENESIS_HASH, AuditRecord, entry_hash

__all__ = ["ChainProblem", "ChainReport", "ProblemKind", "check_chain"]


class ProblemKind(StrEnum):
    """What is wrong with the chain, by the first place it shows."""

    EDITED = "edited"  # an entry's fields no longer hash to its hash
    INSERTED = "inserted"  # an entry that does not link to the one before, or after the head
    DELETED = "deleted"  # a gap in seq: entries are missing
    TRUNCATED = "truncated"  # the chain ends before its head (or the witness)
    HEAD = "head"  # the head is missing, unsigned, badly signed, or names another entry
    ROLLED_BACK = "rolled-back"  # an entry differs from the outside witness


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """The first problem found: at entry ``seq``, of ``kind``, with a sentence why."""

    seq: int
    kind: ProblemKind
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": str(self.kind), "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of a check: ``entries`` read, the last entry's ``(seq, hash)``."""

    entries: int
    last_seq: int
    last_hash: str
    problem: ChainProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": {"seq": self.last_seq, "hash": self.last_hash},
            "problem": self.problem.to_dict() if self.problem else None,
        }


def check_chain(
    records: Iterable[AuditRecord],
    head: Checkpoint | None,
    *,
    public_key: Ed25519PublicKey | None = None,
    witness: Checkpoint | None = None,
) -> ChainReport:
    """Check a chain given in ``seq`` order against its head and an outside witness.

    Args:
        records: every entry, oldest first (read lazily; stops at the first problem).
        head: the store's head checkpoint; None when the store has none.
        public_key: the audit key; when given, the head must carry its valid signature.
        witness: a checkpoint kept outside the store, or None.

    Returns:
        The report; ``problem`` is the first one found, entries first, then the head,
        then the witness.
    """
    expected, prev, count = 1, GENESIS_HASH, 0
    witness_hash: str | None = None

    def report(problem: ChainProblem | None) -> ChainReport:
        return ChainReport(count, expected - 1, prev, problem)

    for r in records:
        if r.seq > expected:
            missing = f"{expected}" if r.seq == expected + 1 else f"{expected}-{r.seq - 1}"
            return report(
                ChainProblem(
                    expected,
                    ProblemKind.DELETED,
                    f"entry {missing} missing: entry {expected - 1} is followed by {r.seq}",
                )
            )
        if r.seq < expected:
            return report(
                ChainProblem(
                    r.seq, ProblemKind.INSERTED, f"entry {r.seq} again after {expected - 1}"
                )
            )
        if r.hash != entry_hash(r):
            return report(
                ChainProblem(
                    r.seq, ProblemKind.EDITED, f"entry {r.seq} does not hash to its stored hash"
                )
            )
        if r.prev_hash != prev:
            return report(
                ChainProblem(
                    r.seq,
                    ProblemKind.INSERTED,
                    f"entry {r.seq} does not link to entry {expected - 1} "
                    "(an entry was inserted or replaced before it)",
                )
            )
        if witness is not None and r.seq == witness.seq:
            witness_hash = r.hash
        count += 1
        expected, prev = r.seq + 1, r.hash
    last = expected - 1

    if head is None:
        if last:
            return report(
                ChainProblem(
                    last, ProblemKind.HEAD, "no head record: truncation cannot be ruled out"
                )
            )
    else:
        if head.seq > last:
            return report(
                ChainProblem(
                    last + 1,
                    ProblemKind.TRUNCATED,
                    f"the head names {head.seq} entries, only {last} are stored",
                )
            )
        if head.seq < last:
            return report(
                ChainProblem(
                    head.seq + 1,
                    ProblemKind.INSERTED,
                    f"entries {head.seq + 1}-{last} come after the head (entry {head.seq})",
                )
            )
        if head.hash != prev:
            return report(
                ChainProblem(last, ProblemKind.HEAD, f"the head's hash is not entry {last}'s hash")
            )
        if public_key is not None:
            why = verify_checkpoint(head, public_key)
            if why is not None:
                return report(ChainProblem(head.seq, ProblemKind.HEAD, why))

    if witness is not None and witness.seq > 0:
        if witness.seq > last:
            return report(
                ChainProblem(
                    last + 1,
                    ProblemKind.TRUNCATED,
                    f"the checkpoint of {witness.at.isoformat()} names {witness.seq} "
                    f"entries, only {last} are stored (the log was rolled back)",
                )
            )
        if witness_hash != witness.hash:
            return report(
                ChainProblem(
                    witness.seq,
                    ProblemKind.ROLLED_BACK,
                    f"entry {witness.seq} differs from the checkpoint of "
                    f"{witness.at.isoformat()} (the log was rewritten from there)",
                )
            )
    return report(None)
