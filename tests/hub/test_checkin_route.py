"""The check-in's bare ASGI fast path (issue 8, H9) answers exactly as the FastAPI route does,
and the token cache it relies on lets a revoked token through for at most a second."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, update

from modelfleet.clock import ManualClock
from modelfleet.hub import db
from modelfleet.hub.api._checkin import checkin_device_id
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.fleet import TOKEN_CACHE_TTL_S
from modelfleet.hub.service import HubService
from tests.hub._support import auth

_LIMIT = 1024 * 1024  # the default max_report_bytes

REPORT: dict[str, Any] = {"applied_serial": 0, "models": {}, "rollbacks": [], "last_check": "t"}


@pytest.fixture
def router_only(service: HubService) -> Iterator[TestClient]:
    """The same app with the fast path off: every request through FastAPI's router."""
    app = build_hub_app(service, refresh_interval_s=0)
    app.checkin = None
    with TestClient(app) as client:
        yield client


def _chunks(n: int) -> Iterator[bytes]:
    yield b'{"pad": "'
    for _ in range(n // 65536 + 1):
        yield b"x" * 65536
    yield b'"}'


# (name, path, headers(tokens) -> dict, body: dict | bytes | "chunked")
CASES: list[tuple[str, str, Any, Any]] = [
    ("own report", "/api/v1/devices/dev-1/report", lambda t: auth(t["device"]), REPORT),
    ("admin's report", "/api/v1/devices/dev-1/report", lambda t: auth(t["admin"]), REPORT),
    ("no token", "/api/v1/devices/dev-1/report", lambda t: {}, REPORT),
    ("basic auth", "/api/v1/devices/dev-1/report", lambda t: {"Authorization": "Basic YTpi"},
     REPORT),
    ("bearer without token", "/api/v1/devices/dev-1/report",
     lambda t: {"Authorization": "Bearer "}, REPORT),
    ("unknown token", "/api/v1/devices/dev-1/report", lambda t: auth("mft_nope"), REPORT),
    ("viewer", "/api/v1/devices/dev-1/report", lambda t: auth(t["viewer"]), REPORT),
    ("another device's", "/api/v1/devices/dev-2/report", lambda t: auth(t["device"]), REPORT),
    ("unknown device", "/api/v1/devices/ghost/report", lambda t: auth(t["admin"]), REPORT),
    ("not JSON", "/api/v1/devices/dev-1/report", lambda t: auth(t["device"]), b"{nope"),
    ("not an object", "/api/v1/devices/dev-1/report", lambda t: auth(t["device"]), [1, 2]),
    ("empty body", "/api/v1/devices/dev-1/report", lambda t: auth(t["device"]), b""),
    ("bad rollbacks", "/api/v1/devices/dev-1/report", lambda t: auth(t["device"]),
     {**REPORT, "rollbacks": "yes"}),
    ("declared too large", "/api/v1/devices/dev-1/report", lambda t: auth(t["device"]),
     b"{" + b" " * _LIMIT + b"}"),
    ("too large, unauthenticated", "/api/v1/devices/dev-1/report", lambda t: {},
     b"{" + b" " * _LIMIT + b"}"),
    ("chunked too large", "/api/v1/devices/dev-1/report", lambda t: auth(t["device"]), "chunked"),
    ("NUL in the device id", "/api/v1/devices/a%00b/report", lambda t: auth(t["admin"]), REPORT),
    ("NUL in the query", "/api/v1/devices/dev-1/report?x=%00", lambda t: auth(t["device"]),
     REPORT),
    ("unknown query ignored", "/api/v1/devices/dev-1/report?cache=1",
     lambda t: auth(t["device"]), REPORT),
]  # fmt: skip


def _post(http: TestClient, path: str, headers: dict[str, str], body: Any) -> Any:
    if body == "chunked":
        return http.post(path, content=_chunks(_LIMIT), headers=headers)
    if isinstance(body, bytes):
        return http.post(path, content=body, headers=headers)
    return http.post(path, json=body, headers=headers)


@pytest.mark.parametrize(("name", "path", "headers", "body"), CASES, ids=[c[0] for c in CASES])
def test_fast_path_answers_as_the_fastapi_route_does(
    name: str,
    path: str,
    headers: Any,
    body: Any,
    service: HubService,
    tokens: dict[str, str],
    http: TestClient,
    router_only: TestClient,
) -> None:
    service.add_device("dev-2", actor="admin:admin")
    slow = _post(router_only, path, headers(tokens), body)
    fast = _post(http, path, headers(tokens), body)
    assert (fast.status_code, fast.json()) == (slow.status_code, slow.json()), name
    assert fast.status_code < 500, name
    assert fast.headers["content-type"] == "application/json"
    assert fast.headers.get("www-authenticate") == slow.headers.get("www-authenticate")


def test_unchanged_check_ins_write_no_history_and_a_change_is_stored(
    service: HubService, tokens: dict[str, str], http: TestClient
) -> None:
    def history() -> int:
        with service.context.sessions() as s:
            return s.scalar(select(func.count()).select_from(db.DeviceReport)) or 0

    path, headers = "/api/v1/devices/dev-1/report", auth(tokens["device"])
    assert http.post(path, json=REPORT, headers=headers).status_code == 200
    stored = history()
    for i in range(3):  # only a volatile field moves
        r = http.post(path, json={**REPORT, "last_check": str(i)}, headers=headers)
        assert r.json()["status"] == "recorded"
    assert history() == stored
    http.post(path, json={**REPORT, "applied_serial": 1}, headers=headers)
    assert history() == stored + 1
    assert service.get_device("dev-1")["report"]["applied_serial"] == 1


@pytest.mark.parametrize("how", ["revoked", "deleted"])
def test_a_revoked_token_is_refused_within_the_cache_ttl(
    how: str, service: HubService, tokens: dict[str, str], http: TestClient, clock: ManualClock
) -> None:
    path, headers = "/api/v1/devices/dev-1/report", auth(tokens["device"])
    assert http.post(path, json=REPORT, headers=headers).status_code == 200
    assert http.get("/api/v1/whoami", headers=headers).status_code == 200
    with service.context.sessions.begin() as s:  # another replica, or an operator's SQL
        creds = db.DeviceCredential  # a device's token is a device credential (issue 10)
        if how == "revoked":
            s.execute(update(creds).where(creds.device_id == "dev-1").values(state="revoked"))
        else:
            s.execute(delete(creds).where(creds.device_id == "dev-1"))
    clock.advance(TOKEN_CACHE_TTL_S)
    r = http.post(path, json=REPORT, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert http.get("/api/v1/whoami", headers=headers).status_code == 401


def test_the_check_in_stays_in_the_openapi_document(http: TestClient) -> None:
    doc = http.get("/api/v1/openapi.json").json()
    operation = doc["paths"]["/api/v1/devices/{device_id}/report"]["post"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize(
    ("path", "device_id"),
    [
        ("/api/v1/devices/cam-7/report", "cam-7"),
        ("/api/v1/devices/report", None),
        ("/api/v1/devices//report", None),
        ("/api/v1/devices/a/b/report", None),
        ("/api/v1/devices/cam-7/report/", None),
        ("/api/v1/devices/cam-7", None),
        ("/api/v2/devices/cam-7/report", None),
    ],
)
def test_only_check_in_paths_take_the_fast_path(path: str, device_id: str | None) -> None:
    assert checkin_device_id(path) == device_id
