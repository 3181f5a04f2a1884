"""Rollouts (issue 8): create one from a plan, read it, and the operators' commands.

A rollout is a model version, a target selector and a plan (:mod:`modelfleet.rollout.plan`).
Creating one resolves the selector to devices *now* and stores each device's cohort (the
first stage that reaches it, :func:`~modelfleet.rollout.cohorts.plan_cohorts`); devices
enrolled later are not added. A rollout of a safety-classified model needs a change ticket
and waits in ``awaiting_approval`` until a principal with the approver role other than its
creator approves it; any other starts ``running`` and the controller
(:mod:`modelfleet.hub.controller`) starts its first stage at its next tick.

Operator commands (pause, resume, promote, rollback, abort) go through the pure
:func:`modelfleet.rollout.stages.operator` and are applied like the controller's steps
(:func:`~modelfleet.hub.rollout_apply.apply_step`): one transaction with the audit entry,
signed after the commit.

Views (JSON-ready, the API's shapes):

* summary: ``{"id", "model", "version", "state", "stage_name", "stage_index", "stages",
  "devices_total", "created_at", "updated_at"}``
* view: summary + ``{"plan", "from_version", "reason", "ticket", "created_by",
  "approved_by", "approved_at", "completed_at", "stage": {"index", "name", "percent",
  "mode", "share", "started_at", "soak_s", "soak_left_s"} | None, "devices": {"total",
  "waiting", "assigned", "running", "rolled_back", "offline"}, "gates": [GateResult dict],
  "verdict", "evaluated_at", "history": [{"at", "actor", "action", "state", "stage",
  "reason", "ticket"}] (the last 20, oldest first)}``
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from modelfleet.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
)
from modelfleet.hub import db
from modelfleet.hub._values import JSONDict, _check_slo, _iso
from modelfleet.hub.approvals import refuse_unapproved, refuse_unsigned
from modelfleet.hub.auth import Permission, Principal, check
from modelfleet.hub.catalog import Catalog
from modelfleet.hub.context import HubContext
from modelfleet.hub.director import Director
from modelfleet.hub.rollout_apply import WAITING, apply_step, progress_of
from modelfleet.hub.rollout_views import OFFLINE_AFTER_S, rollout_summary, rollout_view
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.rollout.change import in_window
from modelfleet.rollout.cohorts import blast_radius_groups, plan_cohorts
from modelfleet.rollout.desired_state import Mode
from modelfleet.rollout.plan import GateMetric, RolloutPlan, parse_plan
from modelfleet.rollout.stages import (
    TERMINAL,
    Action,
    Command,
    RolloutState,
    Step,
    initial_progress,
    operator,
    stage_spec,
)

__all__ = ["COMMANDS", "MAX_EVALUATIONS", "OFFLINE_AFTER_S", "Rollouts", "load_plan"]

COMMANDS: Final[tuple[Command, ...]] = ("pause", "resume", "promote", "rollback", "abort")
"""The operator commands (``approve`` is separate: it needs the approver role)."""

MAX_EVALUATIONS: Final = 1000
"""Most evaluation rows one request answers."""

_UNFINISHED: Final = tuple(state.value for state in RolloutState if state not in TERMINAL)
_INT32_MAX: Final = 2**31 - 1
_MAX_TICKET: Final = 128
_MAX_STRING: Final = 4096


def _no_nul(value: Any, path: str = "plan") -> None:
    """Refuse NUL characters and over-long strings anywhere in a plan document (PostgreSQL
    text cannot store NUL; a 400 here rather than a 503 from the database)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInputError(f"{path}: must not contain NUL characters")
        if len(value) > _MAX_STRING:
            raise InvalidInputError(f"{path}: longer than {_MAX_STRING} characters")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _no_nul(k, path)
            _no_nul(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _no_nul(v, f"{path}[{i}]")


def load_plan(doc: object) -> RolloutPlan:
    """Parse a plan document from a request (the YAML shape or ``RolloutPlan.to_dict()``).

    Raises:
        InvalidInputError: not an object, NUL characters, or what :func:`parse_plan` refuses.
    """
    if not isinstance(doc, Mapping):
        raise InvalidInputError("a rollout plan must be a JSON object")
    _no_nul(doc)
    try:
        plan = parse_plan(doc)
    except InvalidInputError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
        raise InvalidInputError(f"invalid rollout plan: {e}") from e
    if not 1 <= plan.version <= _INT32_MAX:
        raise InvalidInputError(f"version: must be between 1 and {_INT32_MAX}")
    if plan.ticket is not None and len(plan.ticket) > _MAX_TICKET:
        raise InvalidInputError(f"change.ticket: at most {_MAX_TICKET} characters")
    return plan


def subject_of(actor: str) -> str:
    """The subject of an audit actor ``"role:subject"`` (the person behind the token)."""
    return actor.partition(":")[2] or actor


def _rollout_devices_table() -> Table:
    table = db.RolloutDevice.__table__
    assert isinstance(table, Table)
    return table


class Rollouts:
    """Rollouts in the database: creation, views, operator commands, approval.

    Args:
        ctx: the hub's sessions, clock and audit log.
        catalog: model and version lookups.
        director: stages desired states in the transaction and signs them after it.
    """

    def __init__(self, ctx: HubContext, catalog: Catalog, director: Director) -> None:
        self._ctx = ctx
        self._catalog = catalog
        self._director = director

    # -- create --------------------------------------------------------------------------

    def create(self, doc: object, actor: str) -> JSONDict:
        """See ``HubService.create_rollout``."""
        plan = load_plan(doc)
        slo = _check_slo(plan.slo)
        rollout_id = f"ro-{secrets.token_hex(8)}"
        now = self._ctx.now()
        with self._ctx.write() as s:
            model = self._catalog.model_row(s, plan.model)
            version = self._catalog.version_row(s, plan.model, plan.version)
            if version.revoked:
                raise InvalidInputError(f"{plan.model} version {plan.version} is revoked")
            refuse_unapproved(s, self._ctx.config, plan.model, plan.version)  # issue 10
            refuse_unsigned(self._director.trust, plan.model, plan.version)  # ADR 0043
            if any(g.metric is GateMetric.DRIFT_SCORE for g in plan.gates):
                self._check_profile(plan, version)
            if model.safety_classified and not plan.ticket:
                raise InvalidInputError(
                    f"{plan.model} is safety-classified: its rollouts need a change ticket "
                    "(change.ticket)"
                )
            targets, groups = self._resolve(s, plan)
            self._check_free(s, plan.model, targets)
            cohorts = plan_cohorts(targets, rollout_id, plan.percents, groups)
            current = {
                a.device_id: a
                for a in s.scalars(select(db.Assignment).where(db.Assignment.model == plan.model))
                if a.device_id in cohorts.stage_of
            }
            self._check_modes(plan, cohorts.stage_of, current)
            from_version = self._control_version(plan.version, current.values())
            progress = initial_progress(needs_approval=model.safety_classified)
            row = db.Rollout(
                id=rollout_id,
                model=plan.model,
                version=plan.version,
                from_version=from_version,
                plan=plan.to_dict(),
                state=progress.state.value,
                stage=progress.stage,
                stage_count=cohorts.stages,
                stage_started_at=progress.stage_started_at,
                streaks=dict(progress.streaks),
                reason=progress.reason,
                ticket=plan.ticket,
                created_by=actor,
                created_at=now,
                updated_at=now,
                revision=1,
            )
            s.add(row)
            s.flush()
            rows = [
                {
                    "rollout_id": rollout_id,
                    "device_id": device_id,
                    "stage_of": k,
                    "assigned_at": None,
                    "state": WAITING,
                }
                for device_id, k in cohorts.stage_of.items()
            ]
            for i in range(0, len(rows), 1000):
                s.execute(insert(_rollout_devices_table()), rows[i : i + 1000])
            s.add(
                db.RolloutTransition(
                    rollout_id=rollout_id,
                    at=now,
                    actor=actor,
                    action="rollout-create",
                    state=row.state,
                    stage=row.stage,
                    reason=progress.reason,
                    ticket=plan.ticket,
                )
            )
            self._ctx.audit(
                s,
                actor,
                "rollout-create",
                rollout_id,
                {
                    "model": plan.model,
                    "version": plan.version,
                    "from_version": from_version,
                    "devices": len(rows),
                    "stages": cohorts.stages,
                    "sizes": cohorts.sizes(),
                    "state": row.state,
                    "slo": slo,
                    "name": plan.name,
                },
                plan.ticket,
            )
        return self.get(rollout_id)

    def _check_profile(self, plan: RolloutPlan, version: db.ModelVersion) -> None:
        """A ``drift_score`` gate needs the version's reference profile (issue 9): without
        one the gate could only hold, and the rollout would never pass it."""
        manifest = PackageManifest.from_json(self._catalog.store.read(version.manifest_sha256))
        if manifest.reference_profile is None:
            raise InvalidInputError(
                f"gates: drift_score needs a reference profile, and {plan.model} version "
                f"{plan.version} was registered without one (register it with --reference)"
            )

    def _resolve(self, s: Session, plan: RolloutPlan) -> tuple[list[str], dict[str, str]]:
        """The target devices (by id) and their blast-radius groups."""
        sel = plan.selector
        gone = select(db.DeviceDecommission.device_id)  # issue 10: decommissioned devices
        devices = s.execute(
            select(db.Device.id, db.Device.site, db.Device.tags).where(db.Device.id.not_in(gone))
        ).all()
        if sel.devices:
            known = {d for d, _, _ in devices}
            unknown = [d for d in sel.devices if d not in known]
            if unknown:
                raise NotFoundError(f"no device {', '.join(repr(d) for d in unknown[:20])}")
        targets = [d for d, site, tags in devices if sel.matches(d, site, list(tags))]
        if not targets:
            raise InvalidInputError("target: the selector matches no enrolled device")
        tags_of = {d: [t for t in tags if isinstance(t, str)] for d, _, tags in devices}
        groups = blast_radius_groups({d: tags_of[d] for d in targets}, plan.blast_radius_tag)
        return sorted(targets), groups

    @staticmethod
    def _check_free(s: Session, model: str, targets: Sequence[str]) -> None:
        """Refuse devices that an unfinished rollout of the same model holds: two rollouts
        must not take turns assigning one device."""
        r, rd = db.Rollout, db.RolloutDevice
        busy: dict[str, str] = {}
        for i in range(0, len(targets), 500):
            chunk = targets[i : i + 500]
            for device_id, rollout_id in s.execute(
                select(rd.device_id, rd.rollout_id)
                .join(r, r.id == rd.rollout_id)
                .where(r.model == model, r.state.in_(_UNFINISHED), rd.device_id.in_(chunk))
            ):
                busy.setdefault(device_id, rollout_id)
        if busy:
            names = ", ".join(f"{d} ({busy[d]})" for d in sorted(busy)[:20])
            raise ConflictError(
                f"{len(busy)} target device(s) are in an unfinished rollout of {model!r}: "
                f"{names}; finish, roll back or abort it first"
            )

    @staticmethod
    def _check_modes(
        plan: RolloutPlan, stage_of: Mapping[str, int], current: Mapping[str, db.Assignment]
    ) -> None:
        """Split and shadow need a production version on the device: refuse the plan when a
        device reaches such a stage without one (as a plain deploy does)."""
        partial = [k for k, spec in enumerate(plan.stages) if spec.mode is not Mode.FULL]
        if not partial:
            return
        last = max(partial)
        missing = sorted(d for d, k in stage_of.items() if k <= last and d not in current)
        if missing:
            name = plan.stages[last].name
            raise InvalidInputError(
                f"stage {name!r} is {plan.stages[last].mode.value}: it needs a production "
                f"version of {plan.model!r} on its devices; none on "
                f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}"
            )

    @staticmethod
    def _control_version(version: int, current: Any) -> int | None:
        """The production most target devices run (not the version rolled out)."""
        counts = Counter(a.production_version for a in current if a.production_version != version)
        if not counts:
            return None
        best: int = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        return best

    # -- reads ---------------------------------------------------------------------------

    def row(self, s: Session, rollout_id: str) -> db.Rollout:
        """Raises: NotFoundError: no such rollout."""
        row = s.get(db.Rollout, rollout_id)
        if row is None:
            raise NotFoundError(f"no rollout {rollout_id!r}")
        return row

    def list_rollouts(
        self, state: str | None = None, model: str | None = None, limit: int = 100
    ) -> list[JSONDict]:
        """See ``HubService.list_rollouts``."""
        if state is not None:
            try:
                RolloutState(state)
            except ValueError:
                names = ", ".join(s.value for s in RolloutState)
                raise InvalidInputError(f"unknown state {state!r}; use one of {names}") from None
        with self._ctx.read() as s:
            query = select(db.Rollout).order_by(db.Rollout.created_at.desc(), db.Rollout.id)
            if state is not None:
                query = query.where(db.Rollout.state == state)
            if model is not None:
                query = query.where(db.Rollout.model == model)
            rows = list(s.scalars(query.limit(max(1, min(limit, 1000)))))
            totals = dict(
                s.execute(
                    select(db.RolloutDevice.rollout_id, func.count())
                    .where(db.RolloutDevice.rollout_id.in_([r.id for r in rows]))
                    .group_by(db.RolloutDevice.rollout_id)
                ).all()
            )
            return [rollout_summary(r, int(totals.get(r.id, 0))) for r in rows]

    def get(self, rollout_id: str) -> JSONDict:
        """See ``HubService.get_rollout``."""
        with self._ctx.read() as s:
            return self.view(s, self.row(s, rollout_id))

    def view(self, s: Session, row: db.Rollout) -> JSONDict:
        """The full view of a rollout (see the module docstring)."""
        return rollout_view(s, row, self._ctx.now())

    def evaluations(self, rollout_id: str, limit: int = 50) -> list[JSONDict]:
        """See ``HubService.rollout_evaluations``."""
        with self._ctx.read() as s:
            row = self.row(s, rollout_id)
            plan = parse_plan(row.plan)
            rows = s.scalars(
                select(db.GateEvaluation)
                .where(db.GateEvaluation.rollout_id == rollout_id)
                .order_by(db.GateEvaluation.id.desc())
                .limit(max(1, min(limit, MAX_EVALUATIONS)))
            )
            return [
                {
                    "id": e.id,
                    "rollout_id": e.rollout_id,
                    "stage": e.stage,
                    "stage_name": stage_spec(plan, e.stage).name if e.stage >= 0 else None,
                    "evaluated_at": _iso(e.evaluated_at),
                    "verdict": e.verdict,
                    "evidence": e.evidence,
                }
                for e in rows
            ]

    # -- commands ------------------------------------------------------------------------

    def command(
        self,
        rollout_id: str,
        command: str,
        actor: str,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> JSONDict:
        """See ``HubService.rollout_command``."""
        if command not in COMMANDS:
            raise InvalidInputError(f"unknown command {command!r}; use {', '.join(COMMANDS)}")
        now = self._ctx.now()
        with self._ctx.write() as s:
            row = self.row(s, rollout_id)
            plan = parse_plan(row.plan)
            step = operator(
                plan,
                progress_of(row),
                command,  # checked against COMMANDS above
                now,
                stage_count=row.stage_count,
                in_window=in_window(plan.change_window, now),
                reason=reason or "",
            )
            apply_step(
                self._ctx,
                self._director,
                s,
                row,
                plan,
                step,
                actor=actor,
                action=f"rollout-{command}",
                ticket=ticket,
                details={"command": command, "operator_reason": reason},
            )
            view = self.view(s, row)
        self._director.publish()
        return view

    def approve(
        self,
        rollout_id: str,
        approver: Principal,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> JSONDict:
        """See ``HubService.approve_rollout``."""
        check(approver, Permission.APPROVE)
        now = self._ctx.now()
        with self._ctx.write() as s:
            row = self.row(s, rollout_id)
            if row.state != RolloutState.AWAITING_APPROVAL.value:
                raise ConflictError(f"rollout {rollout_id} is {row.state}, not awaiting approval")
            if subject_of(row.created_by) == approver.subject:
                raise ForbiddenError(
                    "a rollout needs a second person's approval: its creator cannot approve it"
                )
            plan = parse_plan(row.plan)
            row.approved_by, row.approved_at = approver.actor, now
            why = f"approved by {approver.actor}" + (f": {reason}" if reason else "")
            progress = replace(progress_of(row), state=RolloutState.RUNNING, reason=why)
            apply_step(
                self._ctx,
                self._director,
                s,
                row,
                plan,
                Step(Action.NONE, progress, None, why),
                actor=approver.actor,
                action="rollout-approve",
                ticket=ticket,
                details={"approved_by": approver.actor, "operator_reason": reason},
            )
            return self.view(s, row)
