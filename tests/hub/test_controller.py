"""The rollout controller's shell: a crash inside or after a transition, a writer that wins
the race, the loop and its lease on SQLite (PostgreSQL: test_controller_postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet.clock import ManualClock
from modelfleet.errors import StorageError
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.controller import ControllerLease, ControllerLoop
from modelfleet.hub.service import HubService
from tests.hub._rollouts import (
    ADMIN,
    OPERATOR,
    Feed,
    actions,
    assigned,
    audit_of,
    enrol_fleet,
    plan,
)


@pytest.fixture
def fleet(
    service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> Iterator[tuple[HubService, list[str]]]:
    ids = enrol_fleet(service, 20)
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    service.deploy("iris", 1, "all", actor=ADMIN)
    service.register_version("iris", onnx_bytes_v2, actor=ADMIN)
    yield service, ids


def _stages(service: HubService, rollout_id: str) -> list[int]:
    return [
        e.details["stage"] for e in audit_of(service, rollout_id) if e.action == "rollout-stage"
    ]


def test_a_crash_inside_a_transition_commits_nothing_and_the_stage_starts_once_later(
    fleet: tuple[HubService, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _ = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    serials = {d["id"]: d["desired_state"]["serial"] for d in service.list_devices()}

    def crash(*_args: Any, **_kw: Any) -> Any:
        raise RuntimeError("killed while staging desired states")

    monkeypatch.setattr(service.director, "stage", crash)
    with pytest.raises(RuntimeError):
        service.tick_rollouts()
    monkeypatch.undo()
    view = service.get_rollout(ro["id"])
    assert view["stage_index"] == -1 and view["devices"]["waiting"] == 20
    assert assigned(service) == set()  # the assignments went with the transaction
    assert {d["id"]: d["desired_state"]["serial"] for d in service.list_devices()} == serials
    assert actions(service, ro["id"]) == ["rollout-create"]

    service.tick_rollouts()
    service.tick_rollouts()
    assert service.get_rollout(ro["id"])["stage_index"] == 0
    assert _stages(service, ro["id"]) == [0]
    assert len(assigned(service)) == 2


def test_a_crash_after_the_commit_before_signing_resumes_without_repeating_a_stage(
    fleet: tuple[HubService, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    hub_home: tuple[Path, str],
    clock: ManualClock,
) -> None:
    service, ids = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)

    def crash() -> list[str]:
        raise StorageError("killed before signing")

    monkeypatch.setattr(service.director, "publish", crash)
    with pytest.raises(StorageError):
        service.tick_rollouts()
    monkeypatch.undo()
    canaries = assigned(service)
    assert len(canaries) == 2  # committed

    # The process is gone; a new one (the next controller) starts on the same home.
    service.close()
    again = HubService(load_hub_config(hub_home[0]), clock)
    try:
        assert again.director.publish() == []  # start-up signed what the crash left
        again.tick_rollouts()
        view = again.get_rollout(ro["id"])
        assert view["stage_index"] == 0 and assigned(again) == canaries
        feed = Feed(again, clock)
        for _ in range(3):
            clock.advance(300)
            feed.round(ids)
            again.tick_rollouts()
        assert again.get_rollout(ro["id"])["stage_index"] == 1
        assert _stages(again, ro["id"]) == [0, 1]
    finally:
        again.close()


def test_an_operator_command_during_a_tick_wins_and_the_tick_does_nothing(
    fleet: tuple[HubService, list[str]], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, ids = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()
    clock.advance(60)
    Feed(service, clock).round(ids)
    summary = service.controller._summary

    def pause_meanwhile(q: Any) -> Any:
        # An operator pauses while the controller reads the telemetry.
        if service.get_rollout(ro["id"])["state"] == "running":
            service.rollout_command(ro["id"], "pause", actor=OPERATOR)
        return summary(q)

    monkeypatch.setattr(service.controller, "_summary", pause_meanwhile)
    assert service.tick_rollouts() == []
    monkeypatch.undo()
    view = service.get_rollout(ro["id"])
    assert view["state"] == "paused" and view["evaluated_at"] is None
    assert actions(service, ro["id"])[-1] == "rollout-pause"


def test_the_loop_ticks_on_sqlite_where_the_one_process_is_the_controller(
    fleet: tuple[HubService, list[str]],
) -> None:
    service, _ = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    lease = ControllerLease(service.engine)
    assert lease.acquire() and lease.held
    loop = ControllerLoop(service.controller, lease, 5.0, service.clock)
    assert loop.run_once()
    assert service.get_rollout(ro["id"])["stage_index"] == 0
    with pytest.raises(ValueError):
        ControllerLoop(service.controller, lease, 0, service.clock)
