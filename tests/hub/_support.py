"""Small helpers for hub tests."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def auth(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def register(http: TestClient, token: str, name: str, model: bytes) -> dict[str, Any]:
    """Upload ``model`` and register it over the API; returns the version JSON."""
    up = http.post("/api/v1/blobs", content=model, headers=auth(token))
    assert up.status_code == 201, up.text
    r = http.post(
        f"/api/v1/models/{name}/versions", json={"blob": up.json()["sha256"]}, headers=auth(token)
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body
