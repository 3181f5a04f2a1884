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
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

from modelfleet.rollout.gates import Evaluation
from modelfleet.rollout.plan import RolloutPlan, StageSpec

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
    raise NotImplementedError


def stage_spec(plan: RolloutPlan, k: int) -> StageSpec:
    """The spec of stage ``k``; blast-radius overflow stages (k >= len(plan.stages)) repeat
    the last stage, named ``<last>+<n>``.

    Raises:
        InvalidInputError: k < 0.
    """
    raise NotImplementedError


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
    raise NotImplementedError


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
    raise NotImplementedError
