"""The hub's operations: enrol devices, register versions, deploy, roll back, audit.

No HTTP in here: :mod:`modelfleet.hub.app` is a thin adapter over :class:`HubService`.
Every state change commits together with its audit entry in one database transaction;
changes to the signed TUF metadata happen inside that transaction, so a failure to sign
rolls the database back too.

Return values are JSON-ready dicts (the same shapes the REST API serves):

* version: ``{"model", "version", "sha256", "length", "manifest_sha256",
  "manifest_length", "opset", "ir_version", "schema", "lineage", "smoke_vectors",
  "created_at", "created_by", "published", "revoked", "model_path", "manifest_path",
  "deployments": [{"device_id", "role": "production"|"candidate", "mode", "share",
  "rollout_id"}]}``
* model: ``{"name", "description", "created_at", "created_by", "latest_version",
  "versions": [version]}``
* device: ``{"id", "site", "tags", "created_at", "last_seen", "report",
  "assignments": [{"model", "production", "candidate", "previous", "mode", "share",
  "slo", "rollout_id"}], "desired_state": {"serial", "sha256", "length", "issued_at"}
  | None}``
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from modelfleet.audit.log import append_entry
from modelfleet.catalog.artefacts import FileArtefactStore
from modelfleet.clock import Clock
from modelfleet.errors import ConfigError, ConflictError, StorageError
from modelfleet.hub import db
from modelfleet.hub._deployments import _DeploymentOps
from modelfleet.hub._devices import _DeviceOps
from modelfleet.hub._reports import report_changes
from modelfleet.hub._upkeep import _UpkeepOps
from modelfleet.hub._values import ALL_DEVICES, load_npy
from modelfleet.hub._versions import _VersionOps
from modelfleet.hub.config import HubConfig
from modelfleet.hub.home import init_home
from modelfleet.trust.hub_trust import HubTrust

__all__ = ["ALL_DEVICES", "HubService", "init_home", "load_npy", "report_changes"]

_PG_WRITE_LOCK = 0x6D66_6875_6277  # any constant shared by every hub replica


class HubService(_DeviceOps, _DeploymentOps, _VersionOps, _UpkeepOps):
    """The hub's operations over its database, artefact store and TUF repositories.

    Args:
        config: the hub config; its home must be initialised (see :func:`init_home`).
        clock: time source for records and signatures.
        migrate_db: bring the database schema up to date first.

    Raises:
        ConfigError: the home is not initialised or its keys/metadata are unusable.
        StorageError: the database cannot be reached or migrated.
    """

    def __init__(self, config: HubConfig, clock: Clock, *, migrate_db: bool = True) -> None:
        paths = config.paths
        if not paths.is_initialised():
            raise ConfigError(
                f"{paths.root} is not an initialised hub home; run `modelfleet init HOME`"
            )
        self.config = config
        self.clock = clock
        self.paths = paths
        self.engine = db.make_engine(config.database_url)
        if migrate_db:
            db.migrate(self.engine)
        self._sessions = db.make_sessionmaker(self.engine)
        self.store = FileArtefactStore(paths.artefacts)
        self.trust = HubTrust.open(paths.tuf, paths.keys, clock)
        # One writer at a time in this process: SQLite has one writer anyway, and the
        # audit chain and desired-state serials are read-modify-write.
        self._write_lock = threading.RLock()

    init_home = staticmethod(init_home)

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    # -- sessions ------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._write_lock:
            try:
                with self._sessions.begin() as session:
                    if session.get_bind().dialect.name == "postgresql":
                        # Hub replicas sharing one PostgreSQL take turns at writing, so
                        # version numbers, serials and the audit chain stay linear.
                        session.execute(
                            text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WRITE_LOCK}
                        )
                    yield session
            except IntegrityError as e:
                raise ConflictError(f"the change clashes with a concurrent one: {e.orig}") from e
            except SQLAlchemyError as e:
                raise StorageError(f"database error: {e}") from e

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {e}") from e

    def _audit(
        self,
        session: Session,
        actor: str,
        action: str,
        subject: str,
        details: Mapping[str, Any] | None = None,
        ticket: str | None = None,
    ) -> None:
        append_entry(session, self.clock.now(), actor, action, subject, details, ticket)
