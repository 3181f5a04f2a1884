"""API shape: OpenAPI, JSON errors, device reports, TUF routes, metadata refresh."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelfleet.clock import ManualClock
from modelfleet.errors import StorageError
from modelfleet.hashing import sha256_bytes
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.service import HubService
from modelfleet.trust.bundle import parse_trust_root_bundle
from tests.hub._support import auth, register


def test_openapi_document_is_served_under_api_v1(http: TestClient) -> None:
    r = http.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["info"]["title"] == "modelfleet hub"
    for path in (
        "/api/v1/devices",
        "/api/v1/models/{name}/versions",
        "/api/v1/deployments",
        "/api/v1/blobs",
        "/tuf/{repo}/metadata/{filename}",
    ):
        assert path in doc["paths"], path
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/models/nope", "no model 'nope'"),
        ("/api/v1/models/nope/versions/1", "no model 'nope'"),
        ("/api/v1/devices/nope", "no device 'nope'"),
        ("/api/v1/no-such-endpoint", "Not Found"),
    ],
)
def test_unknown_things_are_404_json(
    path: str, message: str, http: TestClient, admin_token: str
) -> None:
    r = http.get(path, headers=auth(admin_token))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]


def test_unknown_version_of_known_model_is_404(
    http: TestClient, admin_token: str, onnx_bytes: bytes
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    r = http.get("/api/v1/models/iris/versions/7", headers=auth(admin_token))
    assert r.status_code == 404 and "no version 7" in r.json()["error"]


def test_malformed_request_is_400_json_not_422(http: TestClient, admin_token: str) -> None:
    r = http.post("/api/v1/devices", json={"site": "x"}, headers=auth(admin_token))
    assert r.status_code == 400
    assert r.json()["error"].startswith("invalid request: body.id")
    r = http.post("/api/v1/devices", content=b"{not json", headers=auth(admin_token))
    assert r.status_code == 400


def test_duplicate_device_is_409(http: TestClient, admin_token: str) -> None:
    h = auth(admin_token)
    first = http.post("/api/v1/devices", json={"id": "d1", "tags": ["line-3"]}, headers=h)
    assert first.status_code == 201 and first.json()["token"].startswith("mfd_")
    again = http.post("/api/v1/devices", json={"id": "d1"}, headers=h)
    assert again.status_code == 409 and "already exists" in again.json()["error"]


def _agent_report(active: int, candidate: int | None = None, **extra: Any) -> dict[str, Any]:
    """A report in the shape the agent sends (its state)."""

    def rec(v: int | None) -> dict[str, Any] | None:
        return {"version": v, "sha256": "ab" * 32, "path": f"/slots/{v}"} if v else None

    return {
        "device_id": "dev-1",
        "applied_serial": 1,
        "last_check": "t0",
        "last_refusal": None,
        "models": {
            "iris": {
                "active": rec(active),
                "previous": None,
                "candidate": rec(candidate),
                "mode": "split" if candidate else "full",
                "share": 0.0,
                "slo": {},
            }
        },
        "events": [],
        **extra,
    }


def test_report_is_stored_and_shown_with_the_device(
    http: TestClient, tokens: dict[str, str], service: HubService, clock: ManualClock
) -> None:
    h = auth(tokens["device"])
    report = _agent_report(1)
    clock.advance(60)
    r = http.post("/api/v1/devices/dev-1/report", json=report, headers=h)
    assert r.status_code == 200, r.text
    device = http.get("/api/v1/devices/dev-1", headers=h).json()
    assert device["report"] == report
    assert device["last_seen"] == clock.now().isoformat()
    listed = http.get("/api/v1/devices", headers=auth(tokens["viewer"])).json()
    assert listed[0]["report"]["models"]["iris"]["active"]["version"] == 1


def test_reports_are_audited_only_when_something_changed(
    http: TestClient, tokens: dict[str, str], service: HubService
) -> None:
    h = auth(tokens["device"])

    def logged() -> list[dict[str, Any]]:
        return [e for e in service.audit(limit=1000) if e["action"] == "device.report"]

    http.post("/api/v1/devices/dev-1/report", json=_agent_report(1), headers=h)
    assert logged()[-1]["details"]["running"]["iris"]["active"] == 1
    http.post("/api/v1/devices/dev-1/report", json=_agent_report(1, last_check="t1"), headers=h)
    assert len(logged()) == 1  # only the poll time moved: stored, not audited
    refusal = {"reason": "smoke test failed", "model": "iris", "version": 2}
    event = {"at": "t2", "kind": "refused", "message": "iris v2 refused"}
    http.post(
        "/api/v1/devices/dev-1/report",
        json=_agent_report(1, last_refusal=refusal, events=[event]),
        headers=h,
    )
    details = logged()[-1]["details"]
    assert details == {"last_refusal": refusal, "new_events": [event]}
    http.post(
        "/api/v1/devices/dev-1/report",
        json=_agent_report(1, 2, last_refusal=refusal, events=[event]),
        headers=h,
    )
    assert logged()[-1]["details"] == {
        "running": {
            "iris": {"active": 1, "candidate": 2, "previous": None, "mode": "split", "share": 0.0}
        },
    }
    assert service.verify_audit() is None


def test_report_must_be_an_object(http: TestClient, tokens: dict[str, str]) -> None:
    r = http.post("/api/v1/devices/dev-1/report", json=[1, 2], headers=auth(tokens["device"]))
    assert r.status_code == 400


def test_tuf_routes_serve_metadata_and_listed_targets_only(
    http: TestClient,
    admin_token: str,
    tokens: dict[str, str],
    service: HubService,
    onnx_bytes: bytes,
) -> None:
    h = auth(tokens["device"])
    for repo in ("catalog", "director"):
        root = http.get(f"/tuf/{repo}/metadata/1.root.json", headers=h)
        assert root.status_code == 200 and root.json()["signed"]["_type"] == "root"
        assert http.get(f"/tuf/{repo}/metadata/timestamp.json", headers=h).status_code == 200
    assert http.get("/tuf/catalog/metadata/99.root.json", headers=h).status_code == 404
    assert http.get("/tuf/catalog/metadata/..%2Fkeys", headers=h).status_code == 404
    assert http.get("/tuf/nope/metadata/timestamp.json", headers=h).status_code == 404

    v = register(http, admin_token, "iris", onnx_bytes)
    url = f"/tuf/catalog/targets/models/iris/1/{v['sha256']}.model.onnx"
    assert http.get(url, headers=h).status_code == 404  # registered but not yet published
    service.deploy("iris", 1, ["dev-1"], actor="admin:admin")
    r = http.get(url, headers=h)
    assert r.status_code == 200 and r.content == onnx_bytes
    wrong = f"/tuf/catalog/targets/models/iris/1/{'0' * 64}.model.onnx"
    assert http.get(wrong, headers=h).status_code == 404

    state = service.get_device("dev-1")["desired_state"]
    r = http.get(
        f"/tuf/director/targets/devices/dev-1/{state['sha256']}.desired-state.json", headers=h
    )
    assert r.status_code == 200 and sha256_bytes(r.content) == state["sha256"]


def test_trust_root_matches_the_file_written_at_init(
    http: TestClient, tokens: dict[str, str], hub_home: tuple[Any, str]
) -> None:
    r = http.get("/api/v1/trust-root", headers=auth(tokens["device"]))
    assert r.status_code == 200
    assert r.content == (hub_home[0] / "trust-root.json").read_bytes()
    assert set(parse_trust_root_bundle(r.content)) == {"catalog", "director"}


def test_refresh_resigns_expiring_metadata_and_logs_it(
    service: HubService, clock: ManualClock
) -> None:
    assert service.refresh_expiring() == []
    clock.advance(30 * 86400)
    done = service.refresh_expiring()
    assert "director/timestamp" in done
    last = service.audit(limit=1000)[-1]
    assert last["action"] == "tuf.refresh" and "director/timestamp" in last["details"]["roles"]


@pytest.mark.parametrize(
    ("fault", "status", "message"),
    [
        pytest.param(RuntimeError("boom: secret internals"), 500, "internal error", id="bug"),
        pytest.param(StorageError("disk full"), 503, "disk full", id="storage-is-503"),
        pytest.param(
            StorageError(
                "database error: (sqlite3.OperationalError) database is locked\n"
                "[SQL: SELECT secret internals FROM tokens]\n[parameters: ('secret internals',)]"
            ),
            503,
            "database is locked",
            id="storage-error-without-its-sql",
        ),
    ],
)
def test_server_faults_are_json_without_traceback(
    fault: Exception,
    status: int,
    message: str,
    service: HubService,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> list[dict[str, Any]]:
        raise fault

    monkeypatch.setattr(service, "list_models", broken)
    with TestClient(
        build_hub_app(service, refresh_interval_s=0), raise_server_exceptions=False
    ) as http:
        r = http.get("/api/v1/models", headers=auth(admin_token))
    assert r.status_code == status
    assert message in r.json()["error"]
    assert "Traceback" not in r.text and "secret internals" not in r.text


def test_device_cannot_read_another_devices_desired_state(
    http: TestClient,
    admin_token: str,
    tokens: dict[str, str],
    service: HubService,
    onnx_bytes: bytes,
) -> None:
    service.add_device("dev-2", "plant", [], actor="admin:admin")
    register(http, admin_token, "iris", onnx_bytes)
    service.deploy("iris", 1, ["dev-1", "dev-2"], actor="admin:admin")
    other = service.get_device("dev-2")["desired_state"]
    url = f"/tuf/director/targets/devices/dev-2/{other['sha256']}.desired-state.json"
    r = http.get(url, headers=auth(tokens["device"]))  # the token of dev-1
    assert r.status_code == 403 and "own desired state" in r.json()["error"]
    assert http.get(url, headers=auth(admin_token)).status_code == 200


def test_report_answer_lists_no_applied_rollbacks_for_a_plain_report(
    http: TestClient, tokens: dict[str, str]
) -> None:
    r = http.post(
        "/api/v1/devices/dev-1/report", json=_agent_report(1), headers=auth(tokens["device"])
    )
    assert r.status_code == 200
    body = r.json()
    assert {k: body[k] for k in ("status", "applied_rollbacks")} == {
        "status": "recorded",
        "applied_rollbacks": [],
    }
    assert set(body["tuf"]) == {"catalog", "director"}  # the check-in fast path (issue 8)


def test_report_answer_carries_the_rollbacks_the_hub_applied(
    http: TestClient,
    tokens: dict[str, str],
    service: HubService,
    onnx_bytes: bytes,
    onnx_bytes_v2: bytes,
) -> None:
    # issue 6 contract 2: the device's own rollback reaches the hub in its report.
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.register_version("iris", onnx_bytes_v2, actor="admin:admin")
    service.deploy("iris", 1, ["dev-1"], actor="admin:admin")
    service.deploy("iris", 2, ["dev-1"], mode="split", share=0.2, actor="admin:admin")
    event = {
        "id": "ab" * 16,
        "at": "2026-01-01T00:00:00+00:00",
        "model": "iris",
        "kind": "candidate",
        "from_version": 2,
        "to_version": 1,
        "reason": "guard: error rate",
        "serial": 2,
    }
    body = {**_agent_report(1, 2), "rollbacks": [event]}
    h = auth(tokens["device"])
    for _ in range(2):  # the replay names it again: applied earlier
        r = http.post("/api/v1/devices/dev-1/report", json=body, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["applied_rollbacks"] == [event["id"]]
    assert service.get_device("dev-1")["assignments"][0]["candidate"] is None
