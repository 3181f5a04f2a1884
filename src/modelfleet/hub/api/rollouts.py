"""Staged rollouts (issue 8): create from a plan, list, inspect, evidence, commands."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request

from modelfleet.hub.api._deps import Service, Who, check_length
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.bodies import (
    GateEvaluationOut,
    RolloutActionIn,
    RolloutOut,
    RolloutSummaryOut,
)
from modelfleet.hub.auth import Permission, check
from modelfleet.hub.rollouts import MAX_EVALUATIONS
from modelfleet.rollout.stages import RolloutState

__all__ = ["router"]

router = APIRouter(tags=["rollouts"])

#: Largest plan document accepted (a plan naming 10,000 devices explicitly is ~250 KB).
MAX_PLAN_BYTES = 4 << 20

RolloutId = Annotated[str, Path(min_length=1, max_length=64, description="a rollout id (ro-...)")]
_Action = Annotated[RolloutActionIn | None, Body()]


@router.post(
    "/rollouts",
    status_code=201,
    response_model=RolloutOut,
    responses=error_responses(400, 401, 403, 404, 409, 413),
)
def create_rollout(
    request: Request,
    plan: Annotated[
        dict[str, Any],
        Body(
            description="the rollout plan: the YAML shape after safe_load, or "
            "RolloutPlan.to_dict() (model, version, target, stages, gates, blast_radius, "
            "change, on_failure, safety_lag, slo, name)"
        ),
    ],
    who: Who,
    service: Service,
) -> dict[str, Any]:
    """Create a rollout (operator). A safety-classified model's rollout needs a change
    ticket and waits for an approver; others start at the controller's next tick."""
    check(who, Permission.OPERATE)
    check_length(request, MAX_PLAN_BYTES)
    return service.create_rollout(plan, actor=who.actor)


@router.get(
    "/rollouts", response_model=list[RolloutSummaryOut], responses=error_responses(400, 401, 403)
)
def list_rollouts(
    who: Who,
    service: Service,
    state: Annotated[RolloutState | None, Query()] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Rollouts, newest first (viewer)."""
    check(who, Permission.READ)
    return service.list_rollouts(
        state=state.value if state is not None else None, model=model, limit=limit
    )


@router.get(
    "/rollouts/{rollout_id}",
    response_model=RolloutOut,
    responses=error_responses(400, 401, 403, 404),
)
def get_rollout(rollout_id: RolloutId, who: Who, service: Service) -> dict[str, Any]:
    """A rollout: its stage, devices per state, the gates' last values, history (viewer)."""
    check(who, Permission.READ)
    return service.get_rollout(rollout_id)


@router.get(
    "/rollouts/{rollout_id}/evaluations",
    response_model=list[GateEvaluationOut],
    responses=error_responses(400, 401, 403, 404),
)
def rollout_evaluations(
    rollout_id: RolloutId,
    who: Who,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_EVALUATIONS)] = 50,
) -> list[dict[str, Any]]:
    """The stored gate evaluations with their evidence, newest first (viewer)."""
    check(who, Permission.READ)
    return service.rollout_evaluations(rollout_id, limit)


@router.post(
    "/rollouts/{rollout_id}/approve",
    response_model=RolloutOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
def approve_rollout(
    rollout_id: RolloutId, who: Who, service: Service, body: _Action = None
) -> dict[str, Any]:
    """Approve a safety-classified model's rollout (approver; never its creator)."""
    check(who, Permission.APPROVE)
    body = body or RolloutActionIn()
    return service.approve_rollout(rollout_id, who, reason=body.reason, ticket=body.ticket)


@router.post(
    "/rollouts/{rollout_id}/{command}",
    response_model=RolloutOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
def rollout_command(
    rollout_id: RolloutId,
    command: Annotated[Literal["pause", "resume", "promote", "rollback", "abort"], Path()],
    who: Who,
    service: Service,
    body: _Action = None,
) -> dict[str, Any]:
    """Pause, resume, promote (start the next stage now), roll back or abort (operator).
    409 when the rollout's state does not allow it."""
    check(who, Permission.OPERATE)
    body = body or RolloutActionIn()
    return service.rollout_command(
        rollout_id, command, actor=who.actor, reason=body.reason, ticket=body.ticket
    )
