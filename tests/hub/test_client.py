"""HubClient against the real app: methods, return shapes, error translation."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelfleet.client import HubClient, register_model
from modelfleet.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    InvalidModelError,
    NotFoundError,
    TransportError,
    UnauthenticatedError,
)
from modelfleet.hashing import sha256_bytes
from modelfleet.packaging.manifest import PackageManifest


def test_register_fitted_sklearn_model_with_sample_input(
    client: HubClient, fitted_model: object, sample_rows: np.ndarray
) -> None:
    v = register_model(client, "iris", fitted_model, sample_input=sample_rows[:3],
                       lineage={"run": "r-1"})  # fmt: skip
    assert v["version"] == 1 and v["smoke_vectors"] == 3 and v["lineage"]["run"] == "r-1"
    manifest = PackageManifest.from_json(client.get_manifest("iris", 1))
    assert manifest.sha256 == v["sha256"]
    assert client.list_models()[0]["latest_version"] == 1
    assert client.get_model("iris")["versions"][0]["sha256"] == v["sha256"]


def test_register_from_file_and_npy_path(
    client: HubClient, tmp_path: Path, onnx_bytes: bytes, sample_rows: np.ndarray
) -> None:
    (tmp_path / "m.onnx").write_bytes(onnx_bytes)
    np.save(tmp_path / "x.npy", sample_rows[:2])
    np.savetxt(tmp_path / "x.csv", sample_rows[:4], delimiter=",")
    v1 = client.register_version("iris", tmp_path / "m.onnx", tmp_path / "x.npy")
    v2 = client.register_version("iris", onnx_bytes, tmp_path / "x.csv")
    assert (v1["version"], v1["smoke_vectors"]) == (1, 2)
    assert (v2["version"], v2["smoke_vectors"]) == (2, 4)
    assert v1["sha256"] == sha256_bytes(onnx_bytes)
    assert client.upload_blob(tmp_path / "m.onnx") == v1["sha256"]


def test_sklearn_model_without_sample_is_refused_locally(
    client: HubClient, fitted_model: object
) -> None:
    with pytest.raises(InvalidInputError, match="needs sample_input"):
        client.register_version("iris", fitted_model)


def test_device_lifecycle_deploy_report_rollback(
    client: HubClient, http: TestClient, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    device = client.add_device("cam-1", site="plant", tags=["line-3", "gpu"])
    assert device["id"] == "cam-1" and device["token"].startswith("mfd_")
    assert device["tags"] == ["gpu", "line-3"]
    client.register_version("iris", onnx_bytes)
    client.register_version("iris", onnx_bytes_v2)
    d = client.deploy("iris", 1, all_devices=True, slo={"p99_ms": 30})
    assert d["devices"][0]["production"] == 1 and d["devices"][0]["serial"] == 1
    d = client.deploy("iris", 2, ["cam-1"], mode="split", share=0.2, ticket="CHG-2")
    assert d["devices"][0]["candidate"] == 2
    assert (d["devices"][0]["mode"], d["devices"][0]["share"]) == ("split", 0.2)
    assert client.get_model("iris")["versions"][1]["deployments"][0]["role"] == "candidate"
    assert client.get_version("iris", 2)["deployments"][0]["role"] == "candidate"

    device_client = HubClient(str(http.base_url), device["token"], http=http)
    device_client.report("cam-1", {"device_id": "cam-1", "applied_serial": 2})
    assert device_client.get_device("cam-1")["report"]["applied_serial"] == 2
    assert device_client.trust_root() == client.trust_root()
    with pytest.raises(ForbiddenError, match="may not"):
        device_client.list_devices()

    r = client.rollback("iris", all_devices=True)
    assert r["devices"][0]["candidate"] is None
    assert client.list_devices()[0]["desired_state"]["serial"] == 3
    actions = [e["action"] for e in client.audit(limit=500)]
    assert actions.count("deploy") == 2 and "rollback" in actions
    assert client.verify_audit() is None


def test_errors_come_back_as_modelfleet_exceptions_with_the_hub_message(
    client: HubClient, http: TestClient, ort_unloadable_onnx: bytes
) -> None:
    with pytest.raises(NotFoundError, match="no model 'ghost'"):
        client.get_model("ghost")
    with pytest.raises(InvalidModelError, match="ONNX Runtime cannot load"):
        client.register_version("bad", ort_unloadable_onnx)
    client.add_device("dup")
    with pytest.raises(ConflictError, match="already exists"):
        client.add_device("dup")
    with pytest.raises(InvalidInputError, match="name the devices"):
        client.deploy("bad", 1)
    with pytest.raises(UnauthenticatedError):
        HubClient(str(http.base_url), "mft_wrong", http=http).list_models()
    viewer = HubClient(str(http.base_url), client.create_token("viewer", "v"), http=http)
    with pytest.raises(ForbiddenError):
        viewer.add_device("x")
    assert HubClient(str(http.base_url), None, http=http).health()["status"] == "ok"


def test_unreachable_hub_is_a_transport_error_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with (
        HubClient(url, "t", timeout=2.0) as c,
        pytest.raises(TransportError, match=f"cannot reach the hub at {url}"),
    ):
        c.health()
