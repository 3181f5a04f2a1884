"""Who may call what: 401 without a valid token, 403 for a role that lacks the right."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelfleet.hub.service import HubService
from tests.hub._support import auth

ROLES = ("admin", "publisher", "operator", "viewer", "device")

# (name, method, path, body, roles allowed); dev-1 is the device of the "device" token.
CASES: list[tuple[str, str, str, Any, set[str]]] = [
    ("list devices", "GET", "/api/v1/devices", None, {"admin", "publisher", "operator", "viewer"}),
    ("own device", "GET", "/api/v1/devices/dev-1", None, set(ROLES)),
    ("other device", "GET", "/api/v1/devices/dev-2", None,
     {"admin", "publisher", "operator", "viewer"}),
    ("add device", "POST", "/api/v1/devices", {"id": "new-dev"}, {"admin", "operator"}),
    ("own report", "POST", "/api/v1/devices/dev-1/report", {"active": {}}, {"admin", "device"}),
    ("other's report", "POST", "/api/v1/devices/dev-2/report", {"active": {}}, {"admin"}),
    ("upload blob", "POST", "/api/v1/blobs", b"bytes", {"admin", "publisher"}),
    ("list models", "GET", "/api/v1/models", None, {"admin", "publisher", "operator", "viewer"}),
    ("deploy", "POST", "/api/v1/deployments",
     {"model": "nope", "version": 1, "all": True}, {"admin", "operator"}),
    ("rollback", "POST", "/api/v1/rollbacks", {"model": "nope", "all": True},
     {"admin", "operator"}),
    ("audit", "GET", "/api/v1/audit", None, {"admin", "publisher", "operator", "viewer"}),
    ("audit verify", "GET", "/api/v1/audit/verify", None,
     {"admin", "publisher", "operator", "viewer"}),
    ("audit head", "GET", "/api/v1/audit/head", None,
     {"admin", "publisher", "operator", "viewer"}),
    ("create token", "POST", "/api/v1/tokens", {"role": "viewer", "subject": "x"}, {"admin"}),
    ("trust root", "GET", "/api/v1/trust-root", None, set(ROLES)),
    ("tuf metadata", "GET", "/tuf/catalog/metadata/1.root.json", None, set(ROLES)),
]  # fmt: skip


def _call(http: TestClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    if isinstance(body, bytes):
        return http.request(method, path, content=body, headers=headers)
    return http.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("name", "method", "path", "body", "allowed"), CASES)
def test_role_table_is_enforced(
    name: str,
    method: str,
    path: str,
    body: Any,
    allowed: set[str],
    http: TestClient,
    tokens: dict[str, str],
    service: HubService,
) -> None:
    service.add_device("dev-2", actor="admin:admin")
    for role in ROLES:
        r = _call(http, method, path, body, auth(tokens[role]))
        if role in allowed:
            assert r.status_code not in (401, 403), (name, role, r.text)
        else:
            assert r.status_code == 403, (name, role, r.status_code, r.text)
            assert "may not" in r.json()["error"]


@pytest.mark.parametrize(("name", "method", "path", "body", "allowed"), CASES)
def test_missing_or_bad_token_is_401(
    name: str, method: str, path: str, body: Any, allowed: set[str], http: TestClient
) -> None:
    for headers in ({}, auth("mft_not-a-real-token"), {"Authorization": "Basic YTpi"}):
        r = _call(http, method, path, body, headers)
        assert r.status_code == 401, (name, headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "token" in r.json()["error"]


def test_health_needs_no_token(http: TestClient) -> None:
    r = http.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_tokens_are_stored_hashed(service: HubService, tokens: dict[str, str]) -> None:
    from sqlalchemy import select

    from modelfleet.hub import db

    with service.context.sessions() as s:
        stored = set(s.scalars(select(db.Token.token_sha256)))
    assert not set(tokens.values()) & stored
    assert all(len(h) == 64 for h in stored)


def test_device_token_for_unknown_device_is_refused(http: TestClient, admin_token: str) -> None:
    r = http.post(
        "/api/v1/tokens", json={"role": "device", "subject": "ghost"}, headers=auth(admin_token)
    )
    assert r.status_code == 404
    r = http.post(
        "/api/v1/tokens", json={"role": "root", "subject": "x"}, headers=auth(admin_token)
    )
    assert r.status_code == 400 and "unknown role" in r.json()["error"]


def test_created_token_works_with_its_role(http: TestClient, admin_token: str) -> None:
    r = http.post(
        "/api/v1/tokens", json={"role": "viewer", "subject": "ann"}, headers=auth(admin_token)
    )
    token = r.json()["token"]
    assert http.get("/api/v1/models", headers=auth(token)).status_code == 200
    assert http.post("/api/v1/devices", json={"id": "d"}, headers=auth(token)).status_code == 403
