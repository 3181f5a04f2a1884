"""The drift API (issue 9): GET /api/v1/drift and /api/v1/drift/states through the real app,
readable by viewers, 400 on bad parameters, 404 on an unknown model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelfleet.clock import ManualClock
from modelfleet.hub.service import HubService
from tests.hub._drift import ADMIN, Outputs, counts, register_profiled, rows, send
from tests.hub._support import auth


@pytest.fixture
def profiled(service: HubService, clock: ManualClock, onnx_bytes: bytes, tmp_path: Path) -> None:
    package = register_profiled(service, onnx_bytes, tmp_path)
    service.add_device("cam-1", "plant-a", [], actor=ADMIN)
    send(service, "cam-1", 1, clock.now(), counts(package, rows(800, 1), Outputs(onnx_bytes)))
    clock.advance(60)


def test_a_viewer_reads_the_report_and_the_states(
    http: TestClient, tokens: dict[str, str], profiled: None
) -> None:
    r = http.get("/api/v1/drift", params={"model": "iris"}, headers=auth(tokens["viewer"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"] == "no_drift" and body["rows"] == 800 and body["version"] == 1
    assert body["inputs"] and body["outputs"] and "rule" in body
    r = http.get(
        "/api/v1/drift",
        params={
            "model": "iris",
            "version": "1",
            "site": "plant-a",
            "since": "2025-12-31T23:00:00Z",
        },
        headers=auth(tokens["viewer"]),
    )
    assert r.status_code == 200 and r.json()["sites"] == ["plant-a"]
    r = http.get("/api/v1/drift/states", params={"model": "iris"}, headers=auth(tokens["viewer"]))
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({}, 400),
        ({"model": ""}, 400),
        ({"model": "iris", "version": "two"}, 400),
        ({"model": "iris", "version": "0"}, 400),
        ({"model": "iris", "since": "yesterday"}, 400),
        ({"model": "iris", "since": "2026-13-01T00:00:00Z"}, 400),
        ({"model": "iris", "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 400),
        ({"model": "iris", "colour": "red"}, 400),
        ({"model": "iris", "version": "9"}, 404),
        ({"model": "ghost"}, 404),
    ],
    ids=[
        "no-model",
        "empty-model",
        "bad-version",
        "zero-version",
        "not-a-time",
        "month-13",
        "empty-range",
        "unknown-param",
        "unknown-version",
        "unknown-model",
    ],
)
def test_bad_parameters_are_4xx_never_5xx(
    http: TestClient, tokens: dict[str, str], profiled: None, params: dict[str, str], status: int
) -> None:
    r = http.get("/api/v1/drift", params=params, headers=auth(tokens["viewer"]))
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_without_a_token_the_report_is_refused(http: TestClient, profiled: None) -> None:
    assert http.get("/api/v1/drift", params={"model": "iris"}).status_code == 401
    assert http.get("/api/v1/drift/states").status_code == 401
