"""The rollout state machine (rollout.stages): tick transitions and operator commands."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from modelfleet.errors import ConflictError, InvalidInputError
from modelfleet.rollout.gates import Evaluation, GateResult, Verdict
from modelfleet.rollout.plan import FailurePolicy, GateMetric, RolloutPlan, Selector
from modelfleet.rollout.stages import (
    TERMINAL,
    Action,
    Command,
    Facts,
    Progress,
    RolloutState,
    initial_progress,
    operator,
    stage_spec,
    tick,
)

T0 = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
PLAN = RolloutPlan("iris", 3, Selector(all=True))  # default stages: soaks 1 h, 1 h, 1 h, 0
PAUSING = replace(PLAN, failure_policy=FailurePolicy.PAUSE)


def evaluation(verdict: Verdict, streak: int = 0) -> Evaluation:
    r = GateResult(
        GateMetric.ERROR_RATE, 0.1, 0.01, 0.02, 5, 900, verdict, streak, f"error_rate: {verdict}"
    )
    overall = Verdict.HOLD if verdict is Verdict.BAD else verdict
    return Evaluation(overall, (r,))


def facts(
    now: datetime = T0,
    verdict: Verdict | None = None,
    *,
    approved: bool = True,
    window: bool = True,
    lag: bool = True,
    stages: int = 4,
    streak: int = 0,
) -> Facts:
    ev = None if verdict is None else evaluation(verdict, streak)
    return Facts(now, approved, window, lag, ev, stages)


def running(stage: int, started: datetime = T0, **kw: object) -> Progress:
    return Progress(RolloutState.RUNNING, stage, started, **kw)  # type: ignore[arg-type]


def test_a_new_rollout_starts_the_first_stage() -> None:
    step = tick(PLAN, initial_progress(False), facts())
    assert step.action is Action.START_STAGE and step.stage == 0
    assert step.progress == Progress(RolloutState.RUNNING, 0, T0, {}, step.reason)
    assert "canary started" in step.reason


@pytest.mark.parametrize(
    ("approved", "window", "lag", "reason"),
    [
        (False, True, True, "awaiting approval"),
        (True, False, True, "waiting for the change window"),
        (True, True, False, "waiting for the safety lag"),
    ],
)
def test_waiting_before_the_first_stage(
    approved: bool, window: bool, lag: bool, reason: str
) -> None:
    start = initial_progress(True)
    step = tick(PLAN, start, facts(approved=approved, window=window, lag=lag))
    assert step.action is Action.NONE and step.stage is None and reason in step.reason
    assert step.progress.stage == -1


def test_approval_moves_to_running_even_when_the_window_is_closed() -> None:
    step = tick(PLAN, initial_progress(True), facts(window=False))
    assert step.action is Action.NONE and step.progress.state is RolloutState.RUNNING
    assert tick(PLAN, step.progress, facts()).action is Action.START_STAGE


def test_a_stage_soaks_then_advances_on_pass() -> None:
    soaking = tick(PLAN, running(0), facts(T0 + timedelta(minutes=59), Verdict.PASS))
    assert soaking.action is Action.NONE and "soaking" in soaking.reason
    assert "60 s of soak left" in soaking.reason
    later = T0 + timedelta(hours=1)
    step = tick(PLAN, soaking.progress, facts(later, Verdict.PASS))
    assert step.action is Action.START_STAGE and step.stage == 1
    assert step.progress == Progress(RolloutState.RUNNING, 1, later, {}, step.reason)


@pytest.mark.parametrize("verdict", [Verdict.HOLD, Verdict.BAD])
def test_a_stage_never_advances_on_hold_even_long_after_the_soak(verdict: Verdict) -> None:
    step = tick(PLAN, running(0), facts(T0 + timedelta(days=30), verdict, streak=1))
    assert step.action is Action.NONE and step.reason.startswith("holding: ")
    assert step.progress.stage == 0 and step.progress.state is RolloutState.RUNNING
    assert step.progress.streaks == {"error_rate": 1}  # the new streaks are kept


def test_no_evaluation_yet_holds() -> None:
    step = tick(PLAN, running(0), facts(T0 + timedelta(hours=2), None))
    assert step.action is Action.NONE and step.reason.startswith("holding")


def test_fail_rolls_back_under_the_rollback_policy_at_any_time_in_the_soak() -> None:
    step = tick(PLAN, running(0), facts(T0 + timedelta(minutes=1), Verdict.FAIL, streak=2))
    assert step.action is Action.ROLL_BACK and step.stage == 0
    assert step.progress.state is RolloutState.ROLLED_BACK
    assert "gate failed in stage canary" in step.reason
    assert step.progress.streaks == {"error_rate": 2}


def test_fail_pauses_under_the_pause_policy_and_stays_paused() -> None:
    step = tick(PAUSING, running(1), facts(T0, Verdict.FAIL))
    assert step.action is Action.PAUSE and step.progress.state is RolloutState.PAUSED
    again = tick(PAUSING, step.progress, facts(T0 + timedelta(hours=5), Verdict.PASS))
    assert again.action is Action.NONE and again.progress.state is RolloutState.PAUSED


def test_fail_wins_over_a_closed_window() -> None:
    step = tick(PLAN, running(2), facts(T0, Verdict.FAIL, window=False, lag=False))
    assert step.action is Action.ROLL_BACK


def test_a_passing_stage_waits_for_the_window_to_advance() -> None:
    late = T0 + timedelta(hours=3)
    step = tick(PLAN, running(0), facts(late, Verdict.PASS, window=False))
    assert step.action is Action.NONE and "waiting for the change window" in step.reason
    assert tick(PLAN, running(0), facts(late, Verdict.PASS)).action is Action.START_STAGE


def test_the_last_stage_completes_without_needing_the_window() -> None:
    step = tick(PLAN, running(3), facts(T0, Verdict.PASS, window=False))  # soak 0
    assert step.action is Action.COMPLETE and step.progress.state is RolloutState.COMPLETED


def test_blast_radius_overflow_stages_run_after_the_plans_last() -> None:
    step = tick(PLAN, running(3), facts(T0, Verdict.PASS, stages=6))
    assert step.action is Action.START_STAGE and step.stage == 4
    assert stage_spec(PLAN, 4).name == "full+1" and stage_spec(PLAN, 4).percent == 100
    step = tick(PLAN, running(5), facts(T0, Verdict.PASS, stages=6))
    assert step.action is Action.COMPLETE


def test_a_whole_rollout_replays_to_the_same_steps() -> None:
    def run() -> list[tuple[str, int | None]]:
        progress, now, out = initial_progress(False), T0, []
        for _ in range(40):
            step = tick(PLAN, progress, facts(now, None if progress.stage < 0 else Verdict.PASS))
            out.append((step.action.value, step.stage))
            progress, now = step.progress, now + timedelta(minutes=20)
            if progress.state in TERMINAL:
                break
        return out

    steps = run()
    assert steps == run()
    starts = [s for a, s in steps if a == "start_stage"]
    assert starts == [0, 1, 2, 3] and steps[-1] == ("complete", 3)


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_do_nothing(state: RolloutState) -> None:
    p = Progress(state, 2, T0)
    assert tick(PLAN, p, facts(T0, Verdict.FAIL)).action is Action.NONE


@pytest.mark.parametrize(
    "progress",
    [Progress(RolloutState.RUNNING, 1, None), Progress(RolloutState.RUNNING, 4, T0)],
    ids=["no-start-time", "beyond-stage-count"],
)
def test_inconsistent_progress_is_refused(progress: Progress) -> None:
    with pytest.raises(InvalidInputError):
        tick(PLAN, progress, facts(T0, Verdict.PASS))


# Operator commands: (state, command) -> action, or None when refused (ConflictError).
PAUSED = RolloutState.PAUSED
RUNNING = RolloutState.RUNNING
AWAITING = RolloutState.AWAITING_APPROVAL
ALLOWED: dict[tuple[RolloutState, str], tuple[Action, RolloutState] | None] = {
    (RUNNING, "pause"): (Action.PAUSE, PAUSED),
    (RUNNING, "resume"): None,
    (RUNNING, "promote"): (Action.START_STAGE, RUNNING),
    (RUNNING, "rollback"): (Action.ROLL_BACK, RolloutState.ROLLED_BACK),
    (RUNNING, "abort"): (Action.ABORT, RolloutState.ABORTED),
    (PAUSED, "pause"): None,
    (PAUSED, "resume"): (Action.NONE, RUNNING),
    (PAUSED, "promote"): (Action.START_STAGE, RUNNING),
    (PAUSED, "rollback"): (Action.ROLL_BACK, RolloutState.ROLLED_BACK),
    (PAUSED, "abort"): (Action.ABORT, RolloutState.ABORTED),
    (AWAITING, "pause"): None,
    (AWAITING, "resume"): None,
    (AWAITING, "promote"): None,
    (AWAITING, "rollback"): None,
    (AWAITING, "abort"): (Action.ABORT, RolloutState.ABORTED),
    **{(t, c): None for t in TERMINAL for c in ("pause", "resume", "promote", "rollback", "abort")},
}


@pytest.mark.parametrize(("state", "command"), sorted(ALLOWED), ids=lambda v: str(v))
def test_operator_commands(state: RolloutState, command: Command) -> None:
    progress = Progress(state, 1 if state is not AWAITING else -1, T0, {"error_rate": 1})
    expected = ALLOWED[(state, command)]
    if expected is None:
        with pytest.raises(ConflictError, match=f"cannot {command}"):
            operator(PLAN, progress, command, T0 + timedelta(minutes=5))
        return
    step = operator(PLAN, progress, command, T0 + timedelta(minutes=5), reason="ops call")
    assert (step.action, step.progress.state) == expected
    assert "ops call" in step.reason and step.progress.reason == step.reason


def test_promote_skips_the_rest_of_the_soak_and_resets_streaks() -> None:
    now = T0 + timedelta(minutes=5)
    step = operator(PLAN, running(1, streaks={"error_rate": 1}), "promote", now)
    assert step.action is Action.START_STAGE and step.stage == 2
    assert step.progress == Progress(RUNNING, 2, now, {}, step.reason)


def test_promote_on_the_last_stage_completes() -> None:
    step = operator(PLAN, running(5), "promote", T0, stage_count=6)
    assert step.action is Action.COMPLETE and step.progress.state is RolloutState.COMPLETED
    step = operator(PLAN, running(3), "promote", T0, stage_count=6)
    assert step.action is Action.START_STAGE and step.stage == 4


def test_promote_before_the_first_stage_starts_it() -> None:
    step = operator(PLAN, initial_progress(False), "promote", T0)
    assert step.action is Action.START_STAGE and step.stage == 0


def test_promote_is_refused_outside_the_change_window() -> None:
    with pytest.raises(ConflictError, match="change window"):
        operator(PLAN, running(1), "promote", T0, in_window=False)


def test_resume_clears_the_streaks_of_a_failed_gate() -> None:
    paused = tick(PAUSING, running(1), facts(T0, Verdict.FAIL, streak=2)).progress
    step = operator(PAUSING, paused, "resume", T0)
    assert step.progress.state is RUNNING and step.progress.streaks == {}
    assert step.progress.stage == 1 and step.progress.stage_started_at == T0


def test_an_unknown_command_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="unknown command"):
        operator(PLAN, running(1), "explode", T0)  # type: ignore[arg-type]
