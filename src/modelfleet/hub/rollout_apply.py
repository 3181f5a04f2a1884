"""Applying a rollout step to the hub's rows, inside the caller's write transaction.

One function per thing a :class:`~modelfleet.rollout.stages.Step` does to devices, and
:func:`apply_step`, which does it, stores the rollout's new progress (revision + 1), records
the transition and writes its audit entry — all in the one transaction the caller holds
(:meth:`~modelfleet.hub.context.HubContext.write`). The caller signs after the commit
(:meth:`~modelfleet.hub.director.Director.publish`). A process killed anywhere in here leaves
either none of it or all of it: the next controller resumes from the stored stage, never
skipping or repeating one.

The assignment rules are :mod:`modelfleet.rollout.assignment`, as for a plain deploy: a
stage's devices get the version with the stage's mode; a rollback sends every device whose
assignment still carries the rollout id back with :func:`~modelfleet.rollout.assignment.
roll_back` (a dropped candidate, or the pinned previous production: no download).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfleet.errors import InvalidInputError
from modelfleet.hub import db
from modelfleet.hub.approvals import refuse_unapproved
from modelfleet.hub.config import HubConfig
from modelfleet.hub.context import HubContext
from modelfleet.hub.deployments import _slots, _store_slots
from modelfleet.hub.director import Director
from modelfleet.rollout import assignment as rules
from modelfleet.rollout.desired_state import Mode
from modelfleet.rollout.plan import RolloutPlan
from modelfleet.rollout.stages import Action, Progress, RolloutState, Step, stage_spec

__all__ = [
    "ASSIGNED",
    "ROLLED_BACK",
    "WAITING",
    "Applied",
    "apply_step",
    "progress_of",
    "store_progress",
]

WAITING = "waiting"
ASSIGNED = "assigned"
ROLLED_BACK = "rolled_back"


@dataclass
class Applied:
    """What one step changed: the devices whose desired state was staged, and notes."""

    devices: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # device -> why it was left alone


def progress_of(row: db.Rollout) -> Progress:
    """The rollout row's state-machine progress."""
    return Progress(
        state=RolloutState(row.state),
        stage=row.stage,
        stage_started_at=row.stage_started_at,
        streaks={str(k): int(v) for k, v in (row.streaks or {}).items()},
        reason=row.reason,
    )


def store_progress(row: db.Rollout, progress: Progress, now: datetime) -> None:
    """Write ``progress`` into the row and bump its revision."""
    row.state = progress.state.value
    row.stage = progress.stage
    row.stage_started_at = progress.stage_started_at
    row.streaks = dict(progress.streaks)
    row.reason = progress.reason[:2000]
    row.updated_at = now
    row.revision += 1


def _assignments(s: Session, model: str, ids: Sequence[str]) -> dict[str, db.Assignment]:
    out: dict[str, db.Assignment] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for a in s.scalars(
            select(db.Assignment).where(
                db.Assignment.model == model, db.Assignment.device_id.in_(chunk)
            )
        ):
            out[a.device_id] = a
    return out


def start_stage(
    s: Session, row: db.Rollout, plan: RolloutPlan, k: int, now: datetime, config: HubConfig
) -> Applied:
    """Assign the version to every device of stages ``<= k`` with stage ``k``'s mode, and
    publish it in the catalog.

    Waiting devices get it; devices of earlier stages that still carry the rollout id move to
    the new stage's mode when it differs (split to full, say). A device whose assignment no
    longer carries the rollout id (its guard rolled back, or an operator changed it) is left
    alone and marked rolled back; one that already runs the version as production is left
    alone and counted as assigned.

    Raises:
        InvalidInputError: the version was revoked (nothing is assigned).
        ConflictError: the version awaits release signatures (a release key was added after
            the rollout was created; nothing is assigned, the rollout waits).
    """
    spec = stage_spec(plan, k)
    share = spec.share if spec.mode is not Mode.FULL else 0.0
    version = s.scalars(
        select(db.ModelVersion)
        .join(db.Model, db.Model.id == db.ModelVersion.model_id)
        .where(db.Model.name == row.model, db.ModelVersion.version == row.version)
    ).one_or_none()
    if version is None or version.revoked:
        raise InvalidInputError(f"{row.model} version {row.version} is revoked or gone")
    refuse_unapproved(s, config, row.model, row.version)
    # The catalog lists published versions only (Director.publish signs it after the commit):
    # a version first reaching devices through a rollout is published here, as a deploy does.
    version.published = True
    members = list(
        s.scalars(
            select(db.RolloutDevice).where(
                db.RolloutDevice.rollout_id == row.id, db.RolloutDevice.stage_of <= k
            )
        )
    )
    current = _assignments(s, row.model, [m.device_id for m in members])
    slo = {str(key): float(v) for key, v in plan.slo.items()}
    done = Applied()
    for m in members:
        if m.state == ROLLED_BACK:
            continue
        a = current.get(m.device_id)
        if m.state == ASSIGNED:
            if a is None or a.rollout_id != row.id:
                m.state = ROLLED_BACK
                done.kept[m.device_id] = "its assignment changed outside the rollout"
                continue
            if Mode(a.mode) is spec.mode and (spec.mode is Mode.FULL or a.share == share):
                continue
            if spec.mode is not Mode.FULL and a.production_version == row.version:
                done.kept[m.device_id] = f"already runs version {row.version} in full"
                continue
        elif a is not None and a.production_version == row.version and a.candidate_version is None:
            m.state, m.assigned_at = ASSIGNED, now
            done.kept[m.device_id] = f"already runs version {row.version}"
            continue
        try:
            after = rules.deploy(_slots(a), row.version, spec.mode, share)
        except InvalidInputError as e:  # e.g. split on a device that has no production
            done.kept[m.device_id] = str(e)
            continue
        if a is None:
            a = db.Assignment(device_id=m.device_id, model=row.model)
            s.add(a)
        _store_slots(a, after)
        a.slo, a.rollout_id, a.updated_at = slo, row.id, now
        m.state, m.assigned_at = ASSIGNED, now
        done.devices.append(m.device_id)
    return done


def roll_back(s: Session, row: db.Rollout, now: datetime) -> Applied:
    """Send every device whose assignment still carries the rollout id back (the candidate
    dropped, or the pinned previous production); mark them rolled back. A device with nothing
    to go back to (the rollout installed the model first) keeps the version, noted."""
    members = list(
        s.scalars(
            select(db.RolloutDevice).where(
                db.RolloutDevice.rollout_id == row.id, db.RolloutDevice.state == ASSIGNED
            )
        )
    )
    current = _assignments(s, row.model, [m.device_id for m in members])
    done = Applied()
    for m in members:
        m.state = ROLLED_BACK
        a = current.get(m.device_id)
        if a is None or a.rollout_id != row.id:
            continue  # rolled back already (its guard) or changed by an operator
        back = rules.roll_back(_slots(a) or rules.Slots[int](None))
        if back is None:
            done.kept[m.device_id] = "no earlier version to go back to"
            continue
        _store_slots(a, back.slots)
        a.rollout_id, a.updated_at = f"{row.id}-rollback"[:64], now
        done.devices.append(m.device_id)
    return done


def apply_step(
    ctx: HubContext,
    director: Director,
    s: Session,
    row: db.Rollout,
    plan: RolloutPlan,
    step: Step,
    *,
    actor: str,
    action: str,
    ticket: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> Applied:
    """Do ``step`` in ``s``: devices, desired states, the row, the transition, the audit.

    Args:
        ctx: for the clock and the audit log.
        director: stages the changed devices' desired states (signed after the commit).
        s: the caller's write transaction.
        row: the rollout row, read in ``s``.
        plan: the row's plan.
        step: what :func:`~modelfleet.rollout.stages.tick` or ``operator`` decided.
        actor: who acts (a principal, or ``controller``).
        action: the audit action (``rollout-stage``, ``rollout-pause``, ...).
        ticket: change ticket for the audit entry (default: the rollout's).
        details: more audit details.

    Returns:
        The devices changed and the ones left alone, with why.
    """
    now = ctx.now()
    done = Applied()
    if step.action is Action.START_STAGE:
        assert step.stage is not None
        done = start_stage(s, row, plan, step.stage, now, ctx.config)
        if row.stable_since is None and step.stage >= plan.stable_stage:
            row.stable_since = now
    elif step.action is Action.ROLL_BACK:
        done = roll_back(s, row, now)
        row.completed_at = now
    elif step.action in (Action.COMPLETE, Action.ABORT):
        row.completed_at = now
        if step.action is Action.COMPLETE and row.stable_since is None:
            row.stable_since = now
    store_progress(row, step.progress, now)
    if done.devices:
        director.stage(s, done.devices)
    ticket = ticket if ticket is not None else row.ticket
    s.add(
        db.RolloutTransition(
            rollout_id=row.id,
            at=now,
            actor=actor,
            action=action,
            state=row.state,
            stage=row.stage,
            reason=(step.reason or step.progress.reason)[:2000],
            ticket=ticket,
        )
    )
    audit: dict[str, Any] = {
        "model": row.model,
        "version": row.version,
        "state": row.state,
        "stage": row.stage,
        "stage_name": stage_spec(plan, row.stage).name if row.stage >= 0 else None,
        "reason": step.reason or step.progress.reason,
        "revision": row.revision,
    }
    if done.devices:
        audit["devices"] = len(done.devices)
    if done.kept:
        audit["kept"] = dict(sorted(done.kept.items())[:100])
    audit.update(details or {})
    ctx.audit(s, actor, action, row.id, audit, ticket)
    return done
