"""Rollouts on the hub (issue 8): cohorts stored once, stages gated on telemetry, failure
policies, guard rollbacks at once, change windows, blast radius, audit of every step.

Each test drives the controller by hand (``tick_rollouts``) on a ManualClock and feeds the
telemetry windows agents would send (``Feed``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from modelfleet.clock import ManualClock
from modelfleet.errors import ConflictError, InvalidInputError, NotFoundError
from modelfleet.hub import db
from modelfleet.hub.service import HubService
from modelfleet.rollout.cohorts import plan_cohorts
from tests.hub._rollouts import (
    ADMIN,
    OPERATOR,
    Feed,
    actions,
    assigned,
    audit_of,
    enrol_fleet,
    plan,
    rollback_event,
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


def _stage_of(service: HubService, rollout_id: str) -> dict[str, int]:
    with service.context.read() as s:
        return dict(
            s.execute(
                select(db.RolloutDevice.device_id, db.RolloutDevice.stage_of).where(
                    db.RolloutDevice.rollout_id == rollout_id
                )
            ).all()
        )


def _soak(
    service: HubService, feed: Feed, clock: ManualClock, ids: list[str], **kw: object
) -> None:
    """Ten minutes of windows (two rounds, each evaluated) and a tick at the end."""
    for _ in range(2):
        clock.advance(300)
        feed.round(ids, **kw)  # type: ignore[arg-type]
        service.tick_rollouts()


def test_cohorts_are_the_hash_of_device_and_rollout_and_stages_only_grow(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, ids = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    assert ro["state"] == "running" and ro["stage_index"] == -1
    assert ro["devices"]["total"] == 20 and ro["devices"]["waiting"] == 20
    assert ro["from_version"] == 1
    stored = _stage_of(service, ro["id"])
    # replayed: the same rollout id over the same fleet gives the same cohorts
    assert stored == dict(plan_cohorts(ids, ro["id"], [10, 50, 100]).stage_of)
    assert sorted(stored.values()).count(0) == 2  # ceil(10 % of 20)

    feed = Feed(service, clock)
    seen: list[set[str]] = []
    service.tick_rollouts()
    for _ in range(3):
        seen.append(assigned(service))
        _soak(service, feed, clock, ids)
    assert [len(s) for s in seen] == [2, 10, 20]
    assert seen[0] < seen[1] < seen[2]  # a device in stage k is in every later stage
    assert seen[0] == {d for d, k in stored.items() if k == 0}
    view = service.get_rollout(ro["id"])
    assert view["state"] == "completed"
    assert actions(service, ro["id"]) == [
        "rollout-create",
        "rollout-stage",
        "rollout-gate",
        "rollout-stage",
        "rollout-gate",
        "rollout-stage",
        "rollout-gate",
        "rollout-complete",
    ]


def test_a_stage_holds_without_enough_data_however_long_the_soak(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, ids = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()
    feed = Feed(service, clock)
    canaries = sorted(assigned(service))
    for _ in range(12):  # two hours; the canaries send nothing, the control reports
        clock.advance(600)
        feed.round(ids, skip=canaries)
        service.tick_rollouts()
    view = service.get_rollout(ro["id"])
    assert view["state"] == "running" and view["stage_index"] == 0
    assert view["verdict"] == "hold"
    assert "hold" in view["reason"]
    gate = {g["metric"]: g for g in view["gates"]}["error_rate"]
    assert gate["verdict"] == "hold" and gate["samples"] == 0


def test_a_failing_gate_rolls_back_every_device_that_took_it_to_its_pinned_previous(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, ids = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()
    canaries = assigned(service)
    serials = {d: service.get_device(d)["desired_state"]["serial"] for d in canaries}
    feed = Feed(service, clock)
    bad = {"errors": lambda v: 25 if v == 2 else 0}  # half of v2's requests fail
    clock.advance(60)
    feed.round(ids, **bad)
    service.tick_rollouts()
    assert service.get_rollout(ro["id"])["state"] == "running"  # bad once: not yet
    clock.advance(60)
    feed.round(ids, **bad)
    service.tick_rollouts()
    view = service.get_rollout(ro["id"])
    assert view["state"] == "rolled_back"
    assert view["devices"]["rolled_back"] == len(canaries) and view["devices"]["waiting"] == 18
    for d in canaries:
        device = service.get_device(d)
        (a,) = device["assignments"]
        assert (a["production"], a["candidate"], a["previous"]) == (1, None, None)
        assert device["desired_state"]["serial"] == serials[d] + 1
    assert assigned(service) == set()  # never went further than the canaries
    assert actions(service, ro["id"])[-1] == "rollout-rollback"
    evaluations = service.rollout_evaluations(ro["id"])
    assert evaluations[0]["verdict"] == "fail"
    evidence = evaluations[0]["evidence"]
    assert evidence["stats"]["stage"]["errors"] > 0 and evidence["stats"]["control"] is not None
    # ticking on changes nothing
    service.tick_rollouts()
    assert service.get_rollout(ro["id"])["state"] == "rolled_back"


def test_the_pause_policy_stops_and_keeps_devices_on_the_version(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, ids = fleet
    ro = service.create_rollout(plan(on_failure="pause"), actor=OPERATOR)
    service.tick_rollouts()
    canaries = assigned(service)
    feed = Feed(service, clock)
    for _ in range(2):
        clock.advance(60)
        feed.round(ids, errors=lambda v: 25 if v == 2 else 0)
        service.tick_rollouts()
    view = service.get_rollout(ro["id"])
    assert view["state"] == "paused" and view["stage_index"] == 0
    assert assigned(service) == canaries
    clock.advance(3600)
    service.tick_rollouts()
    assert service.get_rollout(ro["id"])["state"] == "paused"
    view = service.rollout_command(ro["id"], "rollback", actor=OPERATOR, reason="bad canary")
    assert view["state"] == "rolled_back"
    assert assigned(service) == set()
    assert actions(service, ro["id"])[-2:] == ["rollout-pause", "rollout-rollback"]


def test_a_guard_rollback_reported_in_a_check_in_fails_the_stage_at_once(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, _ids = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()
    canary = sorted(assigned(service))[0]
    clock.advance(30)  # no telemetry window yet: the check-in alone says it
    service.record_report(canary, {"rollbacks": [rollback_event(2, 1)]})
    service.tick_rollouts()
    view = service.get_rollout(ro["id"])
    assert view["state"] == "rolled_back"
    gate = {g["metric"]: g for g in view["gates"]}["guard_rollbacks"]
    assert gate["verdict"] == "fail" and gate["value"] == 1
    assert assigned(service) == set()
    (a,) = service.get_device(canary)["assignments"]
    assert a["production"] == 1  # its own rollback; the rollout left it alone


def test_change_window_holds_stages_until_it_opens(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, _ids = fleet
    # The clock starts Thursday 2026-01-01 00:00 UTC = 01:00 in Berlin.
    window = {"tz": "Europe/Berlin", "days": ["thu"], "start": "06:00", "end": "14:00"}
    ro = service.create_rollout(plan(change={"ticket": "CHG-1", "window": window}), actor=OPERATOR)
    service.tick_rollouts()
    assert service.get_rollout(ro["id"])["stage_index"] == -1
    clock.advance(4 * 3600 + 59 * 60)  # 05:59 local
    service.tick_rollouts()
    assert service.get_rollout(ro["id"])["stage_index"] == -1
    clock.advance(60)  # 06:00 local
    service.tick_rollouts()
    view = service.get_rollout(ro["id"])
    assert view["stage_index"] == 0 and view["ticket"] == "CHG-1"
    assert [h["action"] for h in view["history"]] == ["rollout-create", "rollout-stage"]


def test_blast_radius_groups_never_update_two_members_in_one_stage(
    service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    ids = enrol_fleet(service, 20, cells=True)
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    service.deploy("iris", 1, "all", actor=ADMIN)
    service.register_version("iris", onnx_bytes_v2, actor=ADMIN)
    ro = service.create_rollout(plan(blast_radius={"tag_prefix": "cell:"}), actor=OPERATOR)
    stage_of = _stage_of(service, ro["id"])
    for i in range(10):
        pair = [stage_of[ids[2 * i]], stage_of[ids[2 * i + 1]]]
        assert pair[0] != pair[1], f"cell:{i} updates both members in stage {pair[0]}"
    assert ro["stages"] >= 3


def test_creating_refuses_bad_plans_with_clear_errors(
    fleet: tuple[HubService, list[str]],
) -> None:
    service, _ = fleet
    cases = {
        "unknown key": (plan(colour="red"), InvalidInputError),
        "no devices": (plan(target={"sites": ["nowhere"]}), InvalidInputError),
        "unknown device": (plan(target={"devices": ["ghost"]}), NotFoundError),
        "unknown model": (plan(model="nope"), NotFoundError),
        "unknown version": (plan(version=9), NotFoundError),
        "version overflow": (plan(version=2**40), InvalidInputError),
        "NUL": (plan(name="a\x00b"), InvalidInputError),
        "bad slo": (plan(slo={"warp": 9}), InvalidInputError),
        "not an object": ([1, 2], InvalidInputError),
    }
    for name, (doc, error) in cases.items():
        with pytest.raises(error):
            service.create_rollout(doc, actor=OPERATOR)
        assert service.list_rollouts() == [], name


def test_split_stage_needs_production_on_its_devices(
    service: HubService, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    enrol_fleet(service, 4)
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    service.register_version("iris", onnx_bytes_v2, actor=ADMIN)
    stages = [
        {"name": "try", "percent": 50, "soak": "1m", "mode": "split", "share": 0.5},
        {"name": "all", "percent": 100, "soak": 0},
    ]
    with pytest.raises(InvalidInputError, match="split"):
        service.create_rollout(plan(stages=stages), actor=OPERATOR)


def test_promote_starts_the_next_stage_now_and_completes_after_the_last(
    fleet: tuple[HubService, list[str]],
) -> None:
    service, _ = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()
    for stage in (1, 2):
        view = service.rollout_command(ro["id"], "promote", actor=OPERATOR, reason="urgent fix")
        assert view["stage_index"] == stage and view["state"] == "running"
    assert len(assigned(service)) == 20
    view = service.rollout_command(ro["id"], "promote", actor=OPERATOR)
    assert view["state"] == "completed"
    entries = audit_of(service, ro["id"])
    assert [e.action for e in entries][-3:] == ["rollout-promote"] * 3
    assert entries[-3].details["operator_reason"] == "urgent fix"
    assert all(e.actor == OPERATOR for e in entries[-3:])


def test_a_split_stage_adds_a_candidate_then_full_makes_it_production_and_rollback_drops_it(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, ids = fleet
    stages = [
        {"name": "try", "percent": 10, "soak": "5m", "mode": "split", "share": 0.25},
        {"name": "more", "percent": 50, "soak": "5m"},
        {"name": "all", "percent": 100, "soak": 0},
    ]
    ro = service.create_rollout(plan(stages=stages), actor=OPERATOR)
    service.tick_rollouts()
    canaries = assigned(service)
    for d in canaries:
        (a,) = service.get_device(d)["assignments"]
        assert (a["production"], a["candidate"], a["mode"], a["share"]) == (1, 2, "split", 0.25)
    feed = Feed(service, clock)
    for _ in range(2):
        clock.advance(180)
        feed.round(ids)
        service.tick_rollouts()
    assert service.get_rollout(ro["id"])["stage_index"] == 1
    for d in canaries:  # moved to the new stage's mode
        (a,) = service.get_device(d)["assignments"]
        assert (a["production"], a["candidate"], a["previous"], a["mode"]) == (2, None, 1, "full")
    service.rollout_command(ro["id"], "rollback", actor=OPERATOR)
    for d in ids:
        (a,) = service.get_device(d)["assignments"]
        assert (a["production"], a["candidate"]) == (1, None)


def test_a_safety_classified_rollout_lags_another_sites_stable_stage(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    from modelfleet.hub.auth import Principal, Role

    service, ids = fleet
    service.set_model_safety("iris", True, actor=ADMIN)
    approver = Principal(Role.APPROVER, "ada")
    change = {"ticket": "CHG-9"}
    first = service.create_rollout(
        plan(target={"sites": ["plant-a"]}, change=change), actor=OPERATOR
    )
    second = service.create_rollout(
        plan(target={"sites": ["plant-b"]}, change=change, safety_lag="1h"), actor=OPERATOR
    )
    for ro in (first, second):
        service.approve_rollout(ro["id"], approver)
    feed = Feed(service, clock)
    service.tick_rollouts()
    assert service.get_rollout(second["id"])["stage_index"] == -1  # nothing stable yet
    assert service.get_rollout(first["id"])["stage_index"] == 0
    for _ in range(2):
        clock.advance(300)
        feed.round(ids)
        service.tick_rollouts()
    # plant-a reached its stable stage (the last below 100 %) now
    assert service.get_rollout(first["id"])["stage_name"] == "half"
    clock.advance(3599)
    service.tick_rollouts()
    assert service.get_rollout(second["id"])["stage_index"] == -1
    clock.advance(2)
    service.tick_rollouts()
    assert service.get_rollout(second["id"])["stage_index"] == 0


def test_a_device_in_an_unfinished_rollout_cannot_join_another_of_the_same_model(
    fleet: tuple[HubService, list[str]],
) -> None:
    service, _ = fleet
    ro = service.create_rollout(plan(target={"sites": ["plant-a"]}), actor=OPERATOR)
    with pytest.raises(ConflictError, match="unfinished rollout"):
        service.create_rollout(plan(), actor=OPERATOR)
    service.create_rollout(plan(target={"sites": ["plant-b"]}), actor=OPERATOR)  # disjoint
    service.rollout_command(ro["id"], "abort", actor=OPERATOR)
    assert service.get_rollout(ro["id"])["state"] == "aborted"
    with pytest.raises(ConflictError):  # plant-b's is still running
        service.create_rollout(plan(), actor=OPERATOR)


def test_devices_reporting_the_version_count_as_running_and_silent_ones_as_offline(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    service, _ = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()
    canary = sorted(assigned(service))[0]
    report = {"models": {"iris": {"active": {"version": 2}, "previous": {"version": 1}}}}
    service.record_report(canary, report)
    devices = service.get_rollout(ro["id"])["devices"]
    assert devices["running"] == 1 and devices["offline"] == 19
    clock.advance(601)
    assert service.get_rollout(ro["id"])["devices"]["offline"] == 20


def test_a_crash_event_of_a_stage_device_fails_the_crashes_gate(
    fleet: tuple[HubService, list[str]], clock: ManualClock
) -> None:
    import orjson

    from tests.hub._telemetry import batch

    service, _ = fleet
    gates = [{"metric": "crashes", "max": 0}, {"metric": "error_rate", "max": 0.5}]
    ro = service.create_rollout(plan(gates=gates), actor=OPERATOR)
    service.tick_rollouts()
    canary = sorted(assigned(service))[0]
    clock.advance(30)
    crash = {"kind": "event", "seq": 1, "device_id": canary, "at": clock.now().isoformat(),
             "event": "restart", "model": "iris", "version": "2", "rollout_id": ro["id"],
             "message": "watchdog restarted the agent"}  # fmt: skip
    service.ingest_telemetry(canary, orjson.dumps(batch(canary, [crash], clock.now())))
    clock.advance(1)
    service.tick_rollouts()
    view = service.get_rollout(ro["id"])
    assert view["state"] == "rolled_back"
    gate = {g["metric"]: g for g in view["gates"]}["crashes"]
    assert gate["verdict"] == "fail" and gate["value"] == 1


def test_with_a_third_of_the_canaries_offline_the_stage_holds_for_data(
    service: HubService, clock: ManualClock, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    ids = enrol_fleet(service, 30)
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    service.deploy("iris", 1, "all", actor=ADMIN)
    service.register_version("iris", onnx_bytes_v2, actor=ADMIN)
    gates = [{"metric": "error_rate", "max_delta": 0.05, "min_devices": 3, "min_samples": 20}]
    ro = service.create_rollout(plan(gates=gates), actor=OPERATOR)
    service.tick_rollouts()
    canaries = sorted(assigned(service))
    assert len(canaries) == 3
    feed = Feed(service, clock)
    for _ in range(6):  # an hour: six soaks' worth, two of three canaries report
        clock.advance(600)
        feed.round(ids, skip=canaries[:1])
        service.tick_rollouts()
    view = service.get_rollout(ro["id"])
    assert (view["state"], view["stage_index"], view["verdict"]) == ("running", 0, "hold")
    (gate,) = view["gates"]
    assert gate["devices"] == 2 and gate["samples"] > 20
    clock.advance(600)  # the third one is back
    feed.round(ids)
    service.tick_rollouts()
    assert service.get_rollout(ro["id"])["stage_index"] == 1


def test_a_version_first_shipped_by_a_rollout_is_listed_in_the_catalog(
    fleet: tuple[HubService, list[str]],
) -> None:
    """Found by the fleet simulator: devices refuse a version the catalog does not list, and
    only a plain deploy used to publish it."""
    from modelfleet.rollout.desired_state import model_target_path

    service, _ = fleet
    catalog = service.trust.repository("catalog")
    assert catalog.target(model_target_path("iris", 2)) is None  # registered, never deployed
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()
    assert service.get_rollout(ro["id"])["stage_index"] == 0
    listed = service.trust.repository("catalog").target(model_target_path("iris", 2))
    assert listed is not None
    with service.context.read() as s:
        row = s.scalars(select(db.ModelVersion).where(db.ModelVersion.version == 2)).one()
        assert listed.hashes["sha256"] == row.sha256


def test_revoking_the_version_aborts_its_unfinished_rollouts_in_the_same_change(
    fleet: tuple[HubService, list[str]],
) -> None:
    service, _ = fleet
    ro = service.create_rollout(plan(), actor=OPERATOR)
    service.tick_rollouts()  # the canaries get v2
    assert assigned(service)
    out = service.revoke_version("iris", 2, actor=ADMIN, reason="bad calibration", ticket="SEC-9")
    assert out["fallback"]["aborted_rollouts"] == [ro["id"]]
    view = service.get_rollout(ro["id"])
    assert view["state"] == "aborted" and "version revoked: bad calibration" in view["reason"]
    assert assigned(service) == set()  # the canaries went back to v1 with the revocation
    service.tick_rollouts()  # no stage ever starts again
    assert service.get_rollout(ro["id"])["state"] == "aborted" and assigned(service) == set()
    assert "rollout-abort" in actions(service, ro["id"])
    revoke = [e for e in service.audit(limit=1000) if e["action"] == "model.revoke"][-1]
    assert revoke["details"]["aborted_rollouts"] == [ro["id"]] and revoke["ticket"] == "SEC-9"
