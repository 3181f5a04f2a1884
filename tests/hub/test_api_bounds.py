"""Integer parameters are bounded (issue 6, defect 4): out of range is a 400, never a 500
(SQLite raises OverflowError beyond 64 bits; PostgreSQL's INTEGER columns are 32-bit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelfleet.clock import ManualClock
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home
from tests.hub._support import auth
from tests.pg import pg_database

HUGE = 2**64  # one past what SQLite can bind
NEAR = 2**31  # one past PostgreSQL's INTEGER


@pytest.fixture
def hub(http: TestClient, service: HubService, onnx_bytes: bytes) -> TestClient:
    service.add_device("dev-1", "", [], actor="admin:admin")
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    return http


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", f"/api/v1/audit?after_seq={HUGE}", None),
        ("GET", f"/api/v1/audit?after_seq={NEAR}", None),
        ("GET", "/api/v1/audit?after_seq=-1", None),
        ("GET", f"/api/v1/audit?limit={HUGE}", None),
        ("GET", "/api/v1/audit?limit=0", None),
        ("GET", f"/api/v1/models/iris/versions/{HUGE}", None),
        ("GET", f"/api/v1/models/iris/versions/{NEAR}", None),
        ("GET", "/api/v1/models/iris/versions/0", None),
        ("GET", f"/api/v1/models/iris/versions/{-HUGE}", None),
        ("GET", f"/api/v1/models/iris/versions/{HUGE}/manifest", None),
        ("POST", f"/api/v1/models/iris/versions/{HUGE}/revoke", {}),
        ("POST", "/api/v1/deployments", {"model": "iris", "version": HUGE, "all": True}),
        ("POST", "/api/v1/deployments", {"model": "iris", "version": NEAR, "all": True}),
        ("POST", "/api/v1/deployments", {"model": "iris", "version": 1, "all": True, "share": 2}),
    ],
)
def test_out_of_range_integers_are_400_not_500(
    method: str, url: str, body: Any, hub: TestClient, admin_token: str
) -> None:
    r = hub.request(method, url, json=body, headers=auth(admin_token))
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("invalid request:")


def test_largest_in_range_numbers_are_plain_not_found_or_empty(
    hub: TestClient, admin_token: str
) -> None:
    h = auth(admin_token)
    top = 2**31 - 1
    assert hub.get(f"/api/v1/models/iris/versions/{top}", headers=h).status_code == 404
    r = hub.get(f"/api/v1/audit?after_seq={top}&limit=100000", headers=h)
    assert r.status_code == 200 and r.json()["entries"] == []


def test_unknown_query_parameter_is_400_not_ignored(hub: TestClient, admin_token: str) -> None:
    r = hub.get("/api/v1/audit?after_sequence=5", headers=auth(admin_token))
    assert r.status_code == 400
    assert "after_sequence" in r.json()["error"] and "after_seq" in r.json()["error"]
    # a route that takes no query parameters ignores a query string (a probe's cache-buster)
    assert hub.get("/api/v1/models?x=1", headers=auth(admin_token)).status_code == 200
    assert hub.get("/api/v1/health?t=123").status_code == 200


def test_a_query_parameter_given_twice_is_400_not_the_last_one(
    hub: TestClient, admin_token: str
) -> None:
    r = hub.get("/api/v1/telemetry/summary?version=1&version=2&model=m", headers=auth(admin_token))
    assert r.status_code == 400
    assert "'version' given more than once" in r.json()["error"]
    r = hub.get("/api/v1/telemetry/summary?version=1&model=m", headers=auth(admin_token))
    assert r.status_code == 200 and r.json()["query"]["version"] == "1"


def test_summary_times_are_rfc3339_not_numbers(hub: TestClient, admin_token: str) -> None:
    url = "/api/v1/telemetry/summary"
    for bad in ("1.1125369292536007e-308", "1700000000", "2026-13-01T00:00:00Z", "yesterday"):
        r = hub.get(url, params={"since": bad}, headers=auth(admin_token))
        assert r.status_code == 400, (bad, r.text)
    r = hub.get(
        url,
        params={"since": "2025-12-31T00:00:00Z", "until": "2026-01-01T00:00:00+00:00"},
        headers=auth(admin_token),
    )
    assert r.status_code == 200, r.text
    assert r.json()["query"]["since"] == "2025-12-31T00:00:00+00:00"
    r = hub.get(url, params={"role": "canary"}, headers=auth(admin_token))
    assert r.status_code == 400 and "role" in r.text
    assert hub.get(url, params={"role": "shadow"}, headers=auth(admin_token)).status_code == 200


@pytest.fixture
def pg_hub(tmp_path: Path, onnx_bytes: bytes) -> Iterator[tuple[TestClient, str]]:
    """The API over a fresh PostgreSQL database (32-bit INTEGER columns)."""
    with pg_database() as url:
        clock = ManualClock()
        token = init_home(tmp_path / "hub", clock, database_url=url)
        service = HubService(load_hub_config(tmp_path / "hub"), clock)
        try:
            service.register_version("iris", onnx_bytes, actor="admin:admin")
            with TestClient(build_hub_app(service, refresh_interval_s=0)) as http:
                yield http, token
        finally:
            service.close()


@pytest.mark.postgres
def test_on_postgres_the_bounds_keep_numbers_within_its_integer_columns(
    pg_hub: tuple[TestClient, str],
) -> None:
    http, token = pg_hub
    h = auth(token)
    top = 2**31 - 1
    assert http.get(f"/api/v1/models/iris/versions/{top}", headers=h).status_code == 404
    assert http.get(f"/api/v1/audit?after_seq={top}", headers=h).json()["entries"] == []
    r = http.post(
        "/api/v1/deployments", json={"model": "iris", "version": top, "all": True}, headers=h
    )
    assert r.status_code == 404  # no such version, not a database error
    for url in (f"/api/v1/models/iris/versions/{NEAR}", f"/api/v1/audit?after_seq={NEAR}"):
        assert http.get(url, headers=h).status_code == 400, url


_NUL_CASES = [
    ("POST", "/api/v1/devices", {"id": "d1", "site": "a\x00b"}),
    ("POST", "/api/v1/devices", {"id": "d\x00"}),
    ("POST", "/api/v1/devices", {"id": "d3", "ticket": "t\x00"}),
    ("GET", "/api/v1/models/a%00b", None),
    ("GET", "/api/v1/devices/a%00b", None),
    ("GET", "/api/v1/models/a%00b/versions/1", None),
    ("POST", "/api/v1/models/iris/versions/1/revoke", {"ticket": "t\x00"}),
    ("POST", "/api/v1/models/iris/versions", {"blob": "\x00"}),
    ("POST", "/api/v1/tokens", {"role": "viewer", "subject": "a\x00"}),
    ("POST", "/api/v1/deployments", {"model": "a\x00", "version": 1, "all": True}),
    ("POST", "/api/v1/deployments", {"model": "iris", "version": 1, "devices": ["a\x00"]}),
    ("POST", "/api/v1/rollbacks", {"model": "a\x00", "all": True}),
]


@pytest.mark.parametrize(("method", "url", "body"), _NUL_CASES)
def test_nul_characters_are_400_before_they_reach_the_database(
    method: str, url: str, body: Any, hub: TestClient, admin_token: str
) -> None:
    r = hub.request(method, url, json=body, headers=auth(admin_token))
    assert r.status_code == 400, r.text
    assert "NUL" in r.json()["error"]


@pytest.mark.postgres
def test_on_postgres_nul_characters_are_400_not_503(pg_hub: tuple[TestClient, str]) -> None:
    # PostgreSQL text columns cannot hold NUL: without the check these were 503s.
    http, token = pg_hub
    for method, url, body in _NUL_CASES:
        r = http.request(method, url, json=body, headers=auth(token))
        assert r.status_code == 400, (url, body, r.text)
