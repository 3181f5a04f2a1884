"""The highest published version of each TUF role, kept where a file copy cannot roll it
back (ADR 0007): the protocol :class:`~modelfleet.trust.repository.TufRepository` signs
against, and an in-memory one for tests and tools (the hub's lives in its database,
:class:`~modelfleet.hub.tuf_versions.DbRoleCounters`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["MemoryRoleCounters", "RoleCounters"]


class RoleCounters(Protocol):
    """The highest version of each role ever published, kept where a file copy cannot
    roll it back (the hub's database; ADR 0007, issue 6 defect 14).

    :class:`TufRepository` never signs a role at or below its counter: a store restored
    from an older copy is signed *above* the counter, so devices, which refuse any
    version lower than one they hold, accept the next metadata.
    """

    def published(self, repo: str) -> Mapping[str, int]:
        """``{role: highest version published}`` of ``repo`` (roles never seen: absent)."""
        ...

    def record(self, repo: str, versions: Mapping[str, int]) -> None:
        """Raise the counters of ``repo`` to at least ``versions`` (never lowers one).

        Raises:
            StorageError: the counters could not be stored (nothing is signed then).
        """
        ...


class MemoryRoleCounters:
    """:class:`RoleCounters` in memory, for tests and tools that keep no database."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[str, int]] = {}

    def published(self, repo: str) -> Mapping[str, int]:
        return dict(self.versions.get(repo, {}))

    def record(self, repo: str, versions: Mapping[str, int]) -> None:
        mine = self.versions.setdefault(repo, {})
        for role, v in versions.items():
            mine[role] = max(mine.get(role, 0), v)
