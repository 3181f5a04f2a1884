"""Output decisions declared at registration are signed into the manifest (issue 6, defect 16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelfleet.hashing import sha256_bytes
from modelfleet.packaging.manifest import PackageManifest
from tests.hub._support import auth


def _register(http: TestClient, token: str, model: bytes, decisions: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    h = auth(token)
    blob = http.post("/api/v1/blobs", content=model, headers=h).json()["sha256"]
    r = http.post(
        "/api/v1/models/iris/versions", json={"blob": blob, "decisions": decisions}, headers=h
    )
    return r.status_code, r.json()


def test_declared_decision_overrides_the_inferred_one(
    http: TestClient, admin_token: str, onnx_bytes: bytes
) -> None:
    status, v = _register(http, admin_token, onnx_bytes, {"probabilities": {"kind": "ignore"}})
    assert status == 201, v
    raw = http.get("/api/v1/models/iris/versions/1/manifest", headers=auth(admin_token)).content
    assert sha256_bytes(raw) == v["manifest_sha256"]
    decisions = PackageManifest.from_json(raw).effective_decisions()
    assert decisions["probabilities"].kind == "ignore"
    assert decisions["label"].kind == "label"  # not declared: inferred


@pytest.mark.parametrize(
    "decisions",
    [
        {"probabilities": {"kind": "vibes"}},
        {"probabilities": {"kind": "regression", "rtol": -1}},
        {"no-such-output": {"kind": "label"}},
    ],
    ids=["unknown-kind", "negative-tolerance", "unknown-output"],
)
def test_bad_decisions_are_refused_and_nothing_is_stored(
    http: TestClient, admin_token: str, onnx_bytes: bytes, decisions: object
) -> None:
    status, body = _register(http, admin_token, onnx_bytes, decisions)
    assert status == 400, body
    assert "error" in body
    r = http.get("/api/v1/models/iris", headers=auth(admin_token))
    assert r.status_code == 404


def test_cli_decision_option_is_checked_before_anything_is_sent(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not used")
    r = subprocess.run(
        [sys.executable, "-m", "modelfleet", "model", "register", "m", str(model),
         "--decision", "probabilities", "--hub", "http://127.0.0.1:9", "--token", "t"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "OUTPUT=KIND" in r.stderr and "Traceback" not in r.stderr
