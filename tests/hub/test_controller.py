"""The rollout controller's shell: a crash inside or after a transition, a writer that wins
the race, the loop and its lease on SQLite (PostgreSQL: test_controller_postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from modelfleet.clock import ManualClock
from modelfleet.errors import StorageError
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.rollout_lease import ControllerLease, ControllerLoop
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
    (failed,) = service.tick_rollouts()
    assert failed == {"rollout_id": ro["id"], "error": "killed before signing"}
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
    group = service.controller._group

    def pause_meanwhile(key: Any) -> Any:
        # An operator pauses while the controller reads the telemetry.
        if service.get_rollout(ro["id"])["state"] == "running":
            service.rollout_command(ro["id"], "pause", actor=OPERATOR)
        return group(key)

    monkeypatch.setattr(service.controller, "_group", pause_meanwhile)
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


def test_running_totals_equal_a_full_merge_also_with_a_late_committed_lower_id(
    service: HubService, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orjson
    from sqlalchemy import insert, select

    from modelfleet.hub import db, rollout_windows
    from modelfleet.hub.rollout_windows import GroupKey, RunningTotals, summary_of

    monkeypatch.setattr(rollout_windows, "MARGIN", 5)
    enrol_fleet(service, 4)
    feed = Feed(service, clock)
    since = clock.now()
    key = GroupKey("iris", "1", since, role="production")
    running = RunningTotals(key)

    def full() -> dict[str, Any]:
        q = service.telemetry_summary(
            since=since, until=clock.now() + timedelta(days=1), model="iris", version="1",
            role="production",
        )  # fmt: skip
        return {k: q[k] for k in ("windows", "requests", "guard", "devices", "latency_p99_s")}

    for i in range(6):
        clock.advance(60)
        for d in ("d00", "d01", "d02", "d03")[: 1 + i % 4]:
            feed.window(d, 1, None, errors=i)
        with service.context.read() as s:
            running.update(s)
        mine = summary_of(running)
        assert {k: mine[k] for k in full()} == full(), i
    # A record that took a lower id but committed after the last read (PostgreSQL): ids
    # top+10 (committed, read) and top+7 (committed later).
    with service.context.read() as s:
        top, body = s.execute(
            select(db.TelemetryRecord.id, db.TelemetryRecord.body).order_by(
                db.TelemetryRecord.id.desc()
            )
        ).first()  # type: ignore[misc]

    def row(record_id: int, seq: int) -> dict[str, Any]:
        record = {**orjson.loads(body), "seq": seq, "requests": {"ok": 7, "server_error": 3}}
        return {
            "id": record_id, "device_id": "d00", "buffer_id": "late", "seq": seq,
            "kind": "window", "model": "iris", "version": "1", "role": "production",
            "rollout_id": None, "site": "plant-a", "device_at": clock.now(),
            "received_at": clock.now(), "body": orjson.dumps(record).decode(),
        }  # fmt: skip

    for record_id, seq in ((top + 10, 1000), (top + 7, 1001)):
        with service.context.telemetry_write() as s:
            s.execute(insert(db.TelemetryRecord.__table__), [row(record_id, seq)])
        with service.context.read() as s:
            running.update(s)
    assert running.high == top + 10
    fresh = RunningTotals(key)
    with service.context.read() as s:
        fresh.update(s)
    mine, again = summary_of(running), summary_of(fresh)
    assert {k: mine[k] for k in full()} == {k: again[k] for k in full()} == full()


def test_the_controller_keeps_each_groups_totals_between_evaluations(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, ids = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()
    feed = Feed(service, clock)
    clock.advance(60)
    feed.round(ids)
    service.tick_rollouts()  # evaluates: reads both groups from the start
    running = dict(service.controller._running)
    assert {k.rollout_id for k in running} == {ro["id"], None} and len(running) == 2
    highs = {k: r.high for k, r in running.items()}
    clock.advance(10)  # within evaluate_every_s: the evaluation is recomputed, not read
    service.tick_rollouts()
    assert service.controller._running == running
    clock.advance(60)
    feed.round(ids)
    service.tick_rollouts()
    for key, totals in service.controller._running.items():
        assert totals is running[key] and totals.high > highs[key]
