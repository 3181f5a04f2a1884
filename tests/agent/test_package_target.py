"""A package for other hardware (issue 10): refused before its model is downloaded, the
reason recorded, the running version keeps serving."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.errors import InvalidInputError
from modelfleet.hashing import sha256_bytes
from modelfleet.packaging.build import build_manifest
from modelfleet.packaging.target import DeviceProfile, PackageTarget, target_mismatch
from modelfleet.rollout.desired_state import ArtefactRef, manifest_target_path, model_target_path
from modelfleet.serving.host import ModelHost
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx

DEVICE = "dev-1"
PROFILE = DeviceProfile.of({"arm64"}, ["CPUExecutionProvider"])


def _publish(
    source: MemorySource, version: int, model: bytes, target: dict[str, object]
) -> ArtefactRef:
    manifest = build_manifest("m", version, model)
    manifest = dataclasses.replace(manifest, extra={**manifest.extra, "target": target})
    data = manifest.to_json()
    for path, blob in (
        (model_target_path("m", version), model),
        (manifest_target_path("m", version), data),
    ):
        source.catalog[path] = (sha256_bytes(blob), len(blob))
        source.blobs[path] = blob
    return ArtefactRef("m", version, sha256_bytes(model), len(model), sha256_bytes(data), len(data))


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ({"hardware": ["arm64", "npu"]}, "needs hardware npu"),
        ({"execution_providers": ["CUDAExecutionProvider"]}, "runs on CUDAExecutionProvider"),
    ],
    ids=["other-hardware", "other-execution-provider"],
)
def test_a_package_for_other_hardware_is_refused_and_serving_continues(
    tmp_path: Path, target: dict[str, object], reason: str
) -> None:
    source, host = MemorySource(), ModelHost()
    updater = Updater(DEVICE, tmp_path, source, host, ManualClock(), profile=PROFILE)
    source.assign(DEVICE, source.publish("m", 1, logistic_onnx(seed=0)[0]))
    updater.run_cycle()
    v2 = _publish(source, 2, logistic_onnx(seed=1)[0], target)
    source.assign(DEVICE, v2)
    downloads = source.downloads
    result = updater.run_cycle()
    assert len(result.refusals) == 1 and reason in result.refusals[0].reason
    route = host.route("m")
    assert route is not None and route.production.version == "1"
    assert source.downloads == downloads + 1  # the manifest only, never the model
    assert not (tmp_path / "models" / "m" / v2.sha256).exists()
    assert updater.status()["last_refusal"]["version"] == 2


def test_a_package_that_fits_installs(tmp_path: Path) -> None:
    source, host = MemorySource(), ModelHost()
    updater = Updater(DEVICE, tmp_path, source, host, ManualClock(), profile=PROFILE)
    target = {
        "hardware": ["arm64"],
        "execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    }
    source.assign(DEVICE, _publish(source, 1, logistic_onnx(seed=0)[0], target))
    assert not updater.run_cycle().refusals
    route = host.route("m")
    assert route is not None and route.production.version == "1"


def test_target_fields_are_parsed_strictly() -> None:
    assert not PackageTarget.from_dict(None)
    assert target_mismatch(PackageTarget.from_dict({}), DeviceProfile()) is None
    for bad in ("x", {"gpu": []}, {"hardware": "arm64"}, {"hardware": ["bad tag"]}):
        with pytest.raises(InvalidInputError):
            PackageTarget.from_dict(bad)
