"""The rollouts API (``/api/v1/rollouts``) and change control: who may do what, the safety
flag, second-person approval, 409 for a command the state does not allow, 4xx for bad input."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelfleet.clock import ManualClock
from modelfleet.hub.service import HubService
from tests.hub._rollouts import ADMIN, audit_of, enrol_fleet, plan
from tests.hub._support import auth

API = "/api/v1"


@pytest.fixture
def ready(
    service: HubService, tokens: dict[str, str], onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> dict[str, str]:
    enrol_fleet(service, 10)
    service.register_version("iris", onnx_bytes, actor=ADMIN)
    service.deploy("iris", 1, "all", actor=ADMIN)
    service.register_version("iris", onnx_bytes_v2, actor=ADMIN)
    return {
        **tokens,
        "approver": service.create_token("approver", "ada", actor=ADMIN),
        "approver-olga": service.create_token("approver", "olga", actor=ADMIN),
    }


def line1(**over: Any) -> dict[str, Any]:
    """The test plan over the ten ``line1`` devices (``tokens`` enrols one more, untagged)."""
    return plan(target={"tags": ["line1"]}, **over)


def _create(http: TestClient, token: str, doc: dict[str, Any]) -> Any:
    return http.post(f"{API}/rollouts", json=doc, headers=auth(token))


def test_operator_creates_viewer_reads_and_nobody_else_writes(
    http: TestClient, ready: dict[str, str]
) -> None:
    for role in ("viewer", "publisher", "device", "approver"):
        r = _create(http, ready[role], line1())
        assert r.status_code == 403, (role, r.text)
    r = _create(http, ready["operator"], line1())
    assert r.status_code == 201, r.text
    ro = r.json()
    assert ro["id"].startswith("ro-") and ro["state"] == "running"
    assert ro["devices"]["total"] == 10 and ro["stage"] is None
    assert ro["history"][0]["action"] == "rollout-create"
    listed = http.get(f"{API}/rollouts", headers=auth(ready["viewer"]))
    assert listed.status_code == 200
    (summary,) = listed.json()
    assert summary["id"] == ro["id"] and summary["devices_total"] == 10
    assert set(summary) >= {"stage_name", "stage_index", "stages", "created_at", "updated_at"}
    one = http.get(f"{API}/rollouts/{ro['id']}", headers=auth(ready["viewer"]))
    assert one.status_code == 200 and one.json()["plan"]["model"] == "iris"
    for query, n in (("state=running", 1), ("state=paused", 0), ("model=other", 0)):
        r = http.get(f"{API}/rollouts?{query}", headers=auth(ready["viewer"]))
        assert r.status_code == 200 and len(r.json()) == n, query
    assert http.get(f"{API}/rollouts?state=bogus", headers=auth(ready["viewer"])).status_code == 400
    r = http.post(f"{API}/rollouts/{ro['id']}/pause", headers=auth(ready["viewer"]))
    assert r.status_code == 403


def test_commands_the_state_does_not_allow_are_409_and_unknown_ids_404(
    http: TestClient, ready: dict[str, str]
) -> None:
    token = ready["operator"]
    ro = _create(http, token, line1()).json()
    url = f"{API}/rollouts/{ro['id']}"
    assert http.post(f"{url}/resume", headers=auth(token)).status_code == 409  # not paused
    paused = http.post(f"{url}/pause", json={"reason": "lunch"}, headers=auth(token))
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert http.post(f"{url}/pause", headers=auth(token)).status_code == 409
    resumed = http.post(f"{url}/resume", json={"reason": None, "ticket": None}, headers=auth(token))
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    aborted = http.post(f"{url}/abort", headers=auth(token))
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    for command in ("pause", "resume", "promote", "rollback", "abort"):
        assert http.post(f"{url}/{command}", headers=auth(token)).status_code == 409, command
    assert http.post(f"{url}/approve", headers=auth(ready["approver"])).status_code == 409
    assert http.get(f"{API}/rollouts/ro-nope", headers=auth(token)).status_code == 404
    assert http.post(f"{API}/rollouts/ro-nope/pause", headers=auth(token)).status_code == 404
    assert http.post(f"{url}/explode", headers=auth(token)).status_code in (400, 404, 405)
    history = [h["action"] for h in http.get(url, headers=auth(token)).json()["history"]]
    assert history == ["rollout-create", "rollout-pause", "rollout-resume", "rollout-abort"]


def test_a_safety_classified_model_needs_a_ticket_and_a_second_persons_approval(
    http: TestClient, ready: dict[str, str], service: HubService
) -> None:
    r = http.patch(
        f"{API}/models/iris", json={"safety_classified": True}, headers=auth(ready["operator"])
    )
    assert r.status_code == 403  # operators do not classify models
    r = http.patch(
        f"{API}/models/iris", json={"safety_classified": True}, headers=auth(ready["publisher"])
    )
    assert r.status_code == 200 and r.json()["safety_classified"] is True
    assert (
        http.patch(
            f"{API}/models/nope", json={"safety_classified": True}, headers=auth(ready["admin"])
        ).status_code
        == 404
    )

    no_ticket = _create(http, ready["operator"], line1())
    assert no_ticket.status_code == 400 and "ticket" in no_ticket.json()["error"]
    r = _create(http, ready["operator"], line1(change={"ticket": "CHG-7"}))
    assert r.status_code == 201, r.text
    ro = r.json()
    assert ro["state"] == "awaiting_approval" and ro["ticket"] == "CHG-7"
    url = f"{API}/rollouts/{ro['id']}"

    service.tick_rollouts()  # the controller does not start it
    assert http.get(url, headers=auth(ready["viewer"])).json()["stage_index"] == -1
    refusals = {
        "operator": ready["operator"],  # the operator role cannot approve
        "viewer": ready["viewer"],
        "same person": ready["approver-olga"],  # olga created it
    }
    for who, token in refusals.items():
        assert http.post(f"{url}/approve", headers=auth(token)).status_code == 403, who
    ok = http.post(f"{url}/approve", json={"reason": "reviewed"}, headers=auth(ready["approver"]))
    assert ok.status_code == 200, ok.text
    assert ok.json()["state"] == "running" and ok.json()["approved_by"] == "approver:ada"
    assert http.post(f"{url}/approve", headers=auth(ready["approver"])).status_code == 409
    service.tick_rollouts()
    assert http.get(url, headers=auth(ready["viewer"])).json()["stage_index"] == 0
    entries = audit_of(service, ro["id"])
    assert [e.action for e in entries] == ["rollout-create", "rollout-approve", "rollout-stage"]
    assert entries[1].actor == "approver:ada" and entries[1].ticket == "CHG-7"
    assert entries[2].actor == "controller"
    assert [e.actor for e in audit_of(service, "iris") if e.action == "model.safety"] == [
        "publisher:pat"
    ]


def test_bad_plans_are_400_not_5xx(http: TestClient, ready: dict[str, str]) -> None:
    token = auth(ready["operator"])
    bodies: list[Any] = [
        {},
        [],
        "plan",
        plan(version=2**40),
        plan(version="two"),
        plan(stages=[{"name": "x", "percent": 150}]),
        plan(target={"devices": ["a\x00b"]}),
        plan(gates=[{"metric": "drift_score", "max": 1}]),
    ]
    for body in bodies:
        r = http.post(f"{API}/rollouts", json=body, headers=token)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert r.json()["type"] == "InvalidInputError"
    r = http.post(f"{API}/rollouts", json=plan(model="nope"), headers=token)
    assert r.status_code == 404


def test_evaluations_keep_the_evidence_newest_first(
    http: TestClient, ready: dict[str, str], service: HubService, clock: ManualClock
) -> None:
    from tests.hub._rollouts import Feed

    ro = _create(http, ready["operator"], line1()).json()
    service.tick_rollouts()
    feed = Feed(service, clock)
    ids = [d["id"] for d in service.list_devices()]
    for _ in range(3):
        clock.advance(120)
        feed.round(ids)
        service.tick_rollouts()
    r = http.get(f"{API}/rollouts/{ro['id']}/evaluations?limit=2", headers=auth(ready["viewer"]))
    assert r.status_code == 200
    rows = r.json()
    assert len(rows) == 2 and rows[0]["id"] > rows[1]["id"]
    evidence = rows[0]["evidence"]
    assert evidence["evaluation"]["verdict"] == rows[0]["verdict"] == "pass"
    assert evidence["stats"]["stage"]["requests"] > 0
    assert evidence["stats"]["control"]["requests"] > 0
    view = http.get(f"{API}/rollouts/{ro['id']}", headers=auth(ready["viewer"])).json()
    assert view["stage"]["name"] == "canary" and view["stage"]["soak_left_s"] == 600 - 360
    assert {g["metric"] for g in view["gates"]} == {"error_rate", "guard_rollbacks"}
    assert view["devices"]["assigned"] == 1 and view["devices"]["offline"] == 10
