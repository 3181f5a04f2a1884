"""Drift (issue 9, ADR 0019): explained reports over the hub's drift roll-ups, the
sequential drift state per model and site, and the override-rate state (ADR 0040). Read
endpoints (viewer and up)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from modelfleet.hub.api._deps import Service, Who
from modelfleet.hub.api._errors import error_responses
from modelfleet.hub.api.telemetry import Name, _parse_time, _time_query
from modelfleet.hub.auth import Permission, check

__all__ = ["router"]

router = APIRouter(tags=["drift"])

Version = Annotated[
    str | None, Query(pattern=r"^[1-9][0-9]{0,10}$", description="a version number")
]


@router.get("/drift", response_model=dict[str, Any], responses=error_responses(400, 401, 403, 404))
def report(
    who: Who,
    service: Service,
    model: Annotated[str, Query(min_length=1, max_length=256)],
    version: Version = None,
    site: Name = None,
    since: Annotated[str | None, _time_query("default: until - 24 h")] = None,
    until: Annotated[str | None, _time_query("exclusive; default: now")] = None,
) -> dict[str, Any]:
    """The explained drift of one model version (viewer): its hourly drift roll-ups whose
    hour starts in ``[since, until)``, at one site or all, merged and evaluated against the
    version's reference profile: the combined score and verdict, and per input and output
    column every test's value, bins, epsilon, threshold and verdict. Without ``version``,
    the version with the most rows in the range."""
    check(who, Permission.READ)
    return service.drift_report(
        model,
        version=version,
        site=site,
        since=_parse_time(since, "since"),
        until=_parse_time(until, "until"),
    )


@router.get(
    "/drift/states",
    response_model=list[dict[str, Any]],
    responses=error_responses(400, 401, 403),
)
def states(
    who: Who, service: Service, model: Name = None, site: Name = None
) -> list[dict[str, Any]]:
    """The sequential drift state (stable, warning, drifting) of each model at each site
    (viewer), stepped once per closed hour."""
    check(who, Permission.READ)
    return service.drift_states(model, site)


@router.get(
    "/drift/overrides",
    response_model=list[dict[str, Any]],
    responses=error_responses(400, 401, 403),
)
def override_states(
    who: Who, service: Service, model: Name = None, site: Name = None
) -> list[dict[str, Any]]:
    """The override-rate state (stable, warning, drifting) of each model at each site
    (viewer, ADR 0040): the share of judged answers a human overrode for the version
    serving there, against the previous version's rate at the site (or the configured
    expected rate), stepped once per closed hour."""
    check(who, Permission.READ)
    return service.override_states(model, site)
