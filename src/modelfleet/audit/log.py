"""Append-only, hash-chained audit log (the hub keeps it in its database).

Each entry's ``hash`` is the SHA-256 of the canonical JSON (sorted keys, no spaces) of
its fields, including ``prev_hash``, the hash of the entry before it (64 zeros for the
first). Changing, inserting or deleting an entry in the middle breaks the chain at that
point; :func:`verify_chain` finds the first broken link. Deleting entries at the *end*
leaves a valid shorter chain: the signed head the store keeps next to the rows
(:mod:`modelfleet.audit.checkpoint`, checked by :mod:`modelfleet.audit.verify`) finds that.

The pure part (:func:`entry_hash`, :func:`first_broken`) works on plain records;
:func:`append_entry`, :func:`list_entries` and :func:`verify_chain` work through an
:class:`AuditStore` (the hub's is ``modelfleet.hub.audit_rows.SqlAuditStore``, bound to the
caller's transaction, so a state change and its entry commit together). This package
imports nothing of ``modelfleet.hub`` (issue 6 contract 10).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

__all__ = [
    "GENESIS_HASH",
    "AuditQuery",
    "AuditRecord",
    "AuditRow",
    "AuditStore",
    "append_entry",
    "entry_hash",
    "first_broken",
    "iso",
    "list_entries",
    "verify_chain",
]

GENESIS_HASH = "0" * 64


class AuditRow(Protocol):
    """Anything with an audit entry's fields (a database row, say)."""

    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def ticket(self) -> str | None: ...
    @property
    def details(self) -> Mapping[str, Any]: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def hash(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit entry as plain data."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    ticket: str | None
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": iso(self.at),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "ticket": self.ticket,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def of(cls, row: AuditRow) -> AuditRecord:
        return cls(
            row.seq,
            row.at,
            row.actor,
            row.action,
            row.subject,
            row.ticket,
            dict(row.details),
            row.prev_hash,
            row.hash,
        )


def iso(at: datetime) -> str:
    """``at`` as hashed: UTC, RFC 3339 with microseconds and ``+00:00``."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(record: AuditRecord) -> str:
    """SHA-256 hex of the canonical JSON of ``record`` (every field but ``hash``)."""
    body = record.to_dict()
    del body["hash"]
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def first_broken(records: Iterable[AuditRecord]) -> int | None:
    """Check a chain given in ``seq`` order.

    Returns:
        The ``seq`` of the first entry whose sequence number, ``prev_hash`` or ``hash``
        is wrong, or None when the whole chain holds.
    """
    expected_seq, prev = 1, GENESIS_HASH
    for r in records:
        if r.seq != expected_seq or r.prev_hash != prev or r.hash != entry_hash(r):
            return r.seq
        expected_seq, prev = r.seq + 1, r.hash
    return None


def _canonical_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    # A JSON round trip makes the stored details equal to the hashed ones on every backend.
    result: dict[str, Any] = orjson.loads(orjson.dumps(dict(details or {}), default=str))
    return result


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries to list, newest first unless ``after_seq`` is given.

    Attributes:
        limit: at most this many entries.
        before_seq: only entries with ``seq < before_seq`` (the paging cursor, newest
            first); None from the newest.
        after_seq: only entries with ``seq > after_seq``, oldest first (reading the chain
            forward, e.g. for an export); None for newest first. Not with ``before_seq``.
        since: only entries at or after this time.
        subject: only entries about this subject, or below it (``iris`` matches
            ``iris`` and ``iris/3``).
        actor: only entries by this actor (exact).
        action: only entries of this action (exact).
    """

    limit: int = 50
    before_seq: int | None = None
    after_seq: int | None = None
    since: datetime | None = None
    subject: str | None = None
    actor: str | None = None
    action: str | None = None

    @property
    def newest_first(self) -> bool:
        return self.after_seq is None


class AuditStore(Protocol):
    """Where the chain is kept; one store is bound to one transaction of its caller.

    The store serialises appenders itself (a lock held until the caller's commit), so
    :meth:`last` and :meth:`add` see no concurrent append between them.
    """

    def last(self) -> AuditRecord | None:
        """The entry with the highest ``seq``, or None for an empty log."""
        ...

    def add(self, record: AuditRecord) -> None:
        """Store ``record`` and move the chain's head to it, in the same transaction (it
        commits or rolls back with the caller)."""
        ...

    def page(self, after_seq: int, limit: int) -> list[AuditRecord]:
        """Entries with ``seq > after_seq`` in order, at most ``limit``."""
        ...

    def query(self, query: AuditQuery) -> list[AuditRecord]:
        """The entries ``query`` selects, in its order."""
        ...


def append_entry(
    store: AuditStore,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any] | None = None,
    ticket: str | None = None,
) -> AuditRecord:
    """Add an entry to the log inside the caller's transaction.

    Args:
        store: the log, bound to the caller's transaction.
        at: when the change happened (aware datetime).
        actor: who did it, e.g. ``"operator:alice"`` or ``"device:cam-7"``.
        action: what was done, e.g. ``"model.register"``.
        subject: what it was done to, e.g. ``"iris/3"``.
        details: JSON-able facts about the change.
        ticket: change ticket, if the caller gave one.

    Returns:
        The stored record with its hash.
    """
    last = store.last()
    # Stored datetimes keep microseconds on SQLite and PostgreSQL; hash what will be read back.
    record = AuditRecord(
        seq=(last.seq + 1) if last else 1,
        at=at.astimezone(UTC),
        actor=actor,
        action=action,
        subject=subject,
        ticket=ticket or None,
        details=_canonical_details(details),
        prev_hash=last.hash if last else GENESIS_HASH,
    )
    record = AuditRecord(**{**_fields(record), "hash": entry_hash(record)})
    store.add(record)
    return record


def _fields(r: AuditRecord) -> dict[str, Any]:
    return {s: getattr(r, s) for s in AuditRecord.__slots__}


def list_entries(store: AuditStore, after_seq: int = 0, limit: int = 100) -> list[AuditRecord]:
    """Entries with ``seq > after_seq`` in order, at most ``limit``."""
    return store.page(after_seq, limit)


def verify_chain(store: AuditStore, batch: int = 1000) -> int | None:
    """Walk the whole log and return the first broken ``seq``, or None if it is intact."""

    def records() -> Iterable[AuditRecord]:
        after = 0
        while True:
            page = store.page(after, batch)
            yield from page
            if len(page) < batch:
                return
            after = page[-1].seq

    return first_broken(records())
