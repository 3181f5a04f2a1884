"""Registration with a drift reference (issue 9) through the SDK and the real hub app; the
hub stores windows that carry drift counts and shows them back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelfleet.client import HubClient
from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError
from modelfleet.hub.service import HubService
from modelfleet.monitoring.profile_counts import ProfileCounter, ProfileWindow
from modelfleet.packaging.manifest import PackageManifest
from tests.hub._support import auth
from tests.hub._telemetry import batch, window


def test_a_reference_is_profiled_by_the_sdk_and_signed_into_the_manifest(
    client: HubClient, tmp_path: Path, onnx_bytes: bytes, sample_rows: np.ndarray
) -> None:
    np.save(tmp_path / "ref.npy", sample_rows)
    v = client.register_version("iris", onnx_bytes, reference=tmp_path / "ref.npy")
    drift = v["drift"]
    assert drift["rows"] == 40 and drift["inputs"] == 4 and drift["outputs"] == 3
    assert drift["categorical"] == ["label"] and drift["sketches"] is True
    manifest = PackageManifest.from_json(client.get_manifest("iris", 1))
    profile = manifest.package_profile()
    assert profile is not None and profile.digest == drift["reference_profile"]
    assert manifest.sha256 == v["sha256"]  # the manifest the catalog signs (its digest)
    audit = [e for e in client.audit() if e["action"] == "model.register"][-1]
    assert audit["details"]["reference_profile"] == profile.digest


def test_registering_without_a_reference_says_drift_will_not_be_computed(
    client: HubClient, onnx_bytes: bytes
) -> None:
    v = client.register_version("iris", onnx_bytes)
    assert v["drift"]["reference_profile"] is None
    assert "drift will not be computed" in v["drift"]["message"]
    manifest = PackageManifest.from_json(client.get_manifest("iris", 1))
    assert manifest.reference_profile is None


def test_a_profile_naming_another_tensor_is_refused_and_nothing_is_kept(
    http: TestClient, admin_token: str, client: HubClient, tmp_path: Path, onnx_bytes: bytes,
    sample_rows: np.ndarray,
) -> None:  # fmt: skip
    from modelfleet.packaging.reference import build_package_profile, load_reference

    np.save(tmp_path / "ref.npy", sample_rows)
    doc = build_package_profile(onnx_bytes, load_reference(tmp_path / "ref.npy")).to_dict()
    doc["inputs"] = [{"tensor": "pixels", "columns": 4}]
    blob = client.upload_blob(onnx_bytes)
    r = http.post(
        "/api/v1/models/iris/versions",
        json={"blob": blob, "reference_profile": doc},
        headers=auth(admin_token),
    )
    assert r.status_code == 400 and "names input 'pixels'" in r.json()["error"]
    assert client.list_models() == []


def test_the_hub_stores_windows_with_drift_counts_and_shows_them(
    client: HubClient, service: HubService, clock: ManualClock, tmp_path: Path,
    onnx_bytes: bytes, sample_rows: np.ndarray,
) -> None:  # fmt: skip
    np.save(tmp_path / "ref.npy", sample_rows)
    client.register_version("iris", onnx_bytes, reference=tmp_path / "ref.npy")
    profile = PackageManifest.from_json(client.get_manifest("iris", 1)).package_profile()
    assert profile is not None
    counter = ProfileCounter(profile.profile, sketches=False)
    counter.count(sample_rows[:25])
    wire = counter.snapshot().to_wire()
    service.add_device("cam-1", "plant-a", [], actor="admin:admin")
    now = clock.now()
    stored = client.send_telemetry(
        "cam-1", batch("cam-1", [window(1, "cam-1", now, profile=wire)], now)
    )
    assert stored["stored"] == 1
    (shown,) = client.device_windows("cam-1")
    assert shown["profile"] == wire  # kept as sent
    back = ProfileWindow.from_wire(shown["profile"], profile.profile)
    assert back.rows == 25
    summary = service.telemetry_summary(  # merging ignores the extra field
        model="iris", since=now - timedelta(hours=1), until=now + timedelta(minutes=1)
    )
    assert summary["requests"]["ok"] == 10, summary


def test_categorical_without_a_reference_is_refused_before_any_upload(
    client: HubClient, onnx_bytes: bytes
) -> None:
    with pytest.raises(InvalidInputError, match="without a reference"):
        client.register_version("iris", onnx_bytes, categorical=["x0"])
    assert client.list_models() == []


def test_a_fitted_estimator_is_converted_then_profiled(
    client: HubClient, tmp_path: Path, fitted_model: object, sample_rows: np.ndarray
) -> None:
    from modelfleet.client import register_model

    path = tmp_path / "ref.csv"
    path.write_text("a,b,c,d\n" + "\n".join(",".join(map(str, r)) for r in sample_rows) + "\n")
    v = register_model(
        client, "iris", fitted_model, sample_input=sample_rows[:3], reference=path,
        categorical=["d"],
    )  # fmt: skip
    assert v["drift"]["inputs"] == 4 and "d" in v["drift"]["categorical"]
    manifest = PackageManifest.from_json(client.get_manifest("iris", 1))
    assert manifest.package_profile().profile.input_names == ("a", "b", "c", "d")  # type: ignore[union-attr]
