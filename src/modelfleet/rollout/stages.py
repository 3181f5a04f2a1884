"""The rollout state machine, pure: facts in, one step out.

One transition function for the controller (:func:`tick`) and one for operators
(:func:`operator`); both refuse illegal moves. The controller reads everything a tick needs
into :class:`Facts`, calls :func:`tick`, and applies the returned :class:`Step` (assignments,
director, the rollout row) in one transaction. Nothing here reads a clock or does I/O.

States::

    awaiting_approval --approved--> running --gate FAIL, policy pause / operator--> paused
    running --last stage passes its soak--> completed        paused --resume--> running
    running|paused --gate FAIL, policy rollback / operator--> rolled_back
    any non-terminal --abort--> aborted        (rolled_back, aborted, completed are terminal)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Literal

from modelfleet.errors import ConflictError, InvalidInputError
from modelfleet.rollout.gates import Evaluation, Verdict
from modelfleet.rollout.plan import FailurePolicy, RolloutPlan, StageSpec

__all__ = [
    "TERMINAL",
    "Action",
    "Command",
    "Facts",
    "Progress",
    "RolloutState",
    "Step",
    "initial_progress",
    "operator",
    "stage_spec",
    "tick",
]


class RolloutState(StrEnum):
    """Where a rollout is."""

    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    COMPLETED = "completed"


TERMINAL = frozenset({RolloutState.ROLLED_BACK, RolloutState.ABORTED, RolloutState.COMPLETED})
"""States nothing leaves."""


@dataclass(frozen=True)
class Progress:
    """A rollout's persisted position.

    Attributes:
        state: the state.
        stage: index of the current stage, -1 before the first starts.
        stage_started_at: when the current stage started (None before the first).
        streaks: gate metric -> consecutive bad evaluations in the current stage.
        reason: why the rollout is where it is (last transition or why it waits).
    """

    state: RolloutState
    stage: int
    stage_started_at: datetime | None
    streaks: Mapping[str, int] = field(default_factory=dict)
    reason: str = ""


class Action(StrEnum):
    """What the caller must do to devices (and the rollout row) for a step."""

    NONE = "none"  # nothing on devices; persist the progress (streaks, reason, state)
    START_STAGE = "start_stage"  # deploy to the devices Step.stage adds
    ROLL_BACK = "roll_back"  # roll every device of the rollout back
    PAUSE = "pause"  # nothing on devices; the rollout is paused
    COMPLETE = "complete"  # nothing on devices; the rollout is done
    ABORT = "abort"  # nothing on devices (they keep what they have); the rollout is aborted


@dataclass(frozen=True)
class Step:
    """One transition: the action, the progress after it, the stage it concerns, why."""

    action: Action
    progress: Progress
    stage: int | None
    reason: str


@dataclass(frozen=True)
class Facts:
    """Everything the controller read for one tick.

    Attributes:
        now: the hub clock's time (aware).
        approved: the rollout needs no approval or has it.
        in_window: :func:`modelfleet.rollout.change.in_window` for the plan's window.
        lag_ok: :func:`modelfleet.rollout.change.safety_lag_ok` (True when no lag applies).
        evaluation: the current stage's gates over its soak so far (None before the first
            stage starts or when not evaluated).
        stage_count: :attr:`modelfleet.rollout.cohorts.CohortPlan.stages`.
    """

    now: datetime
    approved: bool
    in_window: bool
    lag_ok: bool
    evaluation: Evaluation | None
    stage_count: int


Command = Literal["pause", "resume", "promote", "rollback", "abort"]


def initial_progress(needs_approval: bool) -> Progress:
    """A new rollout: awaiting approval, or running with no stage started."""
    if needs_approval:
        return Progress(RolloutState.AWAITING_APPROVAL, -1, None, {}, "awaiting approval")
    return Progress(RolloutState.RUNNING, -1, None, {}, "created")


def stage_spec(plan: RolloutPlan, k: int) -> StageSpec:
    """The spec of stage ``k``; blast-radius overflow stages (k >= len(plan.stages)) repeat
    the last stage, named ``<last>+<n>``.

    Raises:
        InvalidInputError: k < 0.
    """
    if k < 0:
        raise InvalidInputError(f"stage index must not be negative, got {k}")
    if k < len(plan.stages):
        return plan.stages[k]
    last = plan.stages[-1]
    return replace(last, name=f"{last.name}+{k - len(plan.stages) + 1}")


def tick(plan: RolloutPlan, progress: Progress, facts: Facts) -> Step:
    """The controller's transition for one tick.

    * paused or terminal: NONE.
    * awaiting approval: NONE until ``facts.approved``, then as running.
    * no stage started: START_STAGE 0 once inside the window and the safety lag allows.
    * a gate FAIL (at any time in the soak): ROLL_BACK (state rolled_back) or PAUSE (state
      paused) per the plan's failure policy.
    * HOLD/BAD: NONE with reason ``"holding: ..."`` and the new streaks — a stage never
      advances on HOLD, even after its soak.
    * PASS before the soak is over: NONE (``"soaking: ..."``).
    * PASS after the soak: START_STAGE k+1 (inside the window and lag only), or COMPLETE after
      the last stage (``facts.stage_count``).

    Raises:
        InvalidInputError: inconsistent progress (a started stage without a start time, a
            stage beyond ``facts.stage_count``).
    """
    state = progress.state
    if state in TERMINAL:
        return _stay(progress, f"{state.value}: nothing to do")
    if state is RolloutState.PAUSED:
        return _stay(progress, progress.reason or "paused")
    if state is RolloutState.AWAITING_APPROVAL:
        if not facts.approved:
            return _stay(progress, "awaiting approval")
        progress = replace(progress, state=RolloutState.RUNNING)
    _check(progress, facts.stage_count)
    k = progress.stage
    if k < 0:
        blocked = _blocked(facts)
        if blocked:
            return _stay(progress, blocked)
        return _start(plan, progress, 0, facts.now, "")
    ev = facts.evaluation
    if ev is None:
        return _stay(progress, f"holding: stage {stage_spec(plan, k).name} not evaluated yet")
    progress = replace(progress, streaks=ev.streaks)
    if ev.verdict is Verdict.FAIL:
        why = f"gate failed in stage {stage_spec(plan, k).name}: {ev.reason}"
        if plan.failure_policy is FailurePolicy.ROLLBACK:
            after = replace(progress, state=RolloutState.ROLLED_BACK, reason=why)
            return Step(Action.ROLL_BACK, after, k, why)
        after = replace(progress, state=RolloutState.PAUSED, reason=why)
        return Step(Action.PAUSE, after, k, why)
    if ev.verdict is not Verdict.PASS:
        return _stay(progress, f"holding: {ev.reason}")
    assert progress.stage_started_at is not None  # checked by _check
    spec = stage_spec(plan, k)
    soaked = (facts.now - progress.stage_started_at).total_seconds()
    if soaked < spec.soak_s:
        left = spec.soak_s - soaked
        return _stay(progress, f"soaking: stage {spec.name} passes, {left:.0f} s of soak left")
    if k + 1 >= facts.stage_count:
        return _complete(progress, k, f"stage {spec.name} passed its soak: rollout complete")
    blocked = _blocked(facts)
    if blocked:
        return _stay(progress, f"stage {spec.name} passed; {blocked}")
    return _start(plan, progress, k + 1, facts.now, f"stage {spec.name} passed; ")


def operator(
    plan: RolloutPlan,
    progress: Progress,
    command: Command,
    now: datetime,
    *,
    stage_count: int | None = None,
    in_window: bool = True,
    reason: str = "",
) -> Step:
    """An operator's command.

    * ``pause``: running -> paused (PAUSE).
    * ``resume``: paused -> running (NONE); the streaks start again from 0.
    * ``promote``: running or paused -> START_STAGE k+1 now, skipping the rest of the soak
      (COMPLETE after the last stage); refused outside the change window.
    * ``rollback``: running or paused -> rolled_back (ROLL_BACK).
    * ``abort``: any non-terminal state -> aborted (ABORT); devices keep what they have.

    Args:
        stage_count: the cohort plan's stage count (default: the plan's stages).
        in_window: whether the plan's change window is open now (promote only).
        reason: the operator's reason, kept in the progress.

    Raises:
        ConflictError: the command is not allowed in the current state.
        InvalidInputError: an unknown command.
    """
    if command not in _COMMANDS:
        raise InvalidInputError(f"unknown command {command!r}; one of {', '.join(_COMMANDS)}")
    state = progress.state
    if state in TERMINAL:
        raise ConflictError(f"cannot {command} a rollout that is {state.value}")
    count = len(plan.stages) if stage_count is None else stage_count
    note = f": {reason}" if reason else ""
    if command == "abort":
        why = f"aborted by an operator{note}"
        after = replace(progress, state=RolloutState.ABORTED, reason=why)
        return Step(Action.ABORT, after, None, why)
    if state is RolloutState.AWAITING_APPROVAL:
        raise ConflictError(f"cannot {command} a rollout awaiting approval (approve or abort it)")
    _check(progress, count)
    if command == "pause":
        if state is not RolloutState.RUNNING:
            raise ConflictError(f"cannot pause a rollout that is {state.value}")
        why = f"paused by an operator{note}"
        return Step(
            Action.PAUSE, replace(progress, state=RolloutState.PAUSED, reason=why), None, why
        )
    if command == "resume":
        if state is not RolloutState.PAUSED:
            raise ConflictError(f"cannot resume a rollout that is {state.value}")
        why = f"resumed by an operator{note}"
        after = replace(progress, state=RolloutState.RUNNING, streaks={}, reason=why)
        return Step(Action.NONE, after, None, why)
    if command == "rollback":
        why = f"rolled back by an operator{note}"
        after = replace(progress, state=RolloutState.ROLLED_BACK, reason=why)
        return Step(Action.ROLL_BACK, after, max(progress.stage, 0), why)
    # promote
    if not in_window:
        raise ConflictError("cannot promote outside the change window")
    running = replace(progress, state=RolloutState.RUNNING)
    k = progress.stage
    if k + 1 >= count:
        return _complete(running, k, f"promoted by an operator{note}: rollout complete")
    return _start(plan, running, k + 1, now, f"promoted by an operator{note}; ")


_COMMANDS: tuple[str, ...] = ("pause", "resume", "promote", "rollback", "abort")


def _stay(progress: Progress, reason: str) -> Step:
    return Step(Action.NONE, replace(progress, reason=reason), None, reason)


def _start(plan: RolloutPlan, progress: Progress, k: int, now: datetime, why: str) -> Step:
    reason = f"{why}stage {stage_spec(plan, k).name} started"
    after = Progress(RolloutState.RUNNING, k, now, {}, reason)
    return Step(Action.START_STAGE, after, k, reason)


def _complete(progress: Progress, k: int, reason: str) -> Step:
    after = replace(progress, state=RolloutState.COMPLETED, reason=reason)
    return Step(Action.COMPLETE, after, k, reason)


def _blocked(facts: Facts) -> str:
    """Why a stage may not start now, or ""."""
    if not facts.in_window:
        return "waiting for the change window"
    if not facts.lag_ok:
        return "waiting for the safety lag (another site's stable stage)"
    return ""


def _check(progress: Progress, stage_count: int) -> None:
    if stage_count < 1:
        raise InvalidInputError(f"stage count must be at least 1, got {stage_count}")
    if progress.stage < -1 or progress.stage >= stage_count:
        raise InvalidInputError(
            f"stage {progress.stage} is outside the rollout's {stage_count} stages"
        )
    if progress.stage >= 0 and progress.stage_started_at is None:
        raise InvalidInputError(f"stage {progress.stage} has no start time")
