"""Every registered package is also signed with OpenSSF model signing (issue 10).

A published version's model verifies on its own, outside modelfleet, with model-signing's
Python API and its CLI against the hub's public key; the bundle's digests are bound into the
catalog's signed TUF target; a tampered model file fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tuf.api.metadata import Metadata, Targets

from modelfleet.hashing import sha256_bytes
from modelfleet.hub.service import HubService
from modelfleet.packaging.openssf_signing import SIGNING_PUBLIC_KEY_NAME, read_signature

model_signing = pytest.importorskip("model_signing")


def _catalog_targets(service: HubService) -> dict[str, Any]:
    """Every target the catalog's top-level and delegated targets metadata list now."""
    out: dict[str, Any] = {}
    md = service.paths.tuf / "catalog"
    latest: dict[str, tuple[int, Path]] = {}
    for path in md.glob("*.json"):
        version, _, role = path.name.partition(".")
        wanted = version.isdigit() and role not in ("root.json", "snapshot.json")
        if wanted and int(version) > latest.get(role, (0, path))[0]:
            latest[role] = (int(version), path)
    for _, path in latest.values():
        signed = Metadata[Targets].from_file(str(path)).signed
        out.update(signed.targets)
    return out


@pytest.fixture
def published(service: HubService, onnx_bytes: bytes, sample_rows: np.ndarray) -> HubService:
    service.add_device("cam-1", "site-a", [], actor="admin:admin")
    service.register_version("iris", onnx_bytes, sample_rows[:3], actor="admin:admin")
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    return service


def _model_folder(tmp_path: Path, model: bytes, bundle: bytes) -> tuple[Path, Path]:
    folder = tmp_path / "iris"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model)
    sig = tmp_path / "model.sig"
    sig.write_bytes(bundle)
    return folder, sig


def test_registered_package_verifies_with_model_signing_and_is_bound_into_tuf(
    published: HubService, onnx_bytes: bytes, tmp_path: Path
) -> None:
    targets = _catalog_targets(published)
    model_target = targets["models/iris/1/model.onnx"]
    binding = model_target.custom["model_signing"]
    bundle_target = targets[binding["bundle"]]
    assert binding["bundle"] == "models/iris/1/model.sig"
    assert bundle_target.hashes["sha256"] == binding["bundle_sha256"]
    url = f"models/iris/1/{binding['bundle_sha256']}.model.sig"
    bundle = published.tuf_target("catalog", url).read_bytes()
    assert sha256_bytes(bundle) == binding["bundle_sha256"]
    assert read_signature(bundle).subject_sha256 == binding["subject_sha256"]

    folder, sig = _model_folder(tmp_path, onnx_bytes, bundle)
    public_key = published.paths.keys / SIGNING_PUBLIC_KEY_NAME
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(
        folder, sig
    )

    (folder / "model.onnx").write_bytes(onnx_bytes[:-1] + b"\x00")
    with pytest.raises(ValueError, match="mismatch"):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(
            folder, sig
        )


def test_model_signing_cli_verifies_a_package_and_refuses_a_tampered_one(
    published: HubService, onnx_bytes: bytes, tmp_path: Path
) -> None:
    cli = shutil.which("model_signing") or str(Path(sys.executable).with_name("model_signing"))
    if not Path(cli).exists():
        pytest.skip("model-signing's CLI is not installed")
    binding = _catalog_targets(published)["models/iris/1/model.onnx"].custom["model_signing"]
    url = f"models/iris/1/{binding['bundle_sha256']}.model.sig"
    bundle = published.tuf_target("catalog", url).read_bytes()
    folder, sig = _model_folder(tmp_path, onnx_bytes, bundle)
    public_key = published.paths.keys / SIGNING_PUBLIC_KEY_NAME

    def verify() -> subprocess.CompletedProcess[str]:
        args = ["verify", "key", "--signature", str(sig), "--public_key", str(public_key)]
        return subprocess.run(
            [cli, *args, str(folder)], capture_output=True, text=True, timeout=120, check=False
        )

    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (folder / "model.onnx").write_bytes(onnx_bytes + b"\x00")
    assert verify().returncode != 0
