"""The benchmark model and request body, made from scratch on every run.

LogisticRegression on ``make_classification(n_samples=5000, n_features=10, n_informative=6,
n_redundant=2, n_classes=3, random_state=0)``, converted with modelfleet's own
``sklearn_to_onnx`` (outputs ``label`` and ``probabilities``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from modelfleet.hashing import sha256_file
from modelfleet.packaging.sklearn import sklearn_to_onnx

MODEL_NAME = "lr"
MODEL_VERSION = "1"
INPUT_NAME = "X"


@dataclass(frozen=True)
class BenchModel:
    """The ONNX file, one request row, its OIP v2 JSON body and ONNX Runtime's answer.

    Attributes:
        path: the ``.onnx`` file.
        digest: its sha256.
        row: the request row, float32 of shape [1, 10].
        body: OIP v2 JSON request body for ``row``.
        label: the label ONNX Runtime computes for ``row`` directly.
        probabilities: the class probabilities ONNX Runtime computes for ``row``.
    """

    path: Path
    digest: str
    row: np.ndarray
    body: bytes
    label: int
    probabilities: list[float]


def oip_body(values: list[float]) -> bytes:
    """The OIP v2 JSON request for one FP32 row (no id, all outputs, JSON encoding)."""
    return orjson.dumps(
        {
            "inputs": [
                {"name": INPUT_NAME, "shape": [1, len(values)], "datatype": "FP32", "data": values}
            ]
        }
    )


def make_model(directory: Path) -> BenchModel:
    """Train, convert and write the model into ``directory``; compute the reference answer."""
    import onnxruntime as ort
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(
        n_samples=5000,
        n_features=10,
        n_informative=6,
        n_redundant=2,
        n_classes=3,
        random_state=0,
    )
    x = x.astype(np.float32)
    estimator = LogisticRegression(max_iter=1000).fit(x, y)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    path.write_bytes(sklearn_to_onnx(estimator, x[:1]))
    digest, _ = sha256_file(path)
    # Row 7, rounded to what JSON carries, so every server sees exactly the same numbers.
    values = [round(float(v), 6) for v in x[7]]
    row = np.asarray([values], dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {INPUT_NAME: row})
    return BenchModel(
        path=path,
        digest=digest,
        row=row,
        body=oip_body(values),
        label=int(label.ravel()[0]),
        probabilities=[float(p) for p in proba.ravel()],
    )
