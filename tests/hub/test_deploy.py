"""Deploy and roll back: desired states in the store, signed into the director."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelfleet.hub.service import HubService
from modelfleet.rollout.desired_state import (
    DesiredState,
    Mode,
    model_target_path,
)
from tests.hub._support import auth, register


@pytest.fixture
def fleet(
    http: TestClient,
    admin_token: str,
    service: HubService,
    onnx_bytes: bytes,
    onnx_bytes_v2: bytes,
) -> dict[str, Any]:
    for d in ("cam-1", "cam-2"):
        service.add_device(d, "plant", [], actor="admin:admin")
    v1 = register(http, admin_token, "iris", onnx_bytes)
    v2 = register(http, admin_token, "iris", onnx_bytes_v2)
    return {"v1": v1, "v2": v2}


def _deploy(http: TestClient, token: str, **body: Any) -> Any:
    return http.post("/api/v1/deployments", json=body, headers=auth(token))


def _state(service: HubService, device_id: str) -> DesiredState:
    digest = service.get_device(device_id)["desired_state"]["sha256"]
    listed = service.director.listed_state(device_id)
    assert listed is not None and listed[0] == digest  # signed after the commit
    return DesiredState.from_json(listed[1])


def _nothing_listed(service: HubService) -> bool:
    """No device's own director repository lists a desired state."""
    return all(service.director.listed_state(d["id"]) is None for d in service.list_devices())


def test_full_deploy_signs_desired_state_naming_the_catalog_digests(
    http: TestClient, admin_token: str, service: HubService, fleet: dict[str, Any]
) -> None:
    r = _deploy(
        http,
        admin_token,
        model="iris",
        version=1,
        all=True,
        mode="full",
        slo={"p99_ms": 40},
        ticket="CHG-1",
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert [d["device_id"] for d in body["devices"]] == ["cam-1", "cam-2"]
    assert all(d["serial"] == 1 and d["production"] == 1 for d in body["devices"])

    v1 = fleet["v1"]
    state = _state(service, "cam-1")
    assert state.device_id == "cam-1" and state.serial == 1
    a = state.assignment("iris")
    assert a is not None and a.mode is Mode.FULL and a.candidate is None
    assert a.slo == {"p99_ms": 40.0}
    assert (a.production.sha256, a.production.length) == (v1["sha256"], v1["length"])
    assert a.production.manifest_sha256 == v1["manifest_sha256"]

    listed = service.director.listed_state("cam-1")
    assert listed is not None
    assert listed[0] == body["devices"][0]["desired_state_sha256"]
    catalog = service.trust.repository("catalog")
    model_target = catalog.target(model_target_path("iris", 1))
    assert model_target is not None and model_target.hashes["sha256"] == v1["sha256"]
    assert model_target.unrecognized_fields["custom"]["runtime"] == "onnxruntime"
    assert catalog.target(model_target_path("iris", 2)) is None  # registered, not deployed

    version = http.get("/api/v1/models/iris/versions/1", headers=auth(admin_token)).json()
    assert version["published"] is True
    assert {(d["device_id"], d["role"]) for d in version["deployments"]} == {
        ("cam-1", "production"),
        ("cam-2", "production"),
    }
    entry = service.audit(limit=1000)[-1]
    assert (entry["action"], entry["subject"], entry["ticket"]) == ("deploy", "iris/1", "CHG-1")


def test_split_keeps_production_and_adds_candidate(
    http: TestClient, admin_token: str, service: HubService, fleet: dict[str, Any]
) -> None:
    _deploy(http, admin_token, model="iris", version=1, devices=["cam-1"])
    r = _deploy(
        http, admin_token, model="iris", version=2, devices=["cam-1"], mode="split", share=0.25
    )
    assert r.status_code == 201, r.text
    state = _state(service, "cam-1")
    assert state.serial == 2
    a = state.assignment("iris")
    assert a is not None and a.mode is Mode.SPLIT and a.share == 0.25
    assert a.production.version == 1
    assert a.candidate is not None and a.candidate.sha256 == fleet["v2"]["sha256"]
    assert a.rollout_id == r.json()["rollout_id"]
    assert service.trust.repository("catalog").target(model_target_path("iris", 2)) is not None


@pytest.mark.parametrize("mode", ["split", "shadow"])
def test_split_or_shadow_without_production_is_a_clear_400(
    mode: str, http: TestClient, admin_token: str, service: HubService, fleet: dict[str, Any]
) -> None:
    r = _deploy(http, admin_token, model="iris", version=2, devices=["cam-1"], mode=mode, share=0.1)
    assert r.status_code == 400
    assert "deploy one with mode full first" in r.json()["error"]
    assert service.get_device("cam-1")["desired_state"] is None
    assert _nothing_listed(service)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "iris", "version": 1, "devices": ["ghost"]}, 404, "no device 'ghost'"),
        ({"model": "iris", "version": 9, "all": True}, 404, "no version 9"),
        ({"model": "nope", "version": 1, "all": True}, 404, "no model 'nope'"),
        ({"model": "iris", "version": 1}, 400, "name the devices"),
        ({"model": "iris", "version": 1, "all": True, "mode": "yolo"}, 400, "unknown mode"),
        ({"model": "iris", "version": 1, "all": True, "devices": ["cam-1"]}, 400, "not both"),
        ({"model": "iris", "version": "x", "all": True}, 400, "version"),
    ],
)
def test_bad_deployments_are_refused_without_signing(
    body: dict[str, Any],
    status: int,
    message: str,
    http: TestClient,
    admin_token: str,
    service: HubService,
    fleet: dict[str, Any],
) -> None:
    r = _deploy(http, admin_token, **body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert _nothing_listed(service)


def test_share_out_of_range_is_400(
    http: TestClient, admin_token: str, fleet: dict[str, Any]
) -> None:
    _deploy(http, admin_token, model="iris", version=1, all=True)
    for share in (0.0, 1.5, -0.1):
        r = _deploy(http, admin_token, model="iris", version=2, all=True, mode="split", share=share)
        assert r.status_code == 400 and "share" in r.json()["error"]


def test_rollback_drops_candidate_then_returns_to_previous_production(
    http: TestClient, admin_token: str, service: HubService, fleet: dict[str, Any]
) -> None:
    h = auth(admin_token)
    _deploy(http, admin_token, model="iris", version=1, devices=["cam-1"])
    _deploy(http, admin_token, model="iris", version=2, devices=["cam-1"], mode="shadow", share=0.5)
    r = http.post("/api/v1/rollbacks", json={"model": "iris", "devices": ["cam-1"]}, headers=h)
    assert r.status_code == 201, r.text
    a = _state(service, "cam-1").assignment("iris")
    assert a is not None and a.production.version == 1 and a.candidate is None

    _deploy(http, admin_token, model="iris", version=2, devices=["cam-1"])
    assert _state(service, "cam-1").assignment("iris").production.version == 2  # type: ignore[union-attr]
    r = http.post("/api/v1/rollbacks", json={"model": "iris", "all": True}, headers=h)
    assert r.status_code == 201, r.text
    state = _state(service, "cam-1")
    assert state.serial == 5  # every change is a new, higher serial (no metadata rollback)
    a = state.assignment("iris")
    assert a is not None and a.production.version == 1 and a.mode is Mode.FULL

    r = http.post("/api/v1/rollbacks", json={"model": "iris", "all": True}, headers=h)
    assert r.status_code == 400 and "no earlier version" in r.json()["error"]


def test_revoked_version_leaves_catalog_and_cannot_be_deployed(
    http: TestClient, admin_token: str, service: HubService, fleet: dict[str, Any]
) -> None:
    h = auth(admin_token)
    _deploy(http, admin_token, model="iris", version=1, all=True)
    r = http.post("/api/v1/models/iris/versions/1/revoke", json={"ticket": "SEC-9"}, headers=h)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert service.trust.repository("catalog").target(model_target_path("iris", 1)) is None
    r = _deploy(http, admin_token, model="iris", version=1, all=True)
    assert r.status_code == 400 and "revoked" in r.json()["error"]


def test_two_models_on_one_device_share_one_desired_state(
    http: TestClient,
    admin_token: str,
    service: HubService,
    fleet: dict[str, Any],
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "other", onnx_bytes)
    _deploy(http, admin_token, model="iris", version=1, devices=["cam-1"])
    _deploy(http, admin_token, model="other", version=1, devices=["cam-1"])
    state = _state(service, "cam-1")
    assert [a.model for a in state.assignments] == ["iris", "other"]


def test_unknown_slo_key_is_refused_before_anything_is_signed(
    http: TestClient, admin_token: str, service: HubService, fleet: dict[str, Any]
) -> None:
    before = service.director.device_roles("cam-1")
    r = _deploy(http, admin_token, model="iris", version=1, all=True, mode="full", slo={"p99": 40})
    assert r.status_code == 400
    assert "unknown SLO key" in r.json()["error"]
    assert service.director.device_roles("cam-1") == before
