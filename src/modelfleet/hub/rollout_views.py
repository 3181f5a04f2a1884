"""Rollout views: the JSON-ready shapes the API serves (see :mod:`modelfleet.hub.rollouts`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelfleet.hub import db
from modelfleet.hub._values import JSONDict, _iso
from modelfleet.hub.rollout_apply import ASSIGNED, ROLLED_BACK, WAITING
from modelfleet.rollout.plan import parse_plan
from modelfleet.rollout.stages import TERMINAL, RolloutState, stage_spec

__all__ = ["HISTORY", "OFFLINE_AFTER_S", "device_counts", "rollout_summary", "rollout_view"]

OFFLINE_AFTER_S: Final = 600.0
"""A rollout device not seen for this long counts as offline in the view (10 min: three
polls at the agent's default interval and then some)."""

HISTORY: Final = 20
"""Transitions the view lists (the last ones, oldest first)."""


def rollout_summary(row: db.Rollout, total: int) -> JSONDict:
    """The summary of a rollout (see :mod:`modelfleet.hub.rollouts`)."""
    plan = parse_plan(row.plan)
    return {
        "id": row.id,
        "model": row.model,
        "version": row.version,
        "state": row.state,
        "stage_name": stage_spec(plan, row.stage).name if row.stage >= 0 else None,
        "stage_index": row.stage,
        "stages": row.stage_count,
        "devices_total": total,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def rollout_view(s: Session, row: db.Rollout, now: datetime) -> JSONDict:
    """The full view of a rollout (see :mod:`modelfleet.hub.rollouts`), read in ``s``."""
    plan = parse_plan(row.plan)
    devices = device_counts(s, row, now)
    out = rollout_summary(row, devices["total"])
    stage: JSONDict | None = None
    if row.stage >= 0:
        spec = stage_spec(plan, row.stage)
        left = None
        if row.stage_started_at is not None and RolloutState(row.state) not in TERMINAL:
            elapsed = (now - row.stage_started_at).total_seconds()
            left = max(0.0, spec.soak_s - elapsed)
        stage = {
            "index": row.stage,
            "name": spec.name,
            "percent": spec.percent,
            "mode": spec.mode.value,
            "share": spec.share,
            "started_at": _iso(row.stage_started_at),
            "soak_s": spec.soak_s,
            "soak_left_s": left,
        }
    last = s.scalars(
        select(db.GateEvaluation)
        .where(db.GateEvaluation.rollout_id == row.id, db.GateEvaluation.stage == row.stage)
        .order_by(db.GateEvaluation.id.desc())
        .limit(1)
    ).first()
    history = list(
        s.scalars(
            select(db.RolloutTransition)
            .where(db.RolloutTransition.rollout_id == row.id)
            .order_by(db.RolloutTransition.id.desc())
            .limit(HISTORY)
        )
    )
    evaluation = (last.evidence or {}).get("evaluation", {}) if last is not None else {}
    out.update(
        {
            "plan": row.plan,
            "from_version": row.from_version,
            "reason": row.reason,
            "ticket": row.ticket,
            "created_by": row.created_by,
            "approved_by": row.approved_by,
            "approved_at": _iso(row.approved_at),
            "completed_at": _iso(row.completed_at),
            "stage": stage,
            "devices": devices,
            "gates": list(evaluation.get("results", [])),
            "verdict": last.verdict if last is not None else None,
            "evaluated_at": _iso(last.evaluated_at) if last is not None else None,
            "history": [
                {
                    "at": _iso(t.at),
                    "actor": t.actor,
                    "action": t.action,
                    "state": t.state,
                    "stage": t.stage,
                    "reason": t.reason,
                    "ticket": t.ticket,
                }
                for t in reversed(history)
            ],
        }
    )
    return out


def device_counts(s: Session, row: db.Rollout, now: datetime) -> dict[str, int]:
    """The rollout's devices per state, plus ``running`` (reporting the version) and
    ``offline`` (not seen for :data:`OFFLINE_AFTER_S`)."""
    rd, a = db.RolloutDevice, db.Assignment
    counts = {"total": 0, WAITING: 0, ASSIGNED: 0, "running": 0, ROLLED_BACK: 0, "offline": 0}
    for state, n in s.execute(
        select(rd.state, func.count()).where(rd.rollout_id == row.id).group_by(rd.state)
    ):
        counts["total"] += n
        counts[state] = counts.get(state, 0) + n
    # Assigned, but the assignment no longer carries the rollout: its guard rolled it
    # back, or an operator changed it.
    taken = int(
        s.execute(
            select(func.count())
            .select_from(rd)
            .outerjoin(a, (a.device_id == rd.device_id) & (a.model == row.model))
            .where(
                rd.rollout_id == row.id,
                rd.state == ASSIGNED,
                (a.rollout_id.is_(None)) | (a.rollout_id != row.id),
            )
        ).scalar()
        or 0
    )
    counts[ASSIGNED] -= taken
    counts[ROLLED_BACK] += taken
    serving = db.DeviceServing
    counts["running"] = int(
        s.execute(
            select(func.count(func.distinct(serving.device_id)))
            .select_from(rd)
            .join(serving, serving.device_id == rd.device_id)
            .where(
                rd.rollout_id == row.id,
                serving.model == row.model,
                serving.version == str(row.version),
            )
        ).scalar()
        or 0
    )
    cutoff = now - timedelta(seconds=OFFLINE_AFTER_S)
    counts["offline"] = int(
        s.execute(
            select(func.count())
            .select_from(rd)
            .join(db.Device, db.Device.id == rd.device_id)
            .where(
                rd.rollout_id == row.id,
                (db.Device.last_seen.is_(None)) | (db.Device.last_seen < cutoff),
            )
        ).scalar()
        or 0
    )
    return counts
