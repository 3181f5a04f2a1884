"""The rollout controller: one pass over the running rollouts per tick, one lease per fleet.

:meth:`RolloutController.tick` reads, for each rollout that is running or awaiting approval,
the facts the pure state machine needs (:class:`~modelfleet.rollout.stages.Facts`):

* the stage's telemetry — windows of the version under test carrying the rollout's id since
  the stage started — and the control group's — the production version the rollout
  replaces (``from_version``, role production), same period — merged exactly as
  ``Telemetry.summary`` merges them, but incrementally (:mod:`.rollout_windows`), into
  :class:`~modelfleet.rollout.gates.GroupStats`;
* guard rollbacks the rollout's devices reported in their check-ins since the stage started,
  counted at once (not at their next telemetry window), and crash/restart events;
* the change window, the safety lag (safety-classified models only), the approval.

It evaluates the gates (:func:`~modelfleet.rollout.gates.evaluate`), calls
:func:`~modelfleet.rollout.stages.tick` and applies the step in ONE write transaction
(:func:`~modelfleet.hub.rollout_apply.apply_step`: assignments, desired states, the rollout
row with its revision checked, the gate evaluation with its evidence, audit entries), then
signs (:meth:`~modelfleet.hub.director.Director.publish`). An evaluation is stored, and
counts towards a gate's ``consecutive``, only when its inputs changed (new windows arrived):
ticking faster than devices report does not fail a gate sooner.

Killed anywhere, a tick leaves the transaction not committed or fully committed; the next
controller reads the stored stage and its start time and goes on from there, never skipping
or repeating a stage. A crash after the commit and before signing is repaired by the next
``publish`` (start-up, upkeep, the next change).

One controller acts among many hub processes: the lease and the thread ``hub serve`` runs
are in :mod:`modelfleet.hub.rollout_lease`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelfleet.errors import ModelfleetError
from modelfleet.hub import db
from modelfleet.hub._values import JSONDict, _iso
from modelfleet.hub.context import HubContext
from modelfleet.hub.director import Director
from modelfleet.hub.drift_rollups import ProfileCache
from modelfleet.hub.rollout_apply import apply_step, progress_of, store_progress
from modelfleet.hub.rollout_windows import CRASH_EVENTS, GroupKey, RunningTotals, summary_of
from modelfleet.rollout.change import in_window, safety_lag_ok
from modelfleet.rollout.gates import Evaluation, GroupStats, evaluate
from modelfleet.rollout.plan import GateMetric, RolloutPlan, parse_plan
from modelfleet.rollout.stages import (
    Action,
    Facts,
    Progress,
    RolloutState,
    Step,
    stage_spec,
    tick,
)
from modelfleet.telemetry.wire import OUTCOME_KEYS, decode_histogram

__all__ = [
    "ACTIONS",
    "CONTROLLER_ACTOR",
    "CRASH_EVENTS",
    "RolloutController",
    "group_stats",
]

log = logging.getLogger("modelfleet.hub.controller")

CONTROLLER_ACTOR: Final = "controller"
"""The audit actor of everything the controller does."""

ACTIONS: Final[Mapping[Action, str]] = {
    Action.START_STAGE: "rollout-stage",
    Action.ROLL_BACK: "rollout-rollback",
    Action.PAUSE: "rollout-pause",
    Action.COMPLETE: "rollout-complete",
    Action.ABORT: "rollout-abort",
    Action.NONE: "rollout-state",
}
"""The audit action of each step the controller applies."""

_ACTIVE: Final = (RolloutState.RUNNING.value, RolloutState.AWAITING_APPROVAL.value)


def group_stats(summary: Mapping[str, Any], *, rollbacks: int = 0, crashes: int = 0) -> GroupStats:
    """:class:`GroupStats` from a telemetry summary (``Telemetry.summary``'s answer).

    Args:
        summary: the merged windows of one group.
        rollbacks: guard rollbacks the group's devices reported in check-ins; the larger of
            this and the windows' count is taken (each rollback is in both, sooner or later).
        crashes: crash and restart events of the group.
    """
    requests = summary.get("requests") or {}
    guard = summary.get("guard") or {}
    shadow = summary.get("shadow") or {}
    overrides = summary.get("overrides") or {}
    mean, samples = None, 0
    if "confidence" in summary:
        hist = decode_histogram(summary["confidence"])
        samples = sum(hist.counts)
        mean = hist.total / samples if samples else None
    return GroupStats(
        devices=int(summary.get("devices", 0)),
        requests=sum(int(requests.get(k, 0)) for k in OUTCOME_KEYS),
        errors=int(requests.get("server_error", 0)) + int(requests.get("timeout", 0)),
        latency_p99_s=summary.get("latency_p99_s"),
        guard_rollbacks=max(int(guard.get("rollbacks", 0)), rollbacks),
        crashes=crashes,
        refusals=int(summary.get("refusals", 0)),
        shadow_compared=int(shadow.get("compared", 0)),
        shadow_disagreed=int(shadow.get("disagreed", 0)),
        confidence_mean=mean,
        confidence_samples=samples,
        drift_score=summary.get("drift_score"),
        drift_rows=int(summary.get("drift_rows") or 0),
        overrides_overridden=int(overrides.get("overridden", 0)),
        overrides_confirmed=int(overrides.get("confirmed", 0)),
    )


@dataclass(frozen=True)
class _Snapshot:
    """What one tick read about one rollout before deciding."""

    row: db.Rollout
    plan: RolloutPlan
    progress: Progress
    safety: bool
    stable_since: tuple[datetime, ...]
    last_verdict: str | None
    last_evidence: Mapping[str, Any] | None
    last_evaluated_at: datetime | None
    control_since: datetime | None  # set when the stage has no control of its own (100 %)


class RolloutController:
    """Ticks the rollouts: facts in, the pure state machine, the step applied.

    Args:
        ctx: the hub's sessions, clock and audit log.
        director: stages desired states in the transaction and signs them after it.
        name: who this controller is (host and process), kept with each evaluation.
        evaluate_every_s: hub-clock seconds between two evaluations of a stage's telemetry
            (each reads every window of the stage so far); guard rollbacks and crashes are
            checked every tick and evaluate at once.
        profiles: the versions' reference profiles: a stage's drift counts are merged
            for the ``drift_score`` gate (issue 9) when its version has one; None: never.
    """

    def __init__(
        self,
        ctx: HubContext,
        director: Director,
        name: str | None = None,
        *,
        evaluate_every_s: float = 30.0,
        profiles: ProfileCache | None = None,
    ) -> None:
        self.evaluate_every_s = evaluate_every_s
        self._profiles = profiles
        self._running: dict[GroupKey, RunningTotals] = {}
        self._used: set[GroupKey] = set()
        self._ctx = ctx
        self._director = director
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"

    def tick(self) -> list[JSONDict]:
        """One pass over every running (or approval-awaiting) rollout.

        Returns:
            What it did: ``[{"rollout_id", "action", "stage", "state", "reason"}]`` for each
            rollout whose row changed (a gate evaluated, a stage started, ...), and
            ``{"rollout_id", "error"}`` for each whose tick failed (a database or signing
            failure: what committed stays consistent; the next tick goes on).

        Raises:
            StorageError: the list of rollouts could not be read.
        """
        with self._ctx.read() as s:
            ids = list(
                s.scalars(
                    select(db.Rollout.id)
                    .where(db.Rollout.state.in_(_ACTIVE))
                    .order_by(db.Rollout.created_at, db.Rollout.id)
                )
            )
        done: list[JSONDict] = []
        self._used = set()
        for rollout_id in ids:
            try:
                outcome = self.tick_one(rollout_id)
            except ModelfleetError as e:  # one rollout's failure does not stop the others
                log.error("rollout %s: tick failed: %s", rollout_id, str(e).partition("\n")[0])
                outcome = {"rollout_id": rollout_id, "error": str(e).partition("\n")[0][:300]}
            if outcome is not None:
                done.append(outcome)
        for key in set(self._running) - self._used:  # stages that moved on
            del self._running[key]
        return done

    def tick_one(self, rollout_id: str) -> JSONDict | None:
        """Tick one rollout (see :meth:`tick`); None when nothing changed."""
        now = self._ctx.now()
        snap = self._read(rollout_id)
        if snap is None:
            return None
        evaluation, streaks_in, stats, new = self._evaluate(snap, now)
        facts = Facts(
            now=now,
            approved=snap.row.approved_by is not None
            or snap.progress.state is not RolloutState.AWAITING_APPROVAL,
            in_window=in_window(snap.plan.change_window, now),
            lag_ok=not snap.safety or safety_lag_ok(snap.plan.safety_lag_s, snap.stable_since, now),
            evaluation=evaluation,
            stage_count=snap.row.stage_count,
        )
        step = tick(snap.plan, snap.progress, facts)
        if step.action is Action.NONE and step.progress == snap.progress and not new:
            return None
        changed = self._apply(snap, step, evaluation, streaks_in, stats, new, now)
        if changed is None:
            return None
        if changed:
            self._director.publish()
        return {
            "rollout_id": rollout_id,
            "action": step.action.value,
            "stage": step.progress.stage,
            "state": step.progress.state.value,
            "reason": step.reason or step.progress.reason,
        }

    # -- facts ---------------------------------------------------------------------------

    def _read(self, rollout_id: str) -> _Snapshot | None:
        with self._ctx.read() as s:
            row = s.get(db.Rollout, rollout_id)
            if row is None or row.state not in _ACTIVE:
                return None
            model = s.scalars(select(db.Model).where(db.Model.name == row.model)).first()
            safety = bool(model is not None and model.safety_classified)
            stable = tuple(
                s.scalars(
                    select(db.Rollout.stable_since).where(
                        db.Rollout.model == row.model,
                        db.Rollout.version == row.version,
                        db.Rollout.id != row.id,
                        db.Rollout.stable_since.is_not(None),
                    )
                )
            )
            last = s.scalars(
                select(db.GateEvaluation)
                .where(db.GateEvaluation.rollout_id == row.id, db.GateEvaluation.stage == row.stage)
                .order_by(db.GateEvaluation.id.desc())
                .limit(1)
            ).first()
            plan = parse_plan(row.plan)
            return _Snapshot(
                row=row,
                plan=plan,
                progress=progress_of(row),
                safety=safety,
                stable_since=tuple(t for t in stable if t is not None),
                last_verdict=last.verdict if last is not None else None,
                last_evidence=last.evidence if last is not None else None,
                last_evaluated_at=last.evaluated_at if last is not None else None,
                control_since=self._control_since(s, row, plan),
            )

    @staticmethod
    def _control_since(s: Session, row: db.Rollout, plan: RolloutPlan) -> datetime | None:
        """When the control window starts, if not at the stage's start: a stage that reaches
        the whole fleet leaves no device on the control version, so its gates compare with
        the control since the previous stage started (the last period it had one)."""
        if row.stage <= 0 or stage_spec(plan, row.stage).percent < 100.0:
            return None
        t = db.RolloutTransition
        started: datetime | None = s.scalars(
            select(t.at)
            .where(
                t.rollout_id == row.id,
                t.stage == row.stage - 1,
                t.action.in_(("rollout-stage", "rollout-promote")),
            )
            .order_by(t.id)
            .limit(1)
        ).first()
        return started

    def _evaluate(
        self, snap: _Snapshot, now: datetime
    ) -> tuple[Evaluation | None, dict[str, int], JSONDict, bool]:
        """The current stage's evaluation, the streaks it started from, its inputs, and
        whether it is new (else it is the last stored one, recomputed from its evidence).

        A new evaluation needs new inputs and, within :attr:`evaluate_every_s` of the last
        one, more guard rollbacks reported in check-ins than it saw (those count at once);
        otherwise the telemetry is not even read again."""
        row, progress = snap.row, snap.progress
        since = progress.stage_started_at
        if progress.stage < 0 or since is None or now <= since:
            return None, {}, {}, False
        last = snap.last_evidence
        stage_key = GroupKey(row.model, str(row.version), since, rollout_id=row.id)
        control_key = None
        if row.from_version is not None:
            control_since = snap.control_since or since
            control_key = GroupKey(row.model, str(row.from_version), control_since, "production")
        self._used.update(k for k in (stage_key, control_key) if k is not None)
        rollbacks = self._rollbacks(row, since)
        if last is not None and snap.last_evaluated_at is not None:
            seen = (last.get("stats") or {}).get("stage") or {}
            recent = (now - snap.last_evaluated_at).total_seconds() < self.evaluate_every_s
            if recent and rollbacks <= seen.get("guard_rollbacks", 0):
                return self._recompute(snap.plan, last)
        if self._drift_gated(snap.plan):
            self._watch_drift(stage_key)
        summary = self._group(stage_key)
        stage = group_stats(summary, rollbacks=rollbacks, crashes=int(summary["crashes"]))
        control = None
        if control_key is not None:
            summary = self._group(control_key)
            control = group_stats(summary, crashes=int(summary["crashes"]))
        stats: JSONDict = {
            "stage": stage.to_dict(),
            "control": control.to_dict() if control is not None else None,
        }
        if last is not None and last.get("stats") == stats:
            return self._recompute(snap.plan, last)
        streaks_in = dict(progress.streaks)
        return evaluate(snap.plan.gates, stage, control, streaks_in), streaks_in, stats, True

    @staticmethod
    def _recompute(
        plan: RolloutPlan, evidence: Mapping[str, Any]
    ) -> tuple[Evaluation, dict[str, int], JSONDict, bool]:
        """The stored evaluation again, from its evidence (the pure function gives the same)."""
        stats: JSONDict = dict(evidence.get("stats") or {})
        stage = GroupStats(**stats["stage"])
        control = GroupStats(**stats["control"]) if stats.get("control") else None
        streaks_in = {str(k): int(v) for k, v in (evidence.get("streaks_in") or {}).items()}
        return evaluate(plan.gates, stage, control, streaks_in), streaks_in, stats, False

    @staticmethod
    def _drift_gated(plan: RolloutPlan) -> bool:
        return any(g.metric is GateMetric.DRIFT_SCORE for g in plan.gates)

    def _watch_drift(self, key: GroupKey) -> None:
        """Merge the group's drift counts too (its version's reference profile), from the
        start: a group first read without them is read again once."""
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = RunningTotals(key)
        if running.profile is not None or self._profiles is None:
            return
        with self._ctx.read() as s:
            profile = self._profiles.reference(s, key.model, key.version)
        if profile is not None:
            self._running[key] = RunningTotals(key, profile=profile)

    def _group(self, key: GroupKey) -> JSONDict:
        """The group's merged windows so far (read incrementally, :mod:`.rollout_windows`)."""
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = RunningTotals(key)
        with self._ctx.read() as s:
            running.update(s)
        return summary_of(running)

    def _rollbacks(self, row: db.Rollout, since: datetime) -> int:
        """Guard rollbacks the rollout's devices reported in check-ins since ``since`` (at
        once: before their telemetry window says so)."""
        with self._ctx.read() as s:
            members = select(db.RolloutDevice.device_id).where(
                db.RolloutDevice.rollout_id == row.id
            )
            ev = db.DeviceRollbackEvent
            return int(
                s.execute(
                    select(func.count()).where(
                        ev.model == row.model,
                        ev.from_version == row.version,
                        ev.received_at >= since,
                        ev.device_id.in_(members),
                    )
                ).scalar()
                or 0
            )

    # -- apply ---------------------------------------------------------------------------

    def _apply(
        self,
        snap: _Snapshot,
        step: Step,
        evaluation: Evaluation | None,
        streaks_in: Mapping[str, int],
        stats: JSONDict,
        new: bool,
        now: datetime,
    ) -> bool | None:
        """Write the tick's outcome in one transaction. Returns whether devices changed, or
        None when the row moved on since it was read (another writer won; nothing done)."""
        with self._ctx.write() as s:
            row = s.get(db.Rollout, snap.row.id)
            if row is None or row.revision != snap.row.revision:
                log.info("rollout %s changed while it was evaluated; next tick", snap.row.id)
                return None
            if new and evaluation is not None:
                self._store_evaluation(s, row, snap, evaluation, streaks_in, stats, now)
            progress = progress_of(row)
            if step.action is not Action.NONE or step.progress.state is not progress.state:
                done = apply_step(
                    self._ctx,
                    self._director,
                    s,
                    row,
                    snap.plan,
                    step,
                    actor=CONTROLLER_ACTOR,
                    action=ACTIONS[step.action],
                    details={"controller": self.name},
                )
                log.info(
                    "rollout %s: %s (stage %d, %s): %s",
                    row.id,
                    step.action.value,
                    row.stage,
                    row.state,
                    step.reason,
                )
                return bool(done.devices)
            if step.progress != progress:
                store_progress(row, step.progress, now)
            return False

    def _store_evaluation(
        self,
        s: Session,
        row: db.Rollout,
        snap: _Snapshot,
        evaluation: Evaluation,
        streaks_in: Mapping[str, int],
        stats: JSONDict,
        now: datetime,
    ) -> None:
        since = snap.progress.stage_started_at
        s.add(
            db.GateEvaluation(
                rollout_id=row.id,
                stage=row.stage,
                evaluated_at=now,
                verdict=evaluation.verdict.value,
                evidence={
                    "evaluation": evaluation.to_dict(),
                    "stats": stats,
                    "streaks_in": dict(streaks_in),
                    "since": _iso(since),
                    "until": _iso(now),
                    "from_version": row.from_version,
                    "controller": self.name,
                },
            )
        )
        if snap.last_verdict == evaluation.verdict.value:
            return
        reason = evaluation.reason
        s.add(
            db.RolloutTransition(
                rollout_id=row.id,
                at=now,
                actor=CONTROLLER_ACTOR,
                action="rollout-gate",
                state=row.state,
                stage=row.stage,
                reason=reason[:2000],
                ticket=row.ticket,
            )
        )
        self._ctx.audit(
            s,
            CONTROLLER_ACTOR,
            "rollout-gate",
            row.id,
            {
                "stage": row.stage,
                "verdict": evaluation.verdict.value,
                "previous": snap.last_verdict,
                "reason": reason,
                "results": [r.to_dict() for r in evaluation.results],
                "controller": self.name,
            },
            row.ticket,
        )
