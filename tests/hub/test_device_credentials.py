"""Device credentials (issue 10, ADR 0026): one-time bootstrap enrolment, rotation with a
grace window, revocation, expiry with renewal, decommissioning; and the bad-input rows
"a revoked or expired device credential" and "a device token used for another device's
metadata": refused with the reason logged, nothing stored."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from modelfleet.clock import ManualClock
from modelfleet.hub import db
from modelfleet.hub.credentials import CredentialSettings
from modelfleet.hub.service import HubService
from tests.hub._support import auth, register

DAY = 86_400.0
SETTINGS = CredentialSettings()
REPORT: dict[str, Any] = {"applied_serial": 0, "models": {}, "rollbacks": [], "last_check": "t"}


def _report(http: TestClient, token: str, device: str = "dev-1", **extra: Any) -> Any:
    return http.post(
        f"/api/v1/devices/{device}/report", json={**REPORT, **extra}, headers=auth(token)
    )


def _history(service: HubService, device: str) -> int:
    with service.context.read() as s:
        query = select(func.count()).select_from(db.DeviceReport)
        return int(s.scalar(query.where(db.DeviceReport.device_id == device)) or 0)


def _actions(service: HubService) -> list[str]:
    with service.context.read() as s:
        return list(s.scalars(select(db.AuditEntry.action).order_by(db.AuditEntry.seq)))


def _bootstrap(http: TestClient, operator: str, device: str, **body: Any) -> dict[str, Any]:
    r = http.post(f"/api/v1/devices/{device}/bootstrap-tokens", json=body, headers=auth(operator))
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def _enrol(http: TestClient, bootstrap: str, device: str | None = None) -> Any:
    return http.post("/api/v1/enrol", json={"device_id": device}, headers=auth(bootstrap))


# -- enrolment ---------------------------------------------------------------------------------


def test_a_bootstrap_token_enrols_a_new_device_once(
    service: HubService, http: TestClient, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    boot = _bootstrap(http, tokens["operator"], "cam-9", site="plant-b", tags=["line-2"])
    assert boot["token"].startswith("mfb_")
    first = _enrol(http, boot["token"], "cam-9")
    assert first.status_code == 201, first.text
    cred = first.json()
    assert cred["device_id"] == "cam-9" and cred["token"].startswith("mfd_")
    device = service.get_device("cam-9")
    assert (device["site"], device["tags"]) == ("plant-b", ["line-2"])
    assert _report(http, cred["token"], "cam-9").status_code == 200
    with caplog.at_level(logging.WARNING, "modelfleet.hub"):
        again = _enrol(http, boot["token"], "cam-9")
    assert again.status_code == 401 and "already used" in again.json()["error"]
    assert "already used" in caplog.text
    assert {"device.bootstrap_token.create", "device.enrol"} <= set(_actions(service))
    with service.context.read() as s:  # only digests are stored
        stored = s.scalars(select(db.DeviceCredential.secret_sha256)).all()
        assert cred["token"] not in stored and all(len(h) == 64 for h in stored)


@pytest.mark.parametrize(
    ("name", "setup", "status", "reason"),
    [
        ("expired", lambda clock: clock.advance(2 * 3600), 401, "expired"),
        ("for another device", lambda clock: None, 403, "for device 'cam-9'"),
        ("not a bootstrap token", None, 401, "needs a bootstrap token"),
    ],
)
def test_a_bad_bootstrap_token_is_refused_and_enrols_nothing(
    name: str,
    setup: Any,
    status: int,
    reason: str,
    service: HubService,
    http: TestClient,
    tokens: dict[str, str],
    clock: ManualClock,
) -> None:
    boot = _bootstrap(http, tokens["operator"], "cam-9", ttl_s=3600)
    token = boot["token"] if setup is not None else tokens["device"]
    if setup is not None:
        setup(clock)
    r = _enrol(http, token, "cam-7" if name == "for another device" else "cam-9")
    assert r.status_code == status and reason in r.json()["error"], (name, r.text)
    assert [d["id"] for d in service.list_devices()] == ["dev-1"]


def test_only_an_operator_creates_bootstrap_tokens(
    http: TestClient, tokens: dict[str, str]
) -> None:
    for role in ("viewer", "device", "publisher"):
        r = http.post("/api/v1/devices/x/bootstrap-tokens", json={}, headers=auth(tokens[role]))
        assert r.status_code == 403, role


# -- rotation ----------------------------------------------------------------------------------


def _rotate(http: TestClient, token: str, device: str = "dev-1") -> Any:
    return http.post(f"/api/v1/devices/{device}/credentials/rotate", headers=auth(token))


def test_rotation_accepts_old_and_new_until_the_grace_window_ends(
    service: HubService, http: TestClient, tokens: dict[str, str], clock: ManualClock
) -> None:
    old = tokens["device"]
    r = _rotate(http, old)
    assert r.status_code == 200, r.text
    new = r.json()["token"]
    assert new != old
    assert _report(http, old).status_code == 200  # within the grace window: both work
    assert _report(http, new).status_code == 200
    states = {c["state"] for c in service.device_credentials("dev-1")}
    assert states == {"active", "rotating"}
    clock.advance(SETTINGS.rotation_grace_s)
    refused = _report(http, old)
    assert refused.status_code == 401 and "grace window" in refused.json()["error"]
    assert _report(http, new).status_code == 200
    assert "device.credential.rotate" in _actions(service)


def test_renewing_again_with_the_old_credential_after_a_lost_answer_does_not_brick(
    service: HubService, http: TestClient, tokens: dict[str, str]
) -> None:
    old = tokens["device"]
    lost = _rotate(http, old).json()["token"]  # the device never wrote this one down
    again = _rotate(http, old)
    assert again.status_code == 200, again.text
    assert _report(http, again.json()["token"]).status_code == 200
    assert _report(http, lost).status_code == 401  # superseded: it was never used


# -- the bad-input rows: revoked, expired, another device's ------------------------------------


def test_a_revoked_credential_is_refused_logged_and_stores_nothing(
    service: HubService, http: TestClient, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    token = tokens["device"]
    assert _report(http, token).status_code == 200
    stored = _history(service, "dev-1")
    (cred,) = service.device_credentials("dev-1")
    r = http.post(
        f"/api/v1/credentials/{cred['id']}/revoke",
        json={"reason": "stolen"},
        headers=auth(tokens["operator"]),
    )
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    with caplog.at_level(logging.WARNING, "modelfleet.hub"):
        refused = _report(http, token, applied_serial=9)  # at once: no cache window here
        tuf = http.get("/tuf/director/devices/dev-1/metadata/timestamp.json", headers=auth(token))
        renew = _rotate(http, token)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    assert tuf.status_code == 401 and renew.status_code == 401
    assert "revoked" in caplog.text and cred["id"] in caplog.text
    assert _history(service, "dev-1") == stored
    assert service.get_device("dev-1")["report"]["applied_serial"] == 0
    assert "device.credential.revoke" in _actions(service)


def test_an_expired_credential_is_refused_but_renews_itself(
    service: HubService,
    http: TestClient,
    tokens: dict[str, str],
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = tokens["device"]
    clock.advance(SETTINGS.lifetime_s + 40 * DAY)  # offline for 40 days past its expiry
    with caplog.at_level(logging.WARNING, "modelfleet.hub"):
        refused = _report(http, token, applied_serial=5)
        who = http.get("/api/v1/whoami", headers=auth(token))
    assert refused.status_code == 401 and "expired" in refused.json()["error"]
    assert who.status_code == 401 and "expired" in caplog.text
    assert service.get_device("dev-1")["report"] is None  # nothing stored
    renewed = _rotate(http, token)  # back online: renewal still works
    assert renewed.status_code == 200, renewed.text
    assert _report(http, renewed.json()["token"]).status_code == 200


def test_an_expired_credential_past_the_renewal_window_must_enrol_again(
    http: TestClient, tokens: dict[str, str], clock: ManualClock
) -> None:
    clock.advance(SETTINGS.lifetime_s + SETTINGS.renew_after_expiry_s + 1)
    r = _rotate(http, tokens["device"])
    assert r.status_code == 401 and "enrol the device again" in r.json()["error"]


@pytest.mark.parametrize(
    ("what", "method", "path"),
    [
        ("director metadata", "GET", "/tuf/director/devices/dev-2/metadata/timestamp.json"),
        ("desired state", "GET", "/tuf/director/targets/devices/dev-2/desired.json"),
        ("check-in", "POST", "/api/v1/devices/dev-2/report"),
        ("renewal", "POST", "/api/v1/devices/dev-2/credentials/rotate"),
        ("credentials", "GET", "/api/v1/devices/dev-2/credentials"),
    ],
)
def test_a_device_credential_used_for_another_device_is_refused_and_logged(
    what: str,
    method: str,
    path: str,
    service: HubService,
    http: TestClient,
    tokens: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    service.add_device("dev-2", actor="admin:admin")
    body = orjson.dumps({**REPORT, "applied_serial": 3}) if method == "POST" else None
    with caplog.at_level(logging.WARNING, "modelfleet.hub"):
        r = http.request(method, path, content=body, headers=auth(tokens["device"]))
    assert r.status_code == 403, (what, r.text)
    if what != "credentials":
        assert "dev-1" in caplog.text and "dev-2" in caplog.text, what
    assert service.get_device("dev-2")["report"] is None


# -- revocation and decommissioning of a device -----------------------------------------------


def test_decommissioning_revokes_and_takes_the_device_out_of_the_director(
    service: HubService,
    http: TestClient,
    tokens: dict[str, str],
    admin_token: str,
    onnx_bytes: bytes,
) -> None:
    register(http, admin_token, "m", onnx_bytes)
    service.add_device("dev-2", actor="admin:admin")
    service.deploy("m", 1, "all", actor="admin:admin")
    assert service.get_device("dev-1")["assignments"]
    r = http.post(
        "/api/v1/devices/dev-1/decommission", json={"reason": "scrapped"},
        headers=auth(tokens["operator"]),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert _report(http, tokens["device"]).status_code == 401
    device = service.get_device("dev-1")
    assert device["assignments"] == []
    ts = orjson.loads(service.tuf_device_metadata("dev-1", "timestamp.json"))
    snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
    snap = orjson.loads(service.tuf_device_metadata("dev-1", f"{snap_v}.snapshot.json"))
    targets_v = snap["signed"]["meta"]["targets.json"]["version"]
    targets = orjson.loads(service.tuf_device_metadata("dev-1", f"{targets_v}.targets.json"))
    assert targets["signed"]["targets"] == {}  # signed: no desired state
    service.deploy("m", 1, "all", actor="admin:admin")  # "all" skips it now
    assert service.get_device("dev-1")["assignments"] == []
    assert service.get_device("dev-2")["assignments"]
    again = http.post(
        "/api/v1/devices/dev-1/decommission", json={}, headers=auth(tokens["operator"])
    )
    assert again.status_code == 409
    boot = http.post(
        "/api/v1/devices/dev-1/bootstrap-tokens", json={}, headers=auth(tokens["operator"])
    )
    assert boot.status_code == 409
    assert "device.decommission" in _actions(service)


def test_revoking_a_device_refuses_all_its_credentials(
    service: HubService, http: TestClient, tokens: dict[str, str]
) -> None:
    second = service.create_token("device", "dev-1", actor="admin:admin")  # a second credential
    r = http.post("/api/v1/devices/dev-1/revoke", json={}, headers=auth(tokens["operator"]))
    assert r.status_code == 200 and len(r.json()["revoked"]) == 2
    assert _report(http, tokens["device"]).status_code == 401
    assert _report(http, second).status_code == 401
    assert {c["state"] for c in service.device_credentials("dev-1")} == {"revoked"}


def test_whoami_of_a_device_credential_says_when_it_expires(
    http: TestClient, tokens: dict[str, str]
) -> None:
    body = http.get("/api/v1/whoami", headers=auth(tokens["device"])).json()
    assert body["credential"]["state"] == "active" and body["credential"]["not_after"]


# -- the check-in's one query (issue 8) --------------------------------------------------------


def test_a_not_modified_check_in_with_a_device_credential_is_one_query(
    service: HubService, http: TestClient, tokens: dict[str, str]
) -> None:
    assert _report(http, tokens["device"]).status_code == 200  # stored: the next is not-modified
    # What SQLite itself runs (the check-in reads through the DBAPI cursor, past
    # SQLAlchemy's events): every connection made from here on traces its statements.
    statements: list[str] = []

    def trace(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.set_trace_callback(statements.append)

    service.engine.dispose()
    event.listen(service.engine, "connect", trace)
    try:
        assert _report(http, tokens["device"], last_check="u").status_code == 200
    finally:
        event.remove(service.engine, "connect", trace)
    assert statements, "no statement traced"
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements
    assert "device_credentials" in selects[0] and "devices" in selects[0]


def test_a_device_token_from_before_credentials_gets_a_credential_by_renewing(
    service: HubService, http: TestClient, tokens: dict[str, str], clock: ManualClock
) -> None:
    from modelfleet.hub.auth import hash_token, new_token

    legacy = new_token()  # a `tokens` row as a hub before migration 0011 minted it
    with service.context.write() as s:
        row = db.Token(token_sha256=hash_token(legacy), role="device", subject="dev-1",
                       created_at=clock.now(), created_by="admin", revoked=False)  # fmt: skip
        s.add(row)
    assert _report(http, legacy).status_code == 200  # still works
    assert _rotate(http, legacy, "dev-2").status_code == 403  # not its device
    fresh = _rotate(http, legacy)
    assert fresh.status_code == 200 and fresh.json()["token"].startswith("mfd_")
    assert _report(http, fresh.json()["token"]).status_code == 200
    http.post("/api/v1/devices/dev-1/revoke", json={}, headers=auth(tokens["operator"]))
    assert _report(http, legacy).status_code == 401
