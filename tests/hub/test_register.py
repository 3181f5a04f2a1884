"""Registering versions: schema, digests, smoke vectors, numbering, and bad models."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError, InvalidModelError, NotFoundError
from modelfleet.hashing import sha256_bytes
from modelfleet.hub.service import HubService
from modelfleet.packaging.manifest import PackageManifest
from tests.hub._support import auth, register


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _store_files(service: HubService) -> set[str]:
    root = service.store.root / "sha256"
    return {name for _, _, files in os.walk(root) for name in files}


def test_register_records_schema_digest_and_smoke_vectors(
    http: TestClient, admin_token: str, onnx_bytes: bytes, sample_rows: np.ndarray
) -> None:
    h = auth(admin_token)
    blob = http.post("/api/v1/blobs", content=onnx_bytes, headers=h).json()
    assert blob == {"sha256": sha256_bytes(onnx_bytes), "length": len(onnx_bytes)}
    sample = http.post("/api/v1/blobs", content=_npy(sample_rows[:5]), headers=h).json()
    r = http.post(
        "/api/v1/models/iris/versions",
        json={"blob": blob["sha256"], "sample_input_blob": sample["sha256"],
              "lineage": {"dataset": "synthetic-7"}},
        headers=h,
    )  # fmt: skip
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["model"] == "iris" and v["version"] == 1
    assert v["sha256"] == sha256_bytes(onnx_bytes) and v["length"] == len(onnx_bytes)
    assert v["schema"]["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert v["smoke_vectors"] == 5
    assert v["lineage"]["dataset"] == "synthetic-7"
    assert v["deployments"] == [] and v["published"] is False

    raw = http.get("/api/v1/models/iris/versions/1/manifest", headers=h).content
    assert sha256_bytes(raw) == v["manifest_sha256"] and len(raw) == v["manifest_length"]
    manifest = PackageManifest.from_json(raw)
    assert manifest.version == 1 and manifest.sha256 == v["sha256"]
    assert len(manifest.smoke) == 5


def test_versions_are_numbered_one_two_and_listed(
    http: TestClient, admin_token: str, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    assert register(http, admin_token, "iris", onnx_bytes)["version"] == 1
    assert register(http, admin_token, "iris", onnx_bytes_v2)["version"] == 2
    model = http.get("/api/v1/models/iris", headers=auth(admin_token)).json()
    assert model["latest_version"] == 2
    assert [v["version"] for v in model["versions"]] == [1, 2]
    models = http.get("/api/v1/models", headers=auth(admin_token)).json()
    assert [(m["name"], m["latest_version"], m["versions"]) for m in models] == [("iris", 2, 2)]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_onnx", "not an ONNX model"),
        ("ort_unloadable", "ONNX Runtime cannot load the model"),
    ],
)
def test_invalid_model_is_refused_and_its_blob_is_not_kept(
    case: str,
    message: str,
    http: TestClient,
    admin_token: str,
    service: HubService,
    onnx_bytes: bytes,
    ort_unloadable_onnx: bytes,
) -> None:
    data = {"not_onnx": b"this is a pickle, honestly", "ort_unloadable": ort_unloadable_onnx}[case]
    h = auth(admin_token)
    digest = http.post("/api/v1/blobs", content=data, headers=h).json()["sha256"]
    assert digest in _store_files(service)
    audit_before = len(service.audit(limit=1000))
    r = http.post("/api/v1/models/broken/versions", json={"blob": digest}, headers=h)
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert r.json()["type"] == "InvalidModelError"
    assert http.get("/api/v1/models/broken", headers=h).status_code == 404
    # defect 5: the refused upload does not stay on disk, and its removal is audited
    assert _store_files(service) == set()
    entries = service.audit(limit=1000)
    assert [e["action"] for e in entries[audit_before:]] == ["blob.discard"]
    assert entries[-1]["details"]["blobs"] == [digest]
    # no version number was consumed
    assert register(http, admin_token, "broken", onnx_bytes)["version"] == 1


def test_service_register_with_invalid_bytes_stores_nothing(
    service: HubService, ort_unloadable_onnx: bytes
) -> None:
    with pytest.raises(InvalidModelError):
        service.register_version("m", ort_unloadable_onnx, actor="admin:admin")
    assert _store_files(service) == set()
    with pytest.raises(NotFoundError):
        service.get_model("m")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"blob": "0" * 64}, "was not uploaded"),
        ({"blob": "not-a-digest"}, "sha256"),
        ({}, "blob"),
    ],
)
def test_register_with_bad_blob_reference_is_400(
    http: TestClient, admin_token: str, body: dict[str, str], message: str
) -> None:
    r = http.post("/api/v1/models/iris/versions", json=body, headers=auth(admin_token))
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_sample_input_that_does_not_fit_is_400(
    http: TestClient, admin_token: str, onnx_bytes: bytes
) -> None:
    h = auth(admin_token)
    bad = http.post("/api/v1/blobs", content=_npy(np.zeros((3, 7))), headers=h).json()["sha256"]
    pickle = http.post("/api/v1/blobs", content=b"\x80\x04garbage", headers=h).json()["sha256"]
    for sample, message in ((bad, "does not fit"), (pickle, "not a valid .npy")):
        # each refusal discards the model blob it named: upload it for each try
        blob = http.post("/api/v1/blobs", content=onnx_bytes, headers=h).json()["sha256"]
        r = http.post(
            "/api/v1/models/iris/versions",
            json={"blob": blob, "sample_input_blob": sample},
            headers=h,
        )
        assert r.status_code == 400
        assert message in r.json()["error"]


def test_invalid_model_name_is_400(http: TestClient, admin_token: str, onnx_bytes: bytes) -> None:
    h = auth(admin_token)
    blob = http.post("/api/v1/blobs", content=onnx_bytes, headers=h).json()["sha256"]
    r = http.post("/api/v1/models/..%2Fetc/versions", json={"blob": blob}, headers=h)
    assert r.status_code in (400, 404)
    r = http.post("/api/v1/models/bad name/versions", json={"blob": blob}, headers=h)
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]


def test_upload_over_the_limit_is_413_and_leaves_no_file(
    hub_home: tuple[Path, str], clock: ManualClock, onnx_bytes: bytes
) -> None:
    import dataclasses

    from modelfleet.hub.app import build_hub_app
    from modelfleet.hub.config import load_hub_config

    config = dataclasses.replace(load_hub_config(hub_home[0]), max_upload_bytes=200)
    svc = HubService(config, clock)
    try:
        with TestClient(build_hub_app(svc, refresh_interval_s=0)) as http:
            r = http.post("/api/v1/blobs", content=onnx_bytes, headers=auth(hub_home[1]))
            assert r.status_code == 413
            # without Content-Length: streamed, refused once the limit is passed
            r = http.post(
                "/api/v1/blobs",
                content=iter([onnx_bytes[:150], onnx_bytes[150:]]),
                headers=auth(hub_home[1]),
            )
            assert r.status_code == 413, r.text
        assert _store_files(svc) == set()
        assert list((svc.store.root / "staging").iterdir()) == []
    finally:
        svc.close()


def test_concurrent_registrations_get_distinct_versions_and_a_linear_audit_chain(
    service: HubService, onnx_bytes: bytes
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        versions = list(
            pool.map(
                lambda _: service.register_version("iris", onnx_bytes, actor="admin:admin"),
                range(4),
            )
        )
    assert sorted(v["version"] for v in versions) == [1, 2, 3, 4]
    assert service.verify_audit() is None


def test_empty_upload_is_refused_and_stores_nothing(
    http: TestClient, admin_token: str, service: HubService
) -> None:
    r = http.post("/api/v1/blobs", content=b"", headers=auth(admin_token))
    assert r.status_code == 400, r.text
    assert "empty" in r.json()["error"]
    with pytest.raises(InvalidInputError, match="empty"):
        service.put_blob(iter([b"", b""]), actor="admin:admin")
    assert _store_files(service) == set()
    assert "blob.upload" not in [e["action"] for e in service.audit(limit=1000)]


def test_refused_registration_keeps_a_blob_an_existing_version_uses(
    service: HubService, onnx_bytes: bytes
) -> None:
    v1 = service.register_version("iris", onnx_bytes, actor="admin:admin")
    digest, _ = service.put_blob([onnx_bytes], actor="admin:admin")
    assert digest == v1["sha256"]
    with pytest.raises(InvalidInputError, match="invalid model name"):
        service.register_version("bad name", digest, actor="admin:admin")
    assert service.store.exists(digest)


def _age(service: HubService, digest: str, clock: ManualClock, seconds: float) -> None:
    """Make a blob's file look ``seconds`` old on the hub's clock."""
    t = clock.now().timestamp() - seconds
    os.utime(service.store.path(digest), (t, t))


def test_garbage_collection_deletes_only_old_unreferenced_blobs(
    service: HubService, clock: ManualClock, onnx_bytes: bytes
) -> None:
    v1 = service.register_version("iris", onnx_bytes, actor="admin:admin")
    old, _ = service.put_blob([b"orphan upload, long ago"], actor="admin:admin")
    fresh, _ = service.put_blob([b"orphan upload, just now"], actor="admin:admin")
    for digest in (old, v1["sha256"], v1["manifest_sha256"]):
        _age(service, digest, clock, 7200)
    _age(service, fresh, clock, 60)

    result = service.collect_garbage(older_than_s=3600)

    assert result["deleted"] == [old] and result["deleted_count"] == 1
    assert result["freed_bytes"] == len(b"orphan upload, long ago")
    assert result["kept_recent"] == 1
    assert not service.store.exists(old)
    for digest in (fresh, v1["sha256"], v1["manifest_sha256"]):
        assert service.store.exists(digest)
    assert service.audit(limit=1000)[-1]["action"] == "blob.gc"
    # an unreferenced blob goes once it passes the grace period
    clock.advance(3600)
    assert service.collect_garbage(older_than_s=3600)["deleted"] == [fresh]


def test_garbage_collection_keeps_desired_states(
    service: HubService, clock: ManualClock, onnx_bytes: bytes
) -> None:
    service.register_version("iris", onnx_bytes, actor="admin:admin")
    service.add_device("cam-1", actor="admin:admin")
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    state = service.get_device("cam-1")["desired_state"]["sha256"]
    for digest in _store_files(service):
        _age(service, digest, clock, 7200)
    assert service.collect_garbage(older_than_s=0)["deleted"] == []
    # Desired states live in the database (issue 8): the collection cannot touch them.
    listed = service.director.listed_state("cam-1")
    assert listed is not None and listed[0] == state


def test_upkeep_round_collects_garbage(service: HubService, clock: ManualClock) -> None:
    old, _ = service.put_blob([b"orphan"], actor="admin:admin")
    _age(service, old, clock, 7200)
    service.refresh_expiring()
    assert not service.store.exists(old)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_garbage_collection_refuses_a_bad_grace_period(service: HubService, bad: float) -> None:
    with pytest.raises(InvalidInputError):
        service.collect_garbage(older_than_s=bad)
