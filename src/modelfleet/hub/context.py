"""What every hub collaborator shares: config, clock, database sessions, the write lock and
the audit log.

A state change runs in :meth:`HubContext.write`: one transaction, taken one at a time in
this process (an ``RLock``) and across replicas on PostgreSQL (advisory lock
:data:`~modelfleet.hub.locks.WRITE`), that commits together with its audit entries.
Signing TUF metadata is never done inside it (see :mod:`modelfleet.hub.director`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Executable
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelfleet.audit.checkpoint import CheckpointSigner
from modelfleet.audit.log import append_entry
from modelfleet.clock import Clock
from modelfleet.errors import ConflictError, StorageError
from modelfleet.hub import _bulk, locks
from modelfleet.hub.audit_rows import SqlAuditStore
from modelfleet.hub.config import HubConfig

__all__ = ["HubContext"]


class HubContext:
    """Sessions, the write lock and the audit log of one hub process.

    Args:
        config: the hub's config.
        clock: time source for records.
        engine: the database engine (owned by the caller, who disposes of it).
        sessions: a session factory over ``engine``.
        audit_signer: the audit key that signs the chain's head on every append (ADR 0016);
            None leaves the head unsigned.
    """

    def __init__(
        self,
        config: HubConfig,
        clock: Clock,
        engine: Engine,
        sessions: sessionmaker[Any],
        *,
        audit_signer: CheckpointSigner | None = None,
    ) -> None:
        self.config = config
        self.audit_signer = audit_signer
        self.clock = clock
        self.engine = engine
        self.sessions = sessions
        # One writer at a time in this process: SQLite has one writer anyway, and the
        # audit chain and desired-state serials are read-modify-write.
        self._write_lock = threading.RLock()
        # The same pool, each connection in autocommit while checked out (see read_row).
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    def now(self) -> datetime:
        """The clock's current time (aware UTC)."""
        return self.clock.now()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits when the block ends without an exception.

        Raises:
            ConflictError: a uniqueness clash with a concurrent change.
            StorageError: any other database failure.
        """
        with self._write_lock:
            try:
                with self.sessions.begin() as session:
                    locks.xact_lock(session, locks.WRITE)
                    yield session
            except IntegrityError as e:
                raise ConflictError(f"the change clashes with a concurrent one: {e.orig}") from e
            except SQLAlchemyError as e:
                raise StorageError(f"database error: {e}") from e

    @contextmanager
    def telemetry_write(self, lock_key: int | None = None) -> Iterator[Session]:
        """A transaction for telemetry (ingest, retention): it touches neither the audit
        chain nor serials, so it takes no :data:`~modelfleet.hub.locks.WRITE` lock, and
        hub replicas on PostgreSQL ingest in parallel (a record's identity is unique and
        inserted with ON CONFLICT DO NOTHING). SQLite has one writer per file: there the
        process write lock is taken, so a batch queues behind other writes instead of
        failing on a busy database.

        Args:
            lock_key: an advisory lock to take too (PostgreSQL; e.g. retention's, so two
                replicas never roll up the same rows).

        Raises:
            ConflictError: a uniqueness clash with a concurrent change.
            StorageError: any other database failure.
        """
        guard: AbstractContextManager[object] = (
            self._write_lock if self.engine.dialect.name == "sqlite" else nullcontext()
        )
        with guard:
            try:
                with self.sessions.begin() as session:
                    if lock_key is not None:
                        locks.xact_lock(session, lock_key)
                    yield session
            except IntegrityError as e:
                raise ConflictError(f"the change clashes with a concurrent one: {e.orig}") from e
            except SQLAlchemyError as e:
                raise StorageError(f"database error: {e}") from e

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading (nothing it changes is committed).

        Raises:
            StorageError: a database failure.
        """
        try:
            with self.sessions() as session:
                yield session
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {e}") from e

    def read_row(self, statement: Executable, params: Mapping[str, Any]) -> Any:
        """The first row of one Core ``statement`` (a module constant: compiled once), read
        outside a transaction, as a named tuple of its columns' keys, or None.

        For the check-in's reads (issue 8, H9): on an autocommit connection, without the
        ORM, so PostgreSQL sees one statement and no ``BEGIN``/``ROLLBACK`` around it (two
        round trips of the four a session's read costs, the pool's ping being the other), and
        through the DBAPI cursor (:func:`~modelfleet.hub._bulk.fetchall`: no SQLAlchemy
        execution context or ``Row`` per check-in).

        Raises:
            StorageError: a database failure.
        """
        try:
            with self._autocommit.connect() as conn:
                rows = _bulk.fetchall(conn, statement, params)
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {e}") from e
        return rows[0] if rows else None

    def audit(
        self,
        session: Session,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any] | None = None,
        ticket: str | None = None,
    ) -> None:
        """Append an audit entry in ``session``'s transaction (it commits with the change),
        moving the signed head with it."""
        store = self.audit_store(session)
        append_entry(store, self.now(), actor, action, subject, details, ticket)

    def audit_store(self, session: Session) -> SqlAuditStore:
        """The audit chain in ``session``, signing its head with the hub's audit key."""
        return SqlAuditStore(session, self.audit_signer)
