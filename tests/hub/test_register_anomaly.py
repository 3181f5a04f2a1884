"""An anomaly scorer registered with a version (issue 9) is signed into its manifest, and the
agent's loader hands it, checked against its digest, to the anomaly scorer."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelfleet.agent.anomaly import load_scorer
from modelfleet.agent.models import onnx_loader
from modelfleet.agent.slots import MANIFEST_FILE, MODEL_FILE
from modelfleet.client import HubClient
from modelfleet.errors import InvalidInputError
from modelfleet.hashing import sha256_bytes
from modelfleet.packaging.manifest import PackageManifest
from tests.helpers import logistic_onnx


def forest_onnx(x: np.ndarray) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    fitted = IsolationForest(n_estimators=10, contamination=0.01, random_state=0).fit(x)
    return to_onnx(fitted, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()


def test_the_scorer_rides_in_the_signed_manifest_and_reaches_the_loader(
    client: HubClient, tmp_path: Path
) -> None:
    onnx, x = logistic_onnx()
    scorer = forest_onnx(x)
    result = client.register_version("m", onnx, anomaly_scorer=scorer)
    manifest = PackageManifest.from_json(client.get_manifest("m", result["version"]))
    spec = manifest.anomaly_scorer
    assert spec is not None and spec["sha256"] == sha256_bytes(scorer)
    assert spec["output"] == "scores" and spec["higher_is_anomalous"] is False

    (tmp_path / MODEL_FILE).write_bytes(onnx)
    (tmp_path / MANIFEST_FILE).write_bytes(manifest.to_json())
    told: list[tuple[str, str, Any]] = []
    load = onnx_loader(scorers=lambda m, v, doc: told.append((m, v, doc)))
    load("m", "1", tmp_path / MODEL_FILE, sha256_bytes(onnx))
    ((_, _, doc),) = told
    loaded = load_scorer(doc)
    assert loaded is not None
    scores = loaded.scores(np.concatenate([x[:50], x[:50] * 8]))
    assert (scores[50:] > 0).mean() > (scores[:50] > 0).mean()  # odd rows score higher


def test_a_scorer_whose_bytes_do_not_match_its_digest_is_not_loaded() -> None:
    _, x = logistic_onnx()
    scorer = forest_onnx(x)
    doc = {"format": "modelfleet.anomaly/v1", "sha256": sha256_bytes(scorer),
           "length": len(scorer), "onnx_base64": base64.b64encode(scorer[:-1] + b"x").decode(),
           "input": "X", "output": "scores", "threshold": 0.0,
           "higher_is_anomalous": False}  # fmt: skip
    assert load_scorer(doc) is None


def test_a_scorer_that_does_not_fit_the_model_is_refused(client: HubClient) -> None:
    onnx, x = logistic_onnx()
    with pytest.raises(InvalidInputError, match="does not fit"):
        client.register_version("m", onnx, anomaly_scorer=forest_onnx(x[:, :4].copy()))
    with pytest.raises(InvalidInputError, match="no floating-point output"):
        client.register_version("m", onnx, anomaly_scorer=forest_onnx(x), anomaly_output="nope")
    assert orjson.dumps(client.list_models()) == b"[]"
