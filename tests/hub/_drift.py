"""Drift helpers for hub tests (issue 9): a version registered with a reference profile, and
windows carrying drift counts made with the real ProfileCounter on the model's real outputs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from modelfleet.hub.service import HubService
from modelfleet.monitoring.profile_counts import ProfileCounter
from modelfleet.packaging.reference import PackageProfile, build_package_profile, load_reference
from tests.hub._telemetry import batch, window

ADMIN = "admin:admin"
REFERENCE_ROWS = 4000


def reference_rows(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(REFERENCE_ROWS, 4)).astype(np.float32)


def register_profiled(
    service: HubService, onnx: bytes, tmp_path: Path, name: str = "iris"
) -> PackageProfile:
    """Register the next version of ``name`` with a reference profile of normal rows."""
    path = tmp_path / "reference.npy"
    np.save(path, reference_rows())
    package = build_package_profile(onnx, load_reference(path))
    service.register_version(name, onnx, actor=ADMIN, reference_profile=package.to_dict())
    return package


class Outputs:
    """The model's outputs on given rows (ONNX Runtime), as profile columns."""

    def __init__(self, onnx: bytes) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])

    def __call__(self, rows: np.ndarray) -> dict[str, Any]:
        label, probabilities = self._session.run(None, {"X": rows})
        p = np.asarray(probabilities, np.float64)
        return {
            "label": np.asarray(label),
            "probabilities[0]": p[:, 0],
            "probabilities[1]": p[:, 1],
        }


def rows(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """``n`` rows of the reference distribution, the first column shifted by ``shift``."""
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    x[:, 0] += shift
    return x


def counts(
    package: PackageProfile, x: np.ndarray, outputs: Outputs | None, *, sketches: bool = True
) -> dict[str, Any]:
    counter = ProfileCounter(package.profile, sketches=sketches)
    counter.count(x, None if outputs is None else outputs(x))
    return counter.snapshot().to_wire()


def send(
    service: HubService,
    device: str,
    seq: int,
    closed: datetime,
    profile: dict[str, Any] | None,
    *,
    version: str = "1",
    rollout_id: str | None = None,
    role: str = "production",
    buffer_id: str = "buf-1",
) -> dict[str, Any]:
    """One window of ``device`` carrying ``profile`` counts, through real ingest."""
    extra = {} if profile is None else {"profile": profile}
    record = window(seq, device, closed, version=version, rollout_id=rollout_id, role=role, **extra)
    body = orjson.dumps(batch(device, [record], closed, buffer_id=buffer_id))
    return service.ingest_telemetry(device, body)
