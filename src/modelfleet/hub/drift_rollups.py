"""Drift counts merged exactly at ingest into hourly roll-ups (issue 9, ADR 0019).

Every telemetry window of a version with a reference profile carries that version's drift
counts (``"profile"``, :meth:`~modelfleet.monitoring.profile_counts.ProfileWindow.to_wire`).
Reading them back from every raw window makes a fleet query cost what the fleet sent (4 s
for 10,000 devices' windows with sketches). Instead, telemetry ingest calls
:meth:`DriftRollups.add` in its own transaction with the windows it has just stored (never a
duplicate: ingest is exactly-once by ``(device, buffer, seq)``), and this module merges them
into one row per ``(model, version, site, hour)`` of their device-time ``closed_at``:
counts add, KLL sketches merge. A query then merges a handful of roll-ups (sites × hours).

A window is rolled up only when it is one the hub can trust to be in the version's bins:
the version is known and has a reference profile, and the counts parse against it
(:func:`~modelfleet.monitoring.profile_counts.merge_wire`: digest, format, bucket layout,
sketches that hold the values counted). A window that does not is still stored (the raw
record keeps it; telemetry is never refused for its drift field) and counted in
``modelfleet_hub_drift_windows{result="refused"}`` (``"no_profile"`` for a version without
a profile, or not registered). Shadow windows carry no counts.

Rows of one batch are locked in key order (``SELECT ... FOR UPDATE`` after an
``INSERT ... ON CONFLICT DO NOTHING``), so two replicas ingesting for one site serialise on
the row instead of losing a merge, and never deadlock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelfleet.catalog.artefacts import FileArtefactStore
from modelfleet.errors import InvalidInputError, NotFoundError
from modelfleet.hub import db
from modelfleet.monitoring.profile import ReferenceProfile
from modelfleet.monitoring.profile_counts import ProfileWindow, merge_wire
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.reference import PackageProfile

__all__ = [
    "DRIFT_RESULTS",
    "DriftRollups",
    "ProfileCache",
    "RollupRow",
    "hour_of",
    "merge_rollups",
    "read_rollups",
]

log = logging.getLogger("modelfleet.hub")

#: Outcomes of a window's drift counts at ingest (the counter's ``result`` label).
DRIFT_RESULTS: Final = ("rolled_up", "no_profile", "refused")


def hour_of(at: datetime) -> datetime:
    """The start of ``at``'s hour (the roll-up key)."""
    return at.replace(minute=0, second=0, microsecond=0)


def _version_number(version: str) -> int | None:
    return int(version) if version.isdigit() and len(version) < 12 else None


class ProfileCache:
    """Each version's reference profile, read from its signed manifest once per process.

    A version is immutable, so its profile (or its having none) is cached for good; a
    version the catalog does not have is not cached (it may be registered later).

    Args:
        store: the artefact store holding the manifests.
    """

    def __init__(self, store: FileArtefactStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], PackageProfile | None] = {}

    def get(self, s: Session, model: str, version: str) -> PackageProfile | None:
        """The profile of ``model`` ``version`` (as windows name it: a decimal string), or
        None when the version is unknown or has no (readable) profile."""
        key = (model, version)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        number = _version_number(version)
        if number is None:
            return None
        digest = s.execute(
            select(db.ModelVersion.manifest_sha256)
            .join(db.Model, db.Model.id == db.ModelVersion.model_id)
            .where(db.Model.name == model, db.ModelVersion.version == number)
        ).scalar()
        if digest is None:
            return None
        try:
            profile = PackageManifest.from_json(self._store.read(digest)).package_profile()
        except (InvalidInputError, NotFoundError) as e:
            log.warning("drift: %s/%s has no readable reference profile: %s", model, version, e)
            profile = None
        with self._lock:
            self._cache[key] = profile
        return profile

    def reference(self, s: Session, model: str, version: str) -> ReferenceProfile | None:
        """The :class:`ReferenceProfile` of the version (see :meth:`get`)."""
        found = self.get(s, model, version)
        return None if found is None else found.profile


@dataclass(frozen=True)
class RollupRow:
    """One stored roll-up as a query reads it."""

    site: str
    hour: datetime
    windows: int
    rows: int
    body: Mapping[str, Any]


def _table() -> Any:
    return db.DriftRollup.__table__


def _merge_checked(
    stored: Sequence[Mapping[str, Any]],
    docs: Sequence[Mapping[str, Any]],
    profile: ReferenceProfile,
    digest: str,
) -> tuple[ProfileWindow | None, int]:
    """The roll-up (``stored``, trusted) merged with those of ``docs`` that parse against
    the profile, each checked alone. Returns (merge or None when nothing is left, refused)."""
    good = []
    for d in docs:
        try:
            merge_wire([d], profile, digest=digest)
        except InvalidInputError as e:
            log.warning("drift: a window's counts were not rolled up: %s", e)
            continue
        good.append(d)
    if not good and not stored:
        return None, len(docs)
    return merge_wire([*stored, *good], profile, digest=digest), len(docs) - len(good)


class DriftRollups:
    """The roll-up writer that telemetry ingest calls (see the module docstring).

    Args:
        profiles: the versions' reference profiles.
    """

    def __init__(self, profiles: ProfileCache) -> None:
        self.profiles = profiles

    def add(
        self,
        s: Session,
        site: str,
        windows: Iterable[tuple[Mapping[str, Any], datetime]],
        now: datetime,
    ) -> dict[str, int]:
        """Merge the drift counts of newly stored windows of one device (at ``site``)
        into their roll-ups, in the caller's transaction.

        Args:
            s: the ingest transaction.
            site: the device's site.
            windows: ``(record, closed_at)``: each a parsed window record that ingest has
                just stored (never a duplicate), with its aware device-time ``closed_at``;
                those without a ``"profile"`` object, and shadow windows, are skipped.
            now: hub time (``updated_at``).

        Returns:
            Windows per outcome (:data:`DRIFT_RESULTS`).
        """
        groups: dict[tuple[str, str, datetime], list[Mapping[str, Any]]] = {}
        for r, at in windows:
            doc = r.get("profile")
            model, version = r.get("model"), r.get("version")
            if not isinstance(doc, Mapping) or r.get("role") == "shadow":
                continue
            if not isinstance(model, str) or not isinstance(version, str):
                continue
            groups.setdefault((model, version, hour_of(at)), []).append(doc)
        done = dict.fromkeys(DRIFT_RESULTS, 0)
        for key in sorted(groups):  # one lock order for every writer: no deadlock
            model, version, hour = key
            docs = groups[key]
            package = self.profiles.get(s, model, version)
            if package is None:
                done["no_profile"] += len(docs)
                continue
            row = self._locked_row(s, model, version, site, hour, package.digest, now)
            stored = [orjson.loads(row.body)] if row.windows else []
            try:  # one merge of the roll-up and the new windows (the common case)
                merged: ProfileWindow | None = merge_wire(
                    [*stored, *docs], package.profile, digest=package.digest
                )
                refused = 0
            except InvalidInputError:  # find the windows refused, merge the others
                merged, refused = _merge_checked(stored, docs, package.profile, package.digest)
            done["refused"] += refused
            done["rolled_up"] += len(docs) - refused
            if merged is None or merged.windows == row.windows:
                if not row.windows:
                    s.delete(row)  # nothing to roll up: no empty row
                continue
            row.body = orjson.dumps(merged.to_wire()).decode()
            row.windows = merged.windows
            row.rows = merged.rows
            row.updated_at = now
        if any(done.values()):
            s.flush()
        return done

    @staticmethod
    def _locked_row(
        s: Session, model: str, version: str, site: str, hour: datetime, digest: str,
        now: datetime,
    ) -> db.DriftRollup:  # fmt: skip
        u = db.DriftRollup
        where = (u.model == model, u.version == version, u.site == site, u.hour == hour)
        row = s.scalars(select(u).where(*where).with_for_update()).first()
        if row is not None:
            return row
        insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
        s.execute(
            insert(_table())
            .values(
                model=model,
                version=version,
                site=site,
                hour=hour,
                digest=digest,
                windows=0,
                rows=0,
                body="{}",
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["model", "version", "site", "hour"])
        )
        row = s.scalars(
            select(u).where(*where).with_for_update().execution_options(populate_existing=True)
        ).one()
        return row


def read_rollups(
    s: Session,
    model: str,
    version: str,
    since: datetime,
    until: datetime,
    sites: Sequence[str] | None = None,
) -> list[RollupRow]:
    """The roll-ups of ``model`` ``version`` whose hour starts in ``[since, until)``, at
    ``sites`` (None: every site), oldest first."""
    u = db.DriftRollup
    where = [u.model == model, u.version == version, u.hour >= since, u.hour < until, u.windows > 0]
    if sites is not None:
        where.append(u.site.in_(list(sites)))
    return [
        RollupRow(site, hour, int(w), int(n), orjson.loads(body))
        for site, hour, w, n, body in s.execute(
            select(u.site, u.hour, u.windows, u.rows, u.body).where(*where).order_by(u.hour, u.site)
        )
    ]


def merge_rollups(
    package: PackageProfile, rows: Sequence[RollupRow], *, sketches: bool = True
) -> ProfileWindow:
    """The roll-ups merged into one window (empty when there are none); ``sketches=False``
    merges the counts only (the combined verdict reads no sketch; KS needs them).

    Raises:
        InvalidInputError: a stored roll-up does not parse against the profile (it was
            written against another one).
    """
    if not rows:
        return ProfileWindow.empty(package.profile, package.digest)
    return merge_wire(
        [r.body for r in rows], package.profile, sketches=sketches, digest=package.digest
    )
