"""The published TUF role versions in the hub database (ADR 0007, issue 6 defect 14).

:class:`DbRoleCounters` is the :class:`~modelfleet.trust.repository.RoleCounters` the hub
gives its repositories: a copy of an older ``timestamp.json`` over the store cannot roll
these back, so the hub never signs a version its devices would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from modelfleet.errors import StorageError
from modelfleet.hub import db, locks

__all__ = ["DbRoleCounters"]


class DbRoleCounters:
    """Role-version counters in the ``tuf_role_versions`` table.

    Each :meth:`record` is its own short transaction (never call it inside another write
    transaction on SQLite: it would wait for itself).
    """

    def __init__(self, sessions: sessionmaker[Any]) -> None:
        self._sessions = sessions

    def published(self, repo: str) -> Mapping[str, int]:
        """``{role: highest version published}`` of ``repo``.

        Raises:
            StorageError: the database cannot be read.
        """
        try:
            with self._sessions() as s:
                rows = s.scalars(select(db.TufRoleVersion).where(db.TufRoleVersion.repo == repo))
                return {r.role: r.version for r in rows}
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read the TUF version counters: {e}") from e

    def record(self, repo: str, versions: Mapping[str, int]) -> None:
        """Raise the counters to at least ``versions`` (committed before this returns).

        Raises:
            StorageError: the database cannot be written.
        """
        try:
            with self._sessions.begin() as s:
                locks.xact_lock(s, locks.TUF_COUNTERS)
                for role, version in versions.items():
                    row = s.get(db.TufRoleVersion, (repo, role))
                    if row is None:
                        s.add(db.TufRoleVersion(repo=repo, role=role, version=version))
                    elif row.version < version:
                        row.version = version
        except SQLAlchemyError as e:
            raise StorageError(f"cannot store the TUF version counters: {e}") from e
