"""GET /api/v1/drift/overrides (ADR 0040) through the real app: a viewer reads the
override-rate states with their baselines, filters by model and site, bad parameters are
400, and a caller without a viewer token is refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from modelfleet.clock import ManualClock
from modelfleet.hub.service import HubService
from tests.hub._overrides import send_overrides
from tests.hub._support import auth

ADMIN = "admin:admin"


@pytest.fixture
def stepped(service: HubService, clock: ManualClock) -> None:
    service.add_device("cam-1", "plant-a", [], actor=ADMIN)
    service.add_device("cam-2", "plant-b", [], actor=ADMIN)
    send_overrides(service, "cam-1", 1, clock.now(), 30, 70)
    send_overrides(service, "cam-2", 1, clock.now(), 5, 95, model="other")
    clock.advance(2 * 3600)
    assert service.advance_overrides()["steps"] == 2


def test_a_viewer_reads_the_override_states_filtered_by_model_and_site(
    http: TestClient, tokens: dict[str, str], stepped: None
) -> None:
    viewer = auth(tokens["viewer"])
    r = http.get("/api/v1/drift/overrides", headers=viewer)
    assert r.status_code == 200, r.text
    assert [(s["model"], s["site"]) for s in r.json()] == [
        ("iris", "plant-a"),
        ("other", "plant-b"),
    ]
    r = http.get("/api/v1/drift/overrides", params={"model": "iris"}, headers=viewer)
    (state,) = r.json()
    assert state["last_rate"] == 0.3 and state["last_judged"] == 100 and state["hours"] == 1
    assert state["baseline"] == {"rate": 0.05, "source": "expected", "version": None, "judged": 0}
    assert state["state"] == "warning" and state["period"] is not None
    r = http.get("/api/v1/drift/overrides", params={"site": "plant-b"}, headers=viewer)
    assert [s["model"] for s in r.json()] == ["other"]
    r = http.get("/api/v1/drift/overrides", params={"model": "iris", "site": "plant-b"},
                 headers=viewer)  # fmt: skip
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize(
    "params",
    [{"site": "x" * 257}, {"model": "m" * 257}, {"colour": "red"}],
    ids=["long-site", "long-model", "unknown-param"],
)
def test_bad_parameters_are_400(
    http: TestClient, tokens: dict[str, str], params: dict[str, str]
) -> None:
    r = http.get("/api/v1/drift/overrides", params=params, headers=auth(tokens["viewer"]))
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_without_a_viewer_token_the_states_are_refused(
    http: TestClient, tokens: dict[str, str]
) -> None:
    assert http.get("/api/v1/drift/overrides").status_code == 401
    r = http.get("/api/v1/drift/overrides", headers=auth(tokens["device"]))
    assert r.status_code == 403, r.text
