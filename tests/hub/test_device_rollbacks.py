"""Rollbacks a device did on its own reach the hub as events (issue 6 contract 2), so the
hub's production/previous never drift from the device's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from modelfleet.hub.service import HubService
from modelfleet.rollout.desired_state import DesiredState


@pytest.fixture
def fleet(service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes) -> HubService:
    service.add_device("cam-1", actor="admin:admin")
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.register_version("iris", onnx_bytes_v2, actor="admin:admin")
    service.register_version("iris", onnx_bytes, lineage={"copy": 3}, actor="admin:admin")
    return service


def _event(kind: str, from_version: int, to_version: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "at": "2026-01-01T00:00:00+00:00",
        "model": "iris",
        "kind": kind,
        "from_version": from_version,
        "to_version": to_version,
        "reason": "guard: p99 300 ms > 250 ms",
        "serial": 2,
        **extra,
    }


def _assignment(service: HubService) -> dict[str, Any]:
    a: dict[str, Any] = service.get_device("cam-1")["assignments"][0]
    return a


def _applied(service: HubService, device_id: str, report: dict[str, Any]) -> list[str]:
    applied: list[str] = service.record_report(device_id, report)["applied_rollbacks"]
    return applied


def _signed_state(service: HubService) -> DesiredState:
    """The desired state the director lists now (what the device will fetch)."""
    listed = service.director.listed_state("cam-1")
    assert listed is not None
    return DesiredState.from_json(listed[1])


def test_production_rollback_on_the_device_moves_the_hubs_production_and_previous(
    fleet: HubService,
) -> None:
    fleet.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    fleet.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    assert (_assignment(fleet)["production"], _assignment(fleet)["previous"]) == (2, 1)
    serial = fleet.get_device("cam-1")["desired_state"]["serial"]

    event = _event("production", 2, 1)
    result = fleet.record_report("cam-1", {"applied_serial": serial, "rollbacks": [event]})

    assert result["applied_rollbacks"] == [event["id"]]
    a = _assignment(fleet)
    # exactly what the device did: production back to 1, and no flip-back target
    assert (a["production"], a["candidate"], a["previous"]) == (1, None, None)
    state = _signed_state(fleet)
    assert state.serial == serial + 1
    assignment = state.assignment("iris")
    assert assignment is not None and assignment.production.version == 1
    entry = fleet.audit(limit=1000)[-1]
    assert (entry["actor"], entry["action"]) == ("device:cam-1", "device-rollback")
    assert entry["details"]["event_id"] == event["id"]


def test_candidate_rollback_on_the_device_drops_the_hubs_candidate(fleet: HubService) -> None:
    fleet.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    fleet.deploy("iris", 2, ["cam-1"], mode="split", share=0.2, actor="admin:admin")
    event = _event("candidate", 2, 1)
    assert _applied(fleet, "cam-1", {"rollbacks": [event]}) == [event["id"]]
    a = _assignment(fleet)
    assert (a["production"], a["candidate"], a["mode"], a["share"]) == (1, None, "full", 0.0)
    assignment = _signed_state(fleet).assignment("iris")
    assert assignment is not None and assignment.candidate is None


def test_a_replayed_rollback_event_applies_once(fleet: HubService) -> None:
    fleet.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    fleet.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    event = _event("production", 2, 1)
    fleet.record_report("cam-1", {"rollbacks": [event]})
    # the operator deploys 3 and 2 again: 2 is production, 3... then 2 -> previous is 3
    fleet.deploy("iris", 3, ["cam-1"], actor="admin:admin")
    fleet.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    serial = fleet.get_device("cam-1")["desired_state"]["serial"]
    audit_len = len(fleet.audit(limit=1000))

    # the agent sends its last rollbacks in every report: the old event comes again
    again = fleet.record_report("cam-1", {"rollbacks": [event]})

    assert again["applied_rollbacks"] == [event["id"]]  # applied earlier
    a = _assignment(fleet)
    assert (a["production"], a["previous"]) == (2, 3)
    assert fleet.get_device("cam-1")["desired_state"]["serial"] == serial
    assert "device-rollback" not in [e["action"] for e in fleet.audit(limit=1000)[audit_len:]]


def test_a_stale_rollback_event_is_recorded_and_ignored(fleet: HubService) -> None:
    fleet.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    fleet.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    stale = _event("production", 2, 1)
    # the hub moved on before the report came: 3 is production now
    fleet.deploy("iris", 3, ["cam-1"], actor="admin:admin")
    serial = fleet.get_device("cam-1")["desired_state"]["serial"]

    assert _applied(fleet, "cam-1", {"rollbacks": [stale]}) == []
    a = _assignment(fleet)
    assert (a["production"], a["previous"]) == (3, 2)
    assert fleet.get_device("cam-1")["desired_state"]["serial"] == serial
    # recorded as seen: it stays ignored even once the hub's state would match it
    fleet.rollback("iris", ["cam-1"], actor="admin:admin")  # 3 -> 2, previous None
    fleet.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    fleet.deploy("iris", 2, ["cam-1"], actor="admin:admin")  # production 2, previous 1
    assert _applied(fleet, "cam-1", {"rollbacks": [stale]}) == []
    assert _assignment(fleet)["production"] == 2


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("kind does not match the hub's", _event("candidate", 2, 1)),
        ("previous differs", _event("production", 2, 3)),
        ("unknown model", _event("production", 2, 1, model="nope")),
    ],
)
def test_rollback_events_that_do_not_match_the_hubs_assignment_are_not_applied(
    fleet: HubService, name: str, event: dict[str, Any]
) -> None:
    fleet.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    fleet.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    assert _applied(fleet, "cam-1", {"rollbacks": [event]}) == []
    assert (_assignment(fleet)["production"], _assignment(fleet)["previous"]) == (2, 1)


@pytest.mark.parametrize(
    "bad",
    [
        "not a list",
        ["not an object"],
        [_event("production", 2, 1, id="../x")],
        [_event("sideways", 2, 1)],
        [_event("production", True, 1)],
        [_event("production", 2**40, 1)],
    ],
)
def test_malformed_rollback_events_are_skipped_and_the_report_kept(
    fleet: HubService, bad: Any
) -> None:
    fleet.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    fleet.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    assert _applied(fleet, "cam-1", {"rollbacks": bad, "x": 1}) == []
    assert fleet.get_device("cam-1")["report"]["x"] == 1
    assert _assignment(fleet)["production"] == 2


def test_report_without_rollbacks_returns_an_empty_list(fleet: HubService) -> None:
    assert _applied(fleet, "cam-1", {"applied_serial": 0}) == []
