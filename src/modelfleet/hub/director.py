"""Desired states and signing: the database first, the TUF metadata after the commit.

Every device has its own director repository (Uptane's per-vehicle director; issue 8,
ADR 0014) under the director's shared root, kept in the ``director_devices`` table: the
signed ``targets`` (one target, ``devices/<id>/desired-state.json``), ``snapshot`` and
``timestamp`` bytes are served from there, so what a device downloads does not grow with
the fleet.

A change to what devices should run is two steps (issue 6, "sign after commit"):

1. :meth:`Director.stage`, inside the change's transaction, builds each device's new
   desired state from its assignments, bumps its serial in ``desired_states`` and stages
   the bytes in ``director_devices`` (marked ``dirty``); it commits with the change and its
   audit entry.
2. :meth:`Director.publish`, after the commit, re-signs the catalog when it lacks a
   published version, then signs the dirty devices only (not the fleet) and stores their
   metadata in one transaction per batch. A row is written only if nobody signed or
   re-staged it meanwhile (compare-and-set on its versions and staged digest), so two
   publishers never sign one version twice with different content, and the newest staged
   state always wins.

A crash between the two leaves rows dirty: :meth:`publish` signs them on the next change,
at start-up (``HubService`` calls :meth:`repair`) and on each upkeep round, where
:meth:`refresh_expiring` also re-signs per-device roles before they expire, in batches.

Each row records the director key that signed it (``signed_keyid``). When the trust
store's director key is not the one this process last checked the rows against (at
start-up, and after ``modelfleet keys`` rotated it, here or in another process), every row
signed by another key is marked dirty and re-signed by the same machinery, so a rotation
interrupted anywhere is finished by the next signing (issue 10, ADR 0039).
Versions of a device's roles come from its row and only grow; a decommissioned device
keeps its row with no target listed (:meth:`remove_desired_states`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    LargeBinary,
    String,
    Table,
    any_,
    bindparam,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from modelfleet.catalog.artefacts import FileArtefactStore
from modelfleet.errors import NotFoundError
from modelfleet.hashing import sha256_bytes
from modelfleet.hub import _bulk, db
from modelfleet.hub.catalog import CATALOG_PREFIX, Catalog
from modelfleet.hub.context import HubContext
from modelfleet.rollout.desired_state import ArtefactRef, DesiredState, Mode
from modelfleet.rollout.desired_state import Assignment as DesiredAssignment
from modelfleet.trust.device_repo import (
    DeviceRepoSigner,
    DeviceRoles,
    PendingSigning,
    SignedDeviceRoles,
    due_roles,
)
from modelfleet.trust.hub_trust import HubTrust

__all__ = ["DIRECTOR_PREFIX", "Director", "StagedState", "TufVersions"]

DIRECTOR_PREFIX = "devices/"
"""Every director target path starts with this (see ``desired_state_target_path``)."""

StagedState = tuple[str, int, int]
"""``(sha256, length, serial)`` of a device's desired state."""

BATCH = 2500
"""At most this many devices signed per transaction (publish and expiry re-signing);
:meth:`Director.sign_dirty` pipelines its batches, so smaller ones overlap better and
larger ones commit less often."""

READ_MAX = 50_000
"""Dirty rows read per round of :meth:`Director.sign_dirty` (bounds its memory)."""

VERSIONS_TTL_S = 1.0
"""How long the catalog's and the shared root's versions are reused for check-in answers."""

_MAX_ROUNDS = 1000
_CHUNK = 500  # ids per IN (...) list
_TABLE = cast(Table, db.DirectorDevice.__table__)
_META = (
    _TABLE.c.device_id,
    _TABLE.c.staged_sha256,
    _TABLE.c.listed_sha256,
    func.length(_TABLE.c.staged).label("staged_length"),
    func.length(_TABLE.c.listed).label("listed_length"),
    _TABLE.c.targets_version,
    _TABLE.c.snapshot_version,
    _TABLE.c.timestamp_version,
    _TABLE.c.targets_expires,
    _TABLE.c.snapshot_expires,
    _TABLE.c.timestamp_expires,
    # the device's site picks its lifetimes (issue 11, ADR 0037); "" once it is deleted
    select(db.Device.site)
    .where(db.Device.id == _TABLE.c.device_id)
    .scalar_subquery()
    .label("site"),
)
"""What signing reads of a row: no signed bytes, no desired-state bytes."""
_DIRTY = select(*_META).where(_TABLE.c.dirty.is_(True)).limit(bindparam("b_limit"))
"""The rows to sign, read as plain tuples (:func:`~modelfleet.hub._bulk.fetchall`)."""
_VERSIONED = re.compile(r"^([1-9][0-9]{0,15})\.(root|snapshot|targets)\.json$")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TufVersions:
    """The versions a device compares with what it holds (the check-in fast path)."""

    catalog_root: int
    catalog_timestamp: int
    director_root: int
    director_timestamp: int

    def to_dict(self) -> dict[str, dict[str, int]]:
        """``{"catalog": {"root", "timestamp"}, "director": {"root", "timestamp"}}``."""
        return {
            "catalog": {"root": self.catalog_root, "timestamp": self.catalog_timestamp},
            "director": {"root": self.director_root, "timestamp": self.director_timestamp},
        }


class _SiteSigning:
    """One batch's signings, one per site (each with its own lifetimes), joined back into
    the batch's order by :meth:`result`."""

    def __init__(self, size: int, parts: Sequence[tuple[Sequence[int], PendingSigning]]) -> None:
        self._size, self._parts = size, parts

    def result(self) -> list[SignedDeviceRoles]:
        out: list[SignedDeviceRoles | None] = [None] * self._size
        for indices, pending in self._parts:
            for i, signed in zip(indices, pending.result(), strict=True):
                out[i] = signed
        assert all(x is not None for x in out)
        return cast(list[SignedDeviceRoles], out)


def _later(when: datetime | None, now: datetime) -> datetime:
    """``when``, but at least a second after ``now`` (a row not due at ``now``)."""
    soonest = now + timedelta(seconds=1)
    return soonest if when is None or when < soonest else when


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _id_in(s: Session, column: Any, ids: Sequence[str]) -> Iterable[Any]:
    """Conditions that together select ``column IN ids``: on PostgreSQL one
    ``= ANY(array)`` (one short statement with one bound array, where 20 IN lists of 500
    rendered parameters each cost more to build and parse than to run; issue 8), elsewhere
    IN lists of :data:`_CHUNK` ids."""
    if s.connection().dialect.name == "postgresql":
        yield column == any_(literal(list(ids), ARRAY(String())))
        return
    for chunk in _chunks(ids):
        yield column.in_(chunk)


def _utc_now(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(microsecond=0)


def _roles(r: Any) -> DeviceRoles:
    return DeviceRoles(
        r.targets_version,
        r.snapshot_version,
        r.timestamp_version,
        r.targets_expires,
        r.snapshot_expires,
        r.timestamp_expires,
    )


def _upsert_statements(
    table: Any, updated: Sequence[str], inserted: Sequence[str] = ()
) -> tuple[Any, Any]:
    """The UPDATE (of ``updated``, by ``b_id``) and the INSERT (of ``device_id``, ``updated``
    and ``inserted``) that :func:`_upsert` runs for ``table``."""
    return (
        update(table)
        .where(table.c.device_id == bindparam("b_id"))
        .values({k: bindparam(k) for k in updated}),
        insert(table).values({k: bindparam(k) for k in ("device_id", *updated, *inserted)}),
    )


_STATE_UPSERT = _upsert_statements(
    db.DeviceState.__table__, ("serial", "sha256", "length", "issued_at")
)
_STAGE_UPSERT = _upsert_statements(
    _TABLE,
    ("staged", "staged_sha256", "dirty"),
    ("targets_version", "snapshot_version", "timestamp_version"),
)


def _signed_statement(listed_from_staged: bool) -> Any:
    """The compare-and-set UPDATE storing a row's signed roles (:meth:`Director._write`)."""
    c = _TABLE.c
    values: dict[str, Any] = {
        "dirty": False,
        "signed_keyid": bindparam("b_keyid"),
        # unchanged roles are passed as NULL and keep their bytes
        "targets_json": func.coalesce(
            bindparam("b_targets_json", type_=LargeBinary()), c.targets_json
        ),
        "snapshot_json": func.coalesce(
            bindparam("b_snapshot_json", type_=LargeBinary()), c.snapshot_json
        ),
    }
    for name in (
        "targets_version", "snapshot_version", "timestamp_version", "targets_expires",
        "snapshot_expires", "timestamp_expires", "timestamp_json", "signed_at", "resign_at",
    ):  # fmt: skip
        values.setdefault(name, bindparam(f"b_{name}"))
    if listed_from_staged:  # copied in SQL: the staged bytes never leave the database
        values["listed"], values["listed_sha256"] = c.staged, c.staged_sha256
    return (
        update(_TABLE)
        .where(
            c.device_id == bindparam("b_id"),
            c.timestamp_version == bindparam("b_prev"),
            c.staged_sha256.is_not_distinct_from(bindparam("b_staged")),
        )
        .values(values)
    )


_SIGNED = {flag: _signed_statement(flag) for flag in (False, True)}
"""By ``listed_from_staged``: built once, so :mod:`~modelfleet.hub._bulk` compiles each once."""
_RESCHEDULE = (
    update(_TABLE)
    .where(
        _TABLE.c.device_id == bindparam("b_id"),
        _TABLE.c.timestamp_version == bindparam("b_prev"),
    )
    .values(resign_at=bindparam("b_resign_at"))
)


def _upsert(
    s: Session,
    statements: tuple[Any, Any],
    rows: Sequence[dict[str, Any]],
    existing: set[str],
    new_defaults: Mapping[str, Any] | None = None,
) -> None:
    """Update the rows whose ``device_id`` is in ``existing``, insert the others (one
    executemany each, through the DBAPI cursor: :mod:`modelfleet.hub._bulk`)."""
    old = [{"b_id": r["device_id"], **r} for r in rows if r["device_id"] in existing]
    new = [{**r, **(new_defaults or {})} for r in rows if r["device_id"] not in existing]
    conn = s.connection()
    _bulk.executemany(conn, statements[0], old)
    _bulk.executemany(conn, statements[1], new)


class Director:
    """Builds desired states in the database and signs them per device from it.

    Args:
        ctx: the hub's sessions and clock.
        store: the artefact store (desired states live in the database, not here).
        trust: the signed repositories (the catalog, the director's shared root and key).
        catalog: version lookups, and what the catalog repository must list.
    """

    def __init__(
        self, ctx: HubContext, store: FileArtefactStore, trust: HubTrust, catalog: Catalog
    ) -> None:
        self._ctx = ctx
        self._store = store
        self._trust = trust
        self._catalog = catalog
        self._publish_lock = threading.Lock()
        self._shared_versions: tuple[float, int, int, int] | None = None
        # The director key the rows were last checked against (None: not yet; ADR 0039).
        self._checked_keyid: str | None = None

    @property
    def trust(self) -> HubTrust:
        """The trust store this director signs into (read-only use: checks)."""
        return self._trust

    @property
    def _signer(self) -> DeviceRepoSigner:
        # Read each time: the trust store swaps it when the director key is rotated.
        return self._trust.device_signer

    # -- staging (inside the caller's transaction) ---------------------------------------

    def stage(self, s: Session, device_ids: Iterable[str]) -> dict[str, StagedState]:
        """Build and stage each device's next desired state from its assignments (in the
        caller's transaction; nothing is signed).

        Returns:
            ``{device id: (sha256, length, serial)}``.
        """
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            return {}
        now = self._ctx.now()
        s.flush()
        by_device = self._assignments(s, ids)
        serials: dict[str, int] = {}
        for condition in _id_in(s, db.DeviceState.device_id, ids):
            rows = s.execute(
                select(db.DeviceState.device_id, db.DeviceState.serial).where(condition)
            )
            serials.update({r.device_id: r.serial for r in rows})
        issued = now.astimezone(UTC).isoformat()
        out: dict[str, StagedState] = {}
        blobs: dict[str, bytes] = {}
        for device_id in ids:
            serial = serials.get(device_id, 0) + 1
            raw = DesiredState(
                device_id=device_id,
                serial=serial,
                assignments=tuple(by_device.get(device_id, ())),
                issued_at=issued,
            ).to_json()
            blobs[device_id] = raw
            out[device_id] = (sha256_bytes(raw), len(raw), serial)
        states = [
            {"device_id": d, "serial": sr, "sha256": sha, "length": n, "issued_at": now}
            for d, (sha, n, sr) in out.items()
        ]
        _upsert(s, _STATE_UPSERT, states, set(serials))
        self._stage_rows(s, {d: (blobs[d], out[d][0]) for d in ids})
        return out

    def remove_desired_states(self, s: Session, device_ids: Iterable[str]) -> None:
        """List no desired state for these devices (enrolment, decommission), in the
        caller's transaction: the next :meth:`publish` signs each an empty targets
        (versions keep growing; the row stays)."""
        ids = list(dict.fromkeys(device_ids))
        s.flush()
        self._stage_rows(s, dict.fromkeys(ids, (None, None)))

    def _stage_rows(
        self, s: Session, staged: Mapping[str, tuple[bytes | None, str | None]]
    ) -> None:
        ids = list(staged)
        existing: set[str] = set()
        for condition in _id_in(s, db.DirectorDevice.device_id, ids):
            existing.update(s.scalars(select(db.DirectorDevice.device_id).where(condition)))
        params = [
            {"device_id": d, "staged": blob, "staged_sha256": sha, "dirty": True}
            for d, (blob, sha) in staged.items()
        ]
        zero = {"targets_version": 0, "snapshot_version": 0, "timestamp_version": 0}
        _upsert(s, _STAGE_UPSERT, params, existing, zero)
        for obj in list(s.identity_map.values()):  # bulk writes bypass loaded objects
            if isinstance(obj, db.DeviceState | db.DirectorDevice):
                s.expire(obj)

    def _assignments(self, s: Session, ids: Sequence[str]) -> dict[str, list[DesiredAssignment]]:
        refs: dict[tuple[str, int], ArtefactRef] = {}
        built: dict[tuple[Any, ...], DesiredAssignment] = {}  # a stage repeats a few shapes

        def ref(model: str, version: int) -> ArtefactRef:
            if (model, version) not in refs:
                v = self._catalog.version_row(s, model, version)
                refs[model, version] = ArtefactRef(
                    model, version, v.sha256, v.length, v.manifest_sha256, v.manifest_length
                )
            return refs[model, version]

        a = db.Assignment.__table__.c
        cols = (a.model, a.production_version, a.candidate_version, a.mode, a.share, a.slo)
        out: dict[str, list[DesiredAssignment]] = defaultdict(list)
        for condition in _id_in(s, a.device_id, ids):
            rows = s.execute(
                select(a.device_id, *cols, a.rollout_id)
                .where(condition)
                .order_by(a.device_id, a.model)
            )
            for device_id, model, prod, cand, mode, share, slo, rollout_id in rows:
                key = (model, prod, cand, mode, share, repr(sorted(slo.items())), rollout_id)
                assignment = built.get(key)
                if assignment is None:
                    assignment = built[key] = DesiredAssignment(
                        model=model,
                        production=ref(model, prod),
                        candidate=ref(model, cand) if cand is not None else None,
                        mode=Mode(mode),
                        share=share,
                        slo={k: float(v) for k, v in slo.items()},
                        rollout_id=rollout_id,
                    )
                out[device_id].append(assignment)
        return out

    # -- signing (after the commit) -------------------------------------------------------

    def publish(self) -> list[str]:
        """Sign what the database says, after its commit: the catalog first (desired states
        name its targets), then every dirty device. Idempotent; signs nothing when in step.

        Returns:
            What got new metadata: ``"catalog"``, ``"director"`` (any device signed).

        Raises:
            StorageError: the database cannot be read or written, or the catalog metadata
                written; the committed change is signed by the next successful call.
        """
        done = []
        # Offline targets key (ADR 0043): every approved version is staged for the
        # ceremony, so it is signed before anything is assigned to it.
        offline = self._trust.catalog_targets_offline()
        if self._trust.sync("catalog", CATALOG_PREFIX, lambda: self._catalog_targets(offline)):
            done.append("catalog")
            self._shared_versions = None
        # The shared director lists no devices any more (issue 8): once, after an upgrade,
        # its old fleet-wide listing is signed away.
        self._trust.sync("director", DIRECTOR_PREFIX, dict)
        if self.sign_dirty():
            done.append("director")
        return done

    def sign_dirty(self) -> int:
        """Sign every device staged since its last signing, in batches.

        The dirty rows are read once per round (at most :data:`READ_MAX`), cut into even
        batches of at most :data:`BATCH`, and pipelined: while batch *k* is written (one
        transaction, compare-and-set per row), the signing processes already sign batch
        *k + 1*. Rows re-staged meanwhile stay dirty and are signed in the next round.

        Returns:
            How many devices got new metadata.
        """
        with self._publish_lock:
            self.mark_stale()
            return self._sign_dirty_locked()

    def mark_stale(self) -> int:
        """Mark dirty every signed row whose roles another director key signed, once per
        key this process signs with (the caller signs them next; issue 10, ADR 0039).

        Returns:
            How many rows were marked (0 as well when the key was checked already).
        """
        keyid = self._signer.keyid
        if keyid == self._checked_keyid:
            return 0
        c = _TABLE.c
        stmt = (
            update(_TABLE)
            .where(c.dirty.is_(False), c.signed_keyid.is_distinct_from(keyid))
            .values(dirty=True)
        )
        with self._ctx.write() as s:
            marked = int(s.connection().execute(stmt).rowcount)
        self._checked_keyid = keyid
        if marked:
            _log.warning(
                "%d device director repositories were signed by another director key; "
                "re-signing them with %s",
                marked,
                keyid[:16],
            )
        return marked

    def _sign_dirty_locked(self) -> int:
        signed = 0
        for _ in range(_MAX_ROUNDS):
            with self._ctx.read() as s:
                rows = _bulk.fetchall(s.connection(), _DIRTY, {"b_limit": READ_MAX})
            if not rows:
                break
            written = self._sign_pipelined(rows)
            signed += written
            if written == 0:
                break  # every row was re-staged or signed by another process meanwhile
        return signed

    def _sign_pipelined(self, rows: Sequence[Any]) -> int:
        count = -(-len(rows) // BATCH)
        size = -(-len(rows) // count)
        batches = [rows[i : i + size] for i in range(0, len(rows), size)]

        def start(batch: Sequence[Any]) -> tuple[datetime, str, _SiteSigning]:
            now = _utc_now(self._ctx.now())
            # One signer for the batch: its key id is what the rows record.
            root = self._signer
            by_site: dict[str, list[int]] = defaultdict(list)  # each site its lifetimes
            for i, r in enumerate(batch):
                by_site[self._site_key(r)].append(i)
            parts = []
            for site, indices in by_site.items():
                items = [
                    (
                        batch[i].device_id,
                        (batch[i].staged_length, batch[i].staged_sha256)
                        if batch[i].staged_sha256 is not None
                        else None,
                        _roles(batch[i]),
                    )
                    for i in indices
                ]
                signer = root.for_site(site)
                parts.append((indices, signer.sign_changes_async(items, now, run_size=len(rows))))
            return now, root.keyid, _SiteSigning(len(batch), parts)

        written = 0
        pending = start(batches[0])
        for k, batch in enumerate(batches):
            now, keyid, signing = pending
            if k + 1 < len(batches):
                pending = start(batches[k + 1])  # signed by the pool while this one is written
            results = list(zip(batch, signing.result(), strict=True))
            written += self._write(results, now, keyid, listed_from_staged=True)
        return written

    def refresh_expiring(self) -> int:
        """Re-sign per-device roles close to expiry (the upkeep round), in batches.

        Returns:
            How many devices got a new timestamp (and, when due, snapshot and targets).
        """
        count = 0
        with self._publish_lock:
            if self.mark_stale():  # the director key changed: re-sign those rows first
                count += self._sign_dirty_locked()
            for _ in range(_MAX_ROUNDS):
                now = _utc_now(self._ctx.now())
                root = self._signer
                with self._ctx.read() as s:
                    rows = s.execute(
                        select(*_META)
                        .where(_TABLE.c.resign_at <= now, _TABLE.c.dirty.is_(False))
                        .limit(BATCH)
                    ).all()
                if not rows:
                    break
                results: list[tuple[Any, SignedDeviceRoles]] = []
                not_due: list[Any] = []
                for r in rows:
                    roles = _roles(r)
                    signer = root.for_site(r.site)
                    if "targets" in self._due(signer, roles, now):
                        listed = (
                            (r.listed_length, r.listed_sha256)
                            if r.listed_sha256 is not None
                            else None
                        )
                        results.append((r, signer.sign_change(r.device_id, listed, roles, now)))
                    else:
                        fresh = signer.sign_expiring(roles, now)
                        if fresh is not None:
                            results.append((r, fresh))
                        else:
                            not_due.append(r)
                written = self._write(results, now, root.keyid, listed_from_staged=False)
                # A row due by an older policy (its site's lifetimes changed, or the device
                # moved site) is not due by the current one: move its re-signing time, or
                # it would be read again every round.
                moved = self._reschedule(not_due, now)
                count += written
                if written == 0 and moved == 0:
                    break
        return count

    @staticmethod
    def _due(signer: DeviceRepoSigner, roles: DeviceRoles, now: datetime) -> tuple[str, ...]:
        return due_roles(roles, now, signer.lifetimes, signer.refresh_margin)

    @staticmethod
    def _site_key(r: Any) -> str:
        return str(r.site or "")

    def _reschedule(self, rows: Sequence[Any], now: datetime) -> int:
        """Set each row's re-signing time from its site's current lifetimes (unchanged
        rows only: compare-and-set on the timestamp version)."""
        if not rows:
            return 0
        params = [
            {
                "b_id": r.device_id,
                "b_prev": r.timestamp_version,
                "b_resign_at": _later(self._signer.for_site(r.site).resign_at(_roles(r)), now),
            }
            for r in rows
        ]
        with self._ctx.write() as s:
            return _bulk.executemany(s.connection(), _RESCHEDULE, params)

    def _write(
        self,
        results: Sequence[tuple[Any, SignedDeviceRoles]],
        now: datetime,
        keyid: str,
        *,
        listed_from_staged: bool,
    ) -> int:
        """Store signed roles in one transaction, each only if its row is unchanged since
        it was read (compare-and-set on the timestamp version and the staged digest);
        ``keyid`` is the director key that signed them."""
        if not results:
            return 0
        resign: dict[
            tuple[str | datetime | None, ...], datetime | None
        ] = {}  # a batch shares dates

        def resign_at(r: Any, roles: DeviceRoles) -> datetime | None:
            site = self._site_key(r)
            key = (site, roles.targets_expires, roles.snapshot_expires, roles.timestamp_expires)
            if key not in resign:
                resign[key] = self._signer.for_site(site).resign_at(roles)
            return resign[key]

        params = [
            {
                "b_id": r.device_id,
                "b_prev": r.timestamp_version,
                "b_staged": r.staged_sha256,
                "b_targets_version": out.roles.targets,
                "b_snapshot_version": out.roles.snapshot,
                "b_timestamp_version": out.roles.timestamp,
                "b_targets_expires": out.roles.targets_expires,
                "b_snapshot_expires": out.roles.snapshot_expires,
                "b_timestamp_expires": out.roles.timestamp_expires,
                "b_targets_json": out.targets,
                "b_snapshot_json": out.snapshot,
                "b_timestamp_json": out.timestamp,
                "b_signed_at": now,
                "b_resign_at": resign_at(r, out.roles),
                "b_keyid": keyid,
            }
            for r, out in results
        ]
        with self._ctx.write() as s:
            return _bulk.executemany(s.connection(), _SIGNED[listed_from_staged], params)

    def adopt(self) -> int:
        """Give every device without a director row one (a hub upgraded from the shared
        director listing): its current desired state restaged (a new serial with the same
        assignments), or none.

        Returns:
            How many devices were adopted.
        """
        with self._ctx.read() as s:
            missing = list(
                s.scalars(
                    select(db.Device.id).where(
                        db.Device.id.not_in(select(db.DirectorDevice.device_id))
                    )
                )
            )
        if not missing:
            return 0
        with self._ctx.write() as s:
            with_state = set(
                s.scalars(
                    select(db.DeviceState.device_id).where(db.DeviceState.device_id.in_(missing))
                )
            )
            self.stage(s, [d for d in missing if d in with_state])
            self.remove_desired_states(s, [d for d in missing if d not in with_state])
        return len(missing)

    def repair(self) -> list[str]:
        """:meth:`adopt` then :meth:`publish`, logging what was behind (at start-up and
        each upkeep round)."""
        adopted = self.adopt()
        if adopted:
            _log.warning("gave %d device(s) their own director repository", adopted)
        done = self.publish()
        if done:
            _log.warning("signed committed changes the TUF metadata lacked: %s", ", ".join(done))
        return done

    def _catalog_targets(
        self, unpublished: bool = False
    ) -> dict[str, tuple[int, str, dict[str, Any] | None]]:
        with self._ctx.read() as s:
            return self._catalog.signed_targets(s, unpublished=unpublished)

    # -- serving -------------------------------------------------------------------------

    def metadata(self, device_id: str, filename: str) -> bytes:
        """The bytes behind ``GET /tuf/director/devices/<id>/metadata/<filename>``.

        ``<N>.root.json`` is the director's shared root; ``timestamp.json``,
        ``<N>.snapshot.json`` and ``<N>.targets.json`` the device's own (only the current
        version of each is kept).

        Raises:
            NotFoundError: no such file (unknown device, never signed, other version).
        """
        if filename == "timestamp.json":
            role, version = "timestamp", None
        else:
            m = _VERSIONED.match(filename)
            if m is None:
                raise NotFoundError(f"no metadata {filename!r}")
            role, version = m.group(2), int(m.group(1))
        if role == "root":
            path = self._trust.metadata_path("director", filename)
            if path is None:
                raise NotFoundError(f"no director root {filename!r}")
            return path.read_bytes()
        column = _TABLE.c[f"{role}_json"]
        with self._ctx.read() as s:
            row = s.execute(
                select(column, _TABLE.c[f"{role}_version"]).where(_TABLE.c.device_id == device_id)
            ).first()
        if row is None or row[0] is None or (version is not None and row[1] != version):
            raise NotFoundError(f"no metadata {filename!r} for device {device_id!r}")
        data: bytes = row[0]
        return data

    def target(self, device_id: str, sha256: str) -> bytes:
        """The desired-state bytes the device's signed targets lists with this digest.

        Raises:
            NotFoundError: not listed (replaced, never signed, unknown device).
        """
        with self._ctx.read() as s:
            row = s.execute(
                select(_TABLE.c.listed, _TABLE.c.listed_sha256).where(
                    _TABLE.c.device_id == device_id
                )
            ).first()
        if row is None or row.listed is None or row.listed_sha256 != sha256:
            raise NotFoundError(f"no desired state {sha256} for device {device_id!r}")
        data: bytes = row.listed
        return data

    def listed_state(self, device_id: str) -> tuple[str, bytes] | None:
        """``(sha256, bytes)`` of the desired state the device's signed targets lists now,
        or None (nothing listed, never signed, unknown device)."""
        with self._ctx.read() as s:
            row = s.execute(
                select(_TABLE.c.listed_sha256, _TABLE.c.listed).where(
                    _TABLE.c.device_id == device_id
                )
            ).first()
        if row is None or row.listed is None:
            return None
        return str(row.listed_sha256), bytes(row.listed)

    def staged_state(self, device_id: str) -> bytes | None:
        """The newest desired-state bytes staged for the device (signed or not yet)."""
        with self._ctx.read() as s:
            data = s.scalar(select(_TABLE.c.staged).where(_TABLE.c.device_id == device_id))
        return bytes(data) if data is not None else None

    def device_roles(self, device_id: str) -> DeviceRoles | None:
        """Versions and expiry dates of the device's signed roles (None: no row)."""
        with self._ctx.read() as s:
            row = s.execute(select(_TABLE).where(_TABLE.c.device_id == device_id)).first()
        return _roles(row) if row is not None else None

    def listed_blobs(self, s: Session) -> set[str]:
        """Digests of every desired state staged or listed (nothing the GC may delete)."""
        out: set[str] = set()
        for staged, listed in s.execute(select(_TABLE.c.staged_sha256, _TABLE.c.listed_sha256)):
            out.update(d for d in (staged, listed) if d)
        return out

    def forget_versions(self) -> None:
        """Drop the cached catalog and root versions (the trust store was re-signed)."""
        self._shared_versions = None

    def current_versions(self, device_id: str, timestamp: int | None) -> TufVersions:
        """The versions a device's check-in answer carries (fast path, issue 8).

        The catalog's and the shared root's versions are read from the trust store at most
        every :data:`VERSIONS_TTL_S` (and after each signing by this process): another
        replica's change shows up that much later, which at worst delays one poll.

        Args:
            device_id: the device (for the docs; its timestamp is passed in).
            timestamp: the device's own director timestamp version (None or 0: never
                signed).
        """
        del device_id
        mono = self._ctx.clock.monotonic()
        cached = self._shared_versions
        if cached is None or mono - cached[0] >= VERSIONS_TTL_S:
            c_root, c_ts = self._trust.versions("catalog")
            d_root, _ = self._trust.versions("director")
            cached = self._shared_versions = (mono, c_root, c_ts, d_root)
        _, c_root, c_ts, d_root = cached
        return TufVersions(c_root, c_ts, d_root, int(timestamp or 0))
