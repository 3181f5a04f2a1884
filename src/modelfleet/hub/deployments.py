"""Deployments and rollbacks: the hub's assignment rows changed by the pure rules of
:mod:`modelfleet.rollout.assignment` (issue 6 contract 1), and device rollbacks reported in
check-ins applied once each (contract 2).

Every change here stages the affected devices' desired states in its own transaction
(:meth:`~modelfleet.hub.director.Director.stage`) and signs them only after the commit
(:meth:`~modelfleet.hub.director.Director.publish`).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.errors import InvalidInputError, NotFoundError
from modelfleet.hub import db
from modelfleet.hub._values import ALL_DEVICES, JSONDict, _check_slo
from modelfleet.hub.approvals import refuse_unapproved, refuse_unsigned
from modelfleet.hub.catalog import Catalog
from modelfleet.hub.context import HubContext
from modelfleet.hub.director import Director, StagedState
from modelfleet.rollout import assignment as rules
from modelfleet.rollout.desired_state import Mode

__all__ = ["MAX_ROLLBACK_EVENTS", "Deployments", "DeviceRollback", "parse_rollback_events"]

MAX_ROLLBACK_EVENTS = 50
"""The agent keeps (and sends) its last 50 rollbacks; more in one report are ignored."""

_EVENT_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
_MAX_VERSION = 2**31 - 1  # the assignments' version columns are 32-bit


def _slots(a: db.Assignment | None) -> rules.Slots[int] | None:
    if a is None:
        return None
    return rules.Slots(
        a.production_version, a.candidate_version, a.previous_version, Mode(a.mode), a.share
    )


def _store_slots(a: db.Assignment, slots: rules.Slots[int]) -> None:
    if slots.production is None:  # the rules never take production away
        raise InvalidInputError(f"{a.model} on {a.device_id} would have no production version")
    a.production_version, a.candidate_version = slots.production, slots.candidate
    a.previous_version, a.mode, a.share = slots.previous, slots.mode.value, slots.share


class DeviceRollback:
    """One rollback event from a device's report (contract 2), already checked."""

    __slots__ = ("event_id", "fields", "from_version", "kind", "model", "to_version")

    def __init__(
        self,
        event_id: str,
        model: str,
        kind: rules.RollbackKind,
        from_version: int,
        to_version: int,
        fields: Mapping[str, Any],
    ) -> None:
        self.event_id, self.model, self.kind = event_id, model, kind
        self.from_version, self.to_version = from_version, to_version
        self.fields = dict(fields)


def _version(v: object) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _MAX_VERSION:
        return v
    return None


def parse_rollback_events(raw: object) -> list[DeviceRollback]:
    """The well-formed rollback events of a report's ``"rollbacks"`` value (pure).

    Malformed entries (not an object, a bad id, model, kind or version) are skipped:
    the report itself is still recorded. At most :data:`MAX_ROLLBACK_EVENTS`, the last.
    """
    if not isinstance(raw, list):
        return []
    out: list[DeviceRollback] = []
    for e in raw[-MAX_ROLLBACK_EVENTS:]:
        if not isinstance(e, Mapping):
            continue
        event_id, model, kind = e.get("id"), e.get("model"), e.get("kind")
        from_v, to_v = _version(e.get("from_version")), _version(e.get("to_version"))
        if not (isinstance(event_id, str) and _EVENT_ID.match(event_id)):
            continue
        if not (isinstance(model, str) and 0 < len(model) <= 128):
            continue
        if kind not in (rules.RollbackKind.CANDIDATE.value, rules.RollbackKind.PRODUCTION.value):
            continue
        if from_v is None or to_v is None:
            continue
        kept = {k: e.get(k) for k in ("at", "reason", "serial") if k in e}
        out.append(DeviceRollback(event_id, model, rules.RollbackKind(kind), from_v, to_v, kept))
    return out


class Deployments:
    """Assigning versions to devices and taking them back.

    Args:
        ctx: the hub's sessions, clock and audit log.
        catalog: version lookups.
        director: stages desired states in the transaction and signs them after it.
    """

    def __init__(self, ctx: HubContext, catalog: Catalog, director: Director) -> None:
        self._ctx = ctx
        self._catalog = catalog
        self._director = director

    def targets(
        self, s: Session, devices: Sequence[str] | Literal["all"], model: str | None = None
    ) -> list[str]:
        """The device ids a change names (``"all"``: every device, or every device that
        has ``model``).

        Raises:
            InvalidInputError: a bare string that is not ``"all"``, or no devices.
            NotFoundError: an unknown device id.
        """
        gone = select(db.DeviceDecommission.device_id)  # issue 10: decommissioned devices
        if devices == ALL_DEVICES:
            query = select(db.Device.id).where(db.Device.id.not_in(gone)).order_by(db.Device.id)
            if model is not None:
                query = (
                    select(db.Assignment.device_id)
                    .where(db.Assignment.model == model)
                    .order_by(db.Assignment.device_id)
                )
            ids = list(s.scalars(query))
        elif isinstance(devices, str):
            raise InvalidInputError(f"devices must be a list of ids or 'all', got {devices!r}")
        else:
            ids = list(dict.fromkeys(devices))
            unknown = [d for d in ids if s.get(db.Device, d) is None]
            if unknown:
                raise NotFoundError(f"no device {', '.join(repr(d) for d in unknown)}")
            retired = set(s.scalars(gone.where(db.DeviceDecommission.device_id.in_(ids))))
            if retired:
                raise InvalidInputError(f"decommissioned: {', '.join(sorted(retired))}")
        if not ids:
            raise InvalidInputError("no devices to change")
        return ids

    def deploy(
        self,
        name: str,
        version: int,
        devices: Sequence[str] | Literal["all"],
        mode: Mode | str = Mode.FULL,
        share: float = 0.0,
        slo: Mapping[str, float] | None = None,
        *,
        actor: str,
        ticket: str | None = None,
    ) -> JSONDict:
        """See ``HubService.deploy``."""
        try:
            mode = Mode(mode)
        except ValueError:
            raise InvalidInputError(f"unknown mode {mode!r}; use full, split or shadow") from None
        slo_map = _check_slo(slo)
        share = float(share)
        if mode is Mode.FULL:
            share = 0.0
        elif not (math.isfinite(share) and 0.0 < share <= 1.0):
            raise InvalidInputError(f"share must be in (0, 1] for {mode.value}, got {share}")
        rollout_id = f"{name}-{version}-{secrets.token_hex(4)}"
        now = self._ctx.now()
        with self._ctx.write() as s:
            row = self._catalog.version_row(s, name, version)
            if row.revoked:
                raise InvalidInputError(f"{name} version {version} is revoked")
            refuse_unapproved(s, self._ctx.config, name, version)  # issue 10: 409, no audit
            refuse_unsigned(self._director.trust, name, version)  # ADR 0043: 409, no audit
            ids = self.targets(s, devices)
            existing = {
                a.device_id: a
                for a in s.scalars(
                    select(db.Assignment).where(
                        db.Assignment.model == name, db.Assignment.device_id.in_(ids)
                    )
                )
            }
            if mode is not Mode.FULL:
                # The rule refuses these too; checked first to name every device at once.
                missing = [d for d in ids if d not in existing]
                if missing:
                    raise InvalidInputError(
                        f"{mode.value} needs a production version of {name!r} on every device; "
                        f"none on {', '.join(missing)} (deploy one with mode full first)"
                    )
                same = [d for d in ids if existing[d].production_version == version]
                if same:
                    raise InvalidInputError(
                        f"{name} version {version} is already production on {', '.join(same)}"
                    )
            row.published = True
            for device_id in ids:
                a = existing.get(device_id)
                after = rules.deploy(_slots(a), version, mode, share)
                if a is None:
                    a = db.Assignment(device_id=device_id, model=name)
                    s.add(a)
                _store_slots(a, after)
                a.slo, a.rollout_id, a.updated_at = slo_map, rollout_id, now
            states = self._director.stage(s, ids)
            self._ctx.audit(
                s,
                actor,
                "deploy",
                f"{name}/{version}",
                {
                    "devices": ids,
                    "mode": mode.value,
                    "share": share,
                    "slo": slo_map,
                    "rollout_id": rollout_id,
                },
                ticket,
            )
            summary = self._change_summary(s, name, ids, states)
        self._director.publish()
        return {
            "model": name,
            "version": version,
            "mode": mode.value,
            "share": share,
            "slo": slo_map,
            "rollout_id": rollout_id,
            "devices": summary,
        }

    def rollback(
        self,
        name: str,
        devices: Sequence[str] | Literal["all"],
        *,
        actor: str,
        ticket: str | None = None,
    ) -> JSONDict:
        """See ``HubService.rollback``."""
        rollout_id = f"rollback-{name}-{secrets.token_hex(4)}"
        now = self._ctx.now()
        with self._ctx.write() as s:
            self._catalog.model_row(s, name)
            ids = self.targets(s, devices, model=name)
            changes: dict[str, JSONDict] = {}
            for device_id in ids:
                a = self._assignment(s, device_id, name)
                if a is None:
                    raise InvalidInputError(f"device {device_id!r} has no assignment of {name!r}")
                done = rules.roll_back(_slots(a) or rules.Slots[int](None))
                if done is None:
                    raise InvalidInputError(
                        f"device {device_id!r} has no earlier version of {name!r} to go back to"
                    )
                if (
                    done.kind is rules.RollbackKind.PRODUCTION
                    and self._catalog.version_row(s, name, done.to).revoked
                ):
                    raise InvalidInputError(
                        f"cannot roll {device_id!r} back: {name} version {done.to} is revoked"
                    )
                if done.kind is rules.RollbackKind.PRODUCTION:
                    refuse_unapproved(s, self._ctx.config, name, done.to)
                    refuse_unsigned(self._director.trust, name, done.to)
                before = {"production": a.production_version, "candidate": a.candidate_version}
                _store_slots(a, done.slots)
                a.rollout_id, a.updated_at = rollout_id, now
                changes[device_id] = {"from": before, "to": {"production": a.production_version}}
            states = self._director.stage(s, ids)
            self._ctx.audit(
                s, actor, "rollback", name, {"devices": changes, "rollout_id": rollout_id}, ticket
            )
            summary = self._change_summary(s, name, ids, states)
        self._director.publish()
        return {"model": name, "rollout_id": rollout_id, "devices": summary}

    def apply_device_rollbacks(
        self, s: Session, device_id: str, events: Sequence[DeviceRollback], now: datetime
    ) -> tuple[list[str], bool]:
        """Apply a device's reported rollbacks to its assignments, each at most once
        (contract 2), in the caller's transaction; the caller publishes after the commit.

        An event applies when the hub's assignment still matches it (``candidate``: the
        candidate is ``from_version``; ``production``: production is ``from_version`` and
        previous is ``to_version``, with no candidate) and :func:`~modelfleet.rollout.
        assignment.roll_back` of that assignment is the same rollback. Otherwise it is
        stale (the hub moved on): recorded, not applied. Applied events are audited as
        ``device-rollback`` by ``device:<id>``.

        Returns:
            ``(ids of the given events applied now or earlier, whether anything changed)``.
        """
        if not events:
            return [], False
        seen = {
            r.event_id: r.applied
            for r in s.scalars(
                select(db.DeviceRollbackEvent).where(
                    db.DeviceRollbackEvent.device_id == device_id,
                    db.DeviceRollbackEvent.event_id.in_([e.event_id for e in events]),
                )
            )
        }
        applied: list[str] = []
        changed = False
        for e in events:
            if e.event_id in seen:
                if seen[e.event_id]:
                    applied.append(e.event_id)
                continue
            a = self._assignment(s, device_id, e.model)
            done = self._matching_rollback(a, e)
            if a is not None and done is not None:
                before = _slots(a)
                _store_slots(a, done.slots)
                a.rollout_id, a.updated_at = f"device-rollback-{e.event_id[:32]}", now
                self._ctx.audit(
                    s,
                    f"device:{device_id}",
                    "device-rollback",
                    f"{device_id}/{e.model}",
                    {
                        "event_id": e.event_id,
                        "model": e.model,
                        "kind": e.kind.value,
                        "from_version": e.from_version,
                        "to_version": e.to_version,
                        "before": {
                            "production": before.production if before else None,
                            "candidate": before.candidate if before else None,
                            "previous": before.previous if before else None,
                        },
                        **e.fields,
                    },
                )
                applied.append(e.event_id)
                changed = True
            s.add(
                db.DeviceRollbackEvent(
                    device_id=device_id,
                    event_id=e.event_id,
                    model=e.model,
                    kind=e.kind.value,
                    from_version=e.from_version,
                    to_version=e.to_version,
                    applied=done is not None,
                    received_at=now,
                )
            )
            seen[e.event_id] = done is not None
        if changed:
            self._director.stage(s, [device_id])
        return applied, changed

    @staticmethod
    def _matching_rollback(
        a: db.Assignment | None, e: DeviceRollback
    ) -> rules.Rollback[int] | None:
        slots = _slots(a)
        if slots is None:
            return None
        if e.kind is rules.RollbackKind.CANDIDATE and slots.candidate != e.from_version:
            return None
        if e.kind is rules.RollbackKind.PRODUCTION and (
            slots.production != e.from_version or slots.previous != e.to_version
        ):
            return None
        done = rules.roll_back(slots)
        if done is None or done.kind is not e.kind or done.away != e.from_version:
            return None
        return done

    @staticmethod
    def _assignment(s: Session, device_id: str, model: str) -> db.Assignment | None:
        return s.scalars(
            select(db.Assignment).where(
                db.Assignment.model == model, db.Assignment.device_id == device_id
            )
        ).first()

    def _change_summary(
        self, s: Session, name: str, ids: list[str], states: Mapping[str, StagedState]
    ) -> list[JSONDict]:
        out = []
        for device_id in ids:
            a = self._assignment(s, device_id, name)
            assert a is not None  # staged just now
            sha, length, serial = states[device_id]
            out.append(
                {
                    "device_id": device_id,
                    "production": a.production_version,
                    "candidate": a.candidate_version,
                    "mode": a.mode,
                    "share": a.share,
                    "serial": serial,
                    "desired_state_sha256": sha,
                    "desired_state_length": length,
                }
            )
        return out
