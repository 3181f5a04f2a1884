"""POST /api/v1/blobs at the edge: empty uploads are refused and nothing is kept."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelfleet.hub.service import HubService
from tests.hub._support import auth


def _stored(service: HubService) -> set[Path]:
    return {p for p in service.paths.artefacts.rglob("*") if p.is_file()}


def _nothing() -> Iterator[bytes]:
    yield from ()


def _empty_chunks() -> Iterator[bytes]:
    yield b""
    yield b""


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="content-length-0"),
        pytest.param(_nothing, id="chunked-no-chunks"),
        pytest.param(_empty_chunks, id="chunked-empty-chunks"),
    ],
)
def test_empty_upload_is_400_and_stores_and_audits_nothing(
    content: object, http: TestClient, admin_token: str, service: HubService
) -> None:
    before_files, before_audit = _stored(service), len(service.audit(limit=1000))
    body = content() if callable(content) else content
    r = http.post("/api/v1/blobs", content=body, headers=auth(admin_token))
    assert r.status_code == 400, r.text
    assert "empty" in r.json()["error"]
    assert _stored(service) == before_files
    assert len(service.audit(limit=1000)) == before_audit


def test_upload_answers_the_digest_and_length_of_what_was_sent(
    http: TestClient, admin_token: str
) -> None:
    data = b"\x00onnx-ish bytes" * 1000
    r = http.post("/api/v1/blobs", content=data, headers=auth(admin_token))
    assert r.status_code == 201
    assert r.json() == {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}


def test_upload_over_the_declared_limit_is_413_before_reading(
    http: TestClient, admin_token: str, service: HubService
) -> None:
    too_big = str(service.config.max_upload_bytes + 1)
    r = http.post(
        "/api/v1/blobs",
        content=b"x",
        headers={**auth(admin_token), "Content-Length": too_big},
    )
    assert r.status_code == 413
