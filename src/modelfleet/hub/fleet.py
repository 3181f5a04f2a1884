"""The hub's fleet: API tokens, enrolled devices, and their check-in reports.

A report's ``"rollbacks"`` (issue 6 contract 2) are handed to
:meth:`~modelfleet.hub.deployments.Deployments.apply_device_rollbacks` in the report's own
transaction; the device's new desired state is signed after the commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Table, bindparam, delete, or_, select, update
from sqlalchemy.orm import Session

from modelfleet.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    StorageError,
    UnauthenticatedError,
)
from modelfleet.hub import _bulk, db
from modelfleet.hub._reports import report_changes, served_versions
from modelfleet.hub._values import JSONDict, _check_name, _iso
from modelfleet.hub.auth import (
    Permission,
    Principal,
    Role,
    check,
    hash_token,
    new_token,
    parse_role,
)
from modelfleet.hub.context import HubContext
from modelfleet.hub.credentials import CredentialSettings, is_device_credential, judge
from modelfleet.hub.deployments import Deployments, parse_rollback_events
from modelfleet.hub.device_credentials import DeviceCredentials
from modelfleet.hub.director import Director
from modelfleet.hub.telemetry import telemetry_view

__all__ = ["TOKEN_CACHE_SIZE", "TOKEN_CACHE_TTL_S", "VOLATILE_REPORT_FIELDS", "Fleet"]

VOLATILE_REPORT_FIELDS = frozenset({"last_check", "loaded", "guard"})
"""Report fields that change every poll without anything having happened (the agent's
own list, ``agent/update_loop.py``): a report differing only in these is "unchanged"."""

log = logging.getLogger("modelfleet.hub")


_TOKEN = select(db.Token.role, db.Token.subject, db.Token.revoked).where(
    db.Token.token_sha256 == bindparam("sha")
)
_DD = cast(Table, db.DirectorDevice.__table__)
_REPORTED = (
    select(db.Device.reported, _DD.c.timestamp_version)
    .select_from(db.Device)
    .outerjoin(_DD, _DD.c.device_id == db.Device.id)
    .where(db.Device.id == bindparam("id"))
)
_DC = db.DeviceCredential
_CREDENTIAL = select(_DC.id, _DC.device_id, _DC.state, _DC.not_after, _DC.grace_until).where(
    _DC.secret_sha256 == bindparam("sha")
)
# The check-in's one query (issue 8/10): the credential by its unique digest, its device's
# stored report and director timestamp version, each by primary key.
_CHECKIN = (
    select(
        _DC.id,
        _DC.device_id,
        _DC.state,
        _DC.not_after,
        _DC.grace_until,
        db.Device.reported,
        _DD.c.timestamp_version,
    )
    .select_from(_DC)
    .join(db.Device, db.Device.id == _DC.device_id)
    .outerjoin(_DD, _DD.c.device_id == _DC.device_id)
    .where(_DC.secret_sha256 == bindparam("sha"))
)
_TOUCH = (
    update(db.Device)
    .where(
        db.Device.id == bindparam("b_id"),
        or_(db.Device.last_seen.is_(None), db.Device.last_seen < bindparam("b_now")),
    )
    .values(last_seen=bindparam("b_now"))
)

SEEN_FLUSH_S = 1.0
"""How long ``last_seen`` of not-modified check-ins may wait in memory before it is written."""


class _SeenBuffer:
    """``last_seen`` of not-modified check-ins, written behind (issue 8): at most once per
    :data:`SEEN_FLUSH_S`, all pending devices in one statement, never moving a device's
    ``last_seen`` back. Readers of device views flush first. A crash loses at most the last
    second of ``last_seen`` updates, never a report."""

    def __init__(self, ctx: HubContext, *, background: bool = True) -> None:
        self._ctx = ctx
        self._pending: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._flushed_at = ctx.clock.monotonic()
        self._background = background
        self._flushing = False

    def touch(self, device_id: str, now: datetime) -> None:
        """Hold ``last_seen``; once a flush is due, it runs on a thread of its own (one at a
        time), never on the request's (issue 8: the write left the check-in's path)."""
        mono = self._ctx.clock.monotonic()
        with self._lock:
            self._pending[device_id] = now
            due = mono - self._flushed_at >= SEEN_FLUSH_S and not self._flushing
            if due:
                self._flushing = True
                self._flushed_at = mono
        if not due:
            return
        if self._background:
            threading.Thread(target=self._flush_behind, name="modelfleet-last-seen").start()
        else:
            self._flush_behind()

    def _flush_behind(self) -> None:
        try:
            self.flush()
        except StorageError as e:  # the next flush carries on; a report is never lost
            log.warning("last_seen of recent check-ins not written: %s", e)
        finally:
            with self._lock:
                self._flushing = False

    def flush(self) -> None:
        """Write every pending ``last_seen`` now.

        Raises:
            StorageError: the database cannot be written (the times are dropped).
        """
        with self._write_lock:  # a reader's flush waits for one in flight behind it
            with self._lock:
                batch, self._pending = self._pending, {}
                self._flushed_at = self._ctx.clock.monotonic()
            if batch:
                with self._ctx.telemetry_write() as s:
                    rows = [{"b_id": d, "b_now": t} for d, t in batch.items()]
                    _bulk.executemany(s.connection(), _TOUCH, rows)  # plain tuples


TOKEN_CACHE_TTL_S = 1.0
"""How long a valid token's principal is answered from memory (issue 8, H9): a token revoked
or removed in the database, by this replica or another, is refused at most this much later."""

TOKEN_CACHE_SIZE = 65_536
"""Most tokens held in the cache (~200 bytes each); a full cache drops its expired entries,
then everything."""


class _TokenCache:
    """Valid tokens' principals by SHA-256 digest, each answered for at most
    :data:`TOKEN_CACHE_TTL_S` after it was read from the database (the injected clock's
    monotonic time). Invalid tokens are never cached: each costs a read, as before."""

    def __init__(self, ctx: HubContext) -> None:
        self._clock = ctx.clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, sha: str) -> Principal | None:
        entry = self._entries.get(sha)
        if entry is None or self._clock.monotonic() - entry[0] >= TOKEN_CACHE_TTL_S:
            return None
        return entry[1]

    def forget(self, shas: Iterable[str]) -> None:
        """Drop these digests (a revocation in this process takes effect at once)."""
        with self._lock:
            for sha in shas:
                self._entries.pop(sha, None)

    def put(self, sha: str, principal: Principal, read_at: float) -> None:
        with self._lock:
            if len(self._entries) >= TOKEN_CACHE_SIZE:
                now = self._clock.monotonic()
                self._entries = {
                    k: v for k, v in self._entries.items() if now - v[0] < TOKEN_CACHE_TTL_S
                }
                if len(self._entries) >= TOKEN_CACHE_SIZE:
                    self._entries = {}
            self._entries[sha] = (read_at, principal)


def _director_view(row: db.DirectorDevice | None) -> JSONDict | None:
    """Version and expiry date of each of the device's signed director roles (issue 11:
    its site's lifetimes show here); None before its first signing."""
    if row is None or not row.timestamp_version:
        return None
    return {
        role: {
            "version": getattr(row, f"{role}_version"),
            "expires": _iso(getattr(row, f"{role}_expires")),
        }
        for role in ("targets", "snapshot", "timestamp")
    }


def _same_report(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether two reports agree on every field but the volatile ones (pure)."""
    keys = (set(old) | set(new)) - VOLATILE_REPORT_FIELDS
    return all(old.get(k) == new.get(k) for k in keys)


class Fleet:
    """Tokens, devices and device reports.

    Args:
        ctx: the hub's sessions, clock and audit log.
        deployments: applies the rollbacks devices report.
        director: signs a device's desired state after a reported rollback.
    """

    def __init__(
        self,
        ctx: HubContext,
        deployments: Deployments,
        director: Director,
        credential_settings: CredentialSettings | None = None,
    ) -> None:
        self._ctx = ctx
        self._deployments = deployments
        self._director = director
        self._seen = _SeenBuffer(ctx)
        self._tokens = _TokenCache(ctx)
        self.credentials = DeviceCredentials(
            ctx, director, self._insert_device, self._tokens.forget, credential_settings
        )

    # -- tokens --------------------------------------------------------------------------

    def create_token(self, role: Role | str, subject: str, actor: str) -> str:
        """See ``HubService.create_token``."""
        role = parse_role(str(role))
        if not subject or len(subject) > 256:
            raise InvalidInputError("a token needs a subject of 1 to 256 characters")
        token = new_token()
        with self._ctx.write() as s:
            details: JSONDict = {"role": role.value}
            if role is Role.DEVICE:  # a device's token is a credential that expires (issue 10)
                if s.get(db.Device, subject) is None:
                    raise NotFoundError(f"no device {subject!r}")
                token, cred = self.credentials.issue(s, subject, actor)
                details["credential"] = cred.id
            else:
                self._add_token(s, token, role, subject, actor)
            self._ctx.audit(s, actor, "token.create", subject, details)
        return token

    def _add_token(self, s: Session, token: str, role: Role, subject: str, actor: str) -> None:
        s.add(
            db.Token(
                token_sha256=hash_token(token),
                role=role.value,
                subject=subject,
                created_at=self._ctx.now(),
                created_by=actor,
                revoked=False,
            )
        )

    def authenticate(self, token: str | None) -> Principal:
        """See ``HubService.authenticate``."""
        if not token:
            raise UnauthenticatedError("a bearer token is required")
        sha = hash_token(token)
        cached = self._tokens.get(sha)
        if cached is not None:
            return cached
        read_at = self._ctx.clock.monotonic()  # before the read: the entry never outlives it
        if is_device_credential(token):
            principal = self._credential_principal(self._ctx.read_row(_CREDENTIAL, {"sha": sha}))
        else:
            row = self._ctx.read_row(_TOKEN, {"sha": sha})
            if row is None or row.revoked:
                raise UnauthenticatedError("the token is not valid")
            principal = Principal(Role(row.role), row.subject)
        self._tokens.put(sha, principal, read_at)
        return principal

    def _credential_principal(self, row: Any) -> Principal:
        """The device a stored credential row names, if it is accepted now.

        Raises:
            UnauthenticatedError: unknown, revoked, replaced past its grace, or expired
                (the reason is logged, and said in the answer).
        """
        if row is None:
            raise UnauthenticatedError("the token is not valid")
        verdict = judge(
            row.state, row.not_after, row.grace_until, self._ctx.now(), self.credentials.settings
        )
        if not verdict.ok:
            log.warning(
                "device %s: credential %s refused: %s", row.device_id, row.id, verdict.reason
            )
            raise UnauthenticatedError(verdict.reason)
        return Principal(Role.DEVICE, row.device_id)

    def check_in(self, token: str | None, device_id: str, body: bytes | str) -> JSONDict:
        """The whole check-in (the bare ASGI route's): token, permission, size, report, in
        this order. A device credential takes one query for itself, its device's stored
        report and director timestamp (issue 8); any other token is authenticated as
        elsewhere. ``body`` is the body, or why its size is refused.

        Raises:
            UnauthenticatedError, ForbiddenError (another device's credential: logged),
            PayloadTooLargeError, and what :meth:`record_report` raises.
        """
        prefetched = None
        if token and is_device_credential(token):
            row = self._ctx.read_row(_CHECKIN, {"sha": hash_token(token)})
            who = self._credential_principal(row)
            assert row is not None  # _credential_principal refuses None
            if row.device_id != device_id:
                log.warning(
                    "device %s: credential %s refused for device %s's check-in",
                    row.device_id,
                    row.id,
                    device_id,
                )
            check(who, Permission.ADMIN, device_id=device_id)
            prefetched = row
        else:
            check(self.authenticate(token), Permission.ADMIN, device_id=device_id)
        if isinstance(body, str):
            raise PayloadTooLargeError(body)
        return self.record_report(device_id, body, prefetched=prefetched)

    # -- devices -------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        site: str | None = "",
        tags: Sequence[str] | None = None,
        actor: str = "system",
        ticket: str | None = None,
    ) -> tuple[JSONDict, str]:
        """See ``HubService.add_device``."""
        _check_name("device id", device_id)
        site = site or ""
        if not isinstance(site, str) or len(site) > 128:
            raise InvalidInputError("site must be a string of at most 128 characters")
        if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags or ()):
            raise InvalidInputError("tags must be a list of non-empty strings")
        tag_list = sorted(set(tags or ()))
        with self._ctx.write() as s:
            if s.get(db.Device, device_id) is not None:
                raise ConflictError(f"device {device_id!r} already exists")
            self._insert_device(s, device_id, site, tag_list, actor, ticket)
            # The device's credential expires and rotates (issue 10, ADR 0026).
            token, cred = self.credentials.issue(s, device_id, actor)
            self._ctx.audit(
                s,
                actor,
                "device.add",
                device_id,
                {"site": site, "tags": tag_list, "credential": cred.id},
                ticket,
            )
        self._director.publish()
        return self.get_device(device_id), token

    def _insert_device(
        self,
        s: Session,
        device_id: str,
        site: str,
        tags: Sequence[str],
        actor: str,
        ticket: str | None = None,
    ) -> None:
        """The device's row and its empty director repository, in the caller's transaction
        (``actor`` and ``ticket`` are the caller's to audit)."""
        del actor, ticket
        s.add(
            db.Device(
                id=device_id,
                site=site,
                tags=sorted(set(tags)),
                created_at=self._ctx.now(),
                last_seen=None,
                reported=None,
            )
        )
        s.flush()
        # Its own director repository, listing nothing yet: "no desired state" is
        # signed too, never inferred from a missing file (issue 8).
        self._director.remove_desired_states(s, [device_id])

    def flush_seen(self) -> None:
        """Write the ``last_seen`` times still held in memory (before reads, at upkeep)."""
        self._seen.flush()

    def list_devices(self) -> list[JSONDict]:
        """See ``HubService.list_devices``."""
        self._seen.flush()
        with self._ctx.read() as s:
            return [
                self._device_view(s, d) for d in s.scalars(select(db.Device).order_by(db.Device.id))
            ]

    def get_device(self, device_id: str) -> JSONDict:
        """See ``HubService.get_device``."""
        self._seen.flush()
        with self._ctx.read() as s:
            return self._device_view(s, self._device_row(s, device_id))

    @staticmethod
    def _device_row(s: Session, device_id: str) -> db.Device:
        row = s.get(db.Device, device_id)
        if row is None:
            raise NotFoundError(f"no device {device_id!r}")
        return row

    def _device_view(self, s: Session, d: db.Device) -> JSONDict:
        assignments = s.scalars(
            select(db.Assignment)
            .where(db.Assignment.device_id == d.id)
            .order_by(db.Assignment.model)
        )
        state = s.get(db.DeviceState, d.id)
        stream = s.get(db.DeviceTelemetry, d.id)
        return {
            "id": d.id,
            "site": d.site,
            "tags": list(d.tags),
            "created_at": _iso(d.created_at),
            "last_seen": _iso(d.last_seen),
            "report": d.reported,
            "assignments": [
                {
                    "model": a.model,
                    "production": a.production_version,
                    "candidate": a.candidate_version,
                    "previous": a.previous_version,
                    "mode": a.mode,
                    "share": a.share,
                    "slo": dict(a.slo),
                    "rollout_id": a.rollout_id,
                }
                for a in assignments
            ],
            "desired_state": None
            if state is None
            else {
                "serial": state.serial,
                "sha256": state.sha256,
                "length": state.length,
                "issued_at": _iso(state.issued_at),
            },
            "telemetry": telemetry_view(stream, self._ctx.now()),
            "director": _director_view(s.get(db.DirectorDevice, d.id)),
        }

    # -- reports -------------------------------------------------------------------------

    def record_report(
        self, device_id: str, report: Mapping[str, Any] | bytes, *, prefetched: Any = None
    ) -> JSONDict:
        """See ``HubService.record_report``; ``prefetched``: this device's stored report and
        director timestamp version, already read (the check-in's one query).

        A report that differs from the stored one only in fields that change every poll
        (:data:`VOLATILE_REPORT_FIELDS`) and carries no rollbacks takes the cheap path
        (issue 8): one read, and ``last_seen`` written behind (within a second, batched;
        see :class:`_SeenBuffer`); the stored report keeps the volatile fields of the last
        real change, as the agent's own check-in-on-change did; no history row, no audit
        entry, no write lock across replicas.
        """
        if isinstance(report, bytes | bytearray):
            raw = bytes(report)
        elif isinstance(report, Mapping):
            try:
                raw = orjson.dumps(dict(report))
            except TypeError as e:
                raise InvalidInputError(f"the report is not JSON-able: {e}") from e
        else:
            raise InvalidInputError("a device report must be a JSON object")
        limit = self._ctx.config.max_report_bytes
        if len(raw) > limit:
            raise PayloadTooLargeError(f"the report exceeds the limit of {limit} bytes")
        try:
            data: JSONDict = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InvalidInputError(f"the report is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise InvalidInputError("a device report must be a JSON object")
        events = parse_rollback_events(data.get("rollbacks"))
        now = self._ctx.now()
        if not events:
            row = (
                prefetched
                if prefetched is not None
                else self._ctx.read_row(_REPORTED, {"id": device_id})
            )
            if row is not None and row.reported is not None and _same_report(row.reported, data):
                self._seen.touch(device_id, now)
                versions = self._director.current_versions(device_id, row.timestamp_version)
                return {"applied_rollbacks": [], "tuf": versions.to_dict()}
        with self._ctx.write() as s:
            device = self._device_row(s, device_id)
            changes = report_changes(device.reported or {}, data)
            device.reported = data
            device.last_seen = now
            s.add(db.DeviceReport(device_id=device_id, received_at=now, report=data))
            if "running" in changes:
                self._record_serving(s, device_id, data)
            if changes:
                self._ctx.audit(s, f"device:{device_id}", "device.report", device_id, changes)
            applied, changed = self._deployments.apply_device_rollbacks(s, device_id, events, now)
        if changed:
            self._director.publish()
        ts = self._ctx.read_row(_REPORTED, {"id": device_id})
        versions = self._director.current_versions(device_id, ts.timestamp_version if ts else 0)
        return {"applied_rollbacks": applied, "tuf": versions.to_dict()}

    @staticmethod
    def _record_serving(s: Session, device_id: str, report: Mapping[str, Any]) -> None:
        """Replace the device's ``device_serving`` rows by what ``report`` serves."""
        s.execute(delete(db.DeviceServing).where(db.DeviceServing.device_id == device_id))
        s.add_all(
            db.DeviceServing(device_id=device_id, model=model, slot=slot, version=version)
            for model, slot, version in served_versions(report)
        )
