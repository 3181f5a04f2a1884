"""The check-in fast path's rule (issue 8): which TUF repositories a device must refresh.

The hub's check-in answer carries the current versions
(``{"catalog": {"root": N, "timestamp": V}, "director": {"root": N, "timestamp": V}}``, the
director's timestamp being the device's own). A repository whose root and timestamp the
device already holds, verified, and whose held timestamp is not close to expiry, has
nothing new: its refresh (a root probe and a timestamp download) is skipped. Anything
else — a different version, a malformed or missing answer, nothing held — means
refresh, as before. Pure: the caller reads what it holds and does the I/O.

The answer is not signed; trusting it only ever *skips* work. A hub (or a man in the
middle) that lies can delay an update by at most until the held timestamp comes within
the margin of its expiry, which is the freeze bound TUF gives anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["DEFAULT_MARGIN", "HeldVersions", "stale_repositories"]

DEFAULT_MARGIN = timedelta(hours=8)
"""Refresh anyway when the held timestamp expires within this (a third of the default
one-day timestamp lifetime: the hub re-signs at that point too)."""


@dataclass(frozen=True, slots=True)
class HeldVersions:
    """What a device holds, verified, of one repository.

    Attributes:
        root: the trusted root's version.
        timestamp: the trusted timestamp's version.
        timestamp_expires: when that timestamp expires.
    """

    root: int
    timestamp: int
    timestamp_expires: datetime


def _hub_versions(answer: Any, repo: str) -> tuple[int, int] | None:
    if not isinstance(answer, Mapping):
        return None
    entry = answer.get(repo)
    if not isinstance(entry, Mapping):
        return None
    root, ts = entry.get("root"), entry.get("timestamp")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (root, ts)):
        return None
    assert isinstance(root, int) and isinstance(ts, int)
    return root, ts


def stale_repositories(
    held: Mapping[str, HeldVersions | None],
    answer: Any,
    now: datetime,
    margin: timedelta = DEFAULT_MARGIN,
) -> frozenset[str]:
    """The repositories (among ``held``'s keys) that must be refreshed now.

    Args:
        held: per repository (``catalog``, ``director``), what the device holds (None:
            nothing yet).
        answer: the check-in answer's ``"tuf"`` value, as received (anything).
        now: the device's time (aware).
        margin: refresh when the held timestamp expires within this.

    Returns:
        The names to refresh; empty when everything held is current.
    """
    stale = set()
    for repo, mine in held.items():
        hub = _hub_versions(answer, repo)
        if (
            mine is None
            or hub is None
            or hub != (mine.root, mine.timestamp)
            or mine.timestamp_expires - now < margin
        ):
            stale.add(repo)
    return frozenset(stale)
