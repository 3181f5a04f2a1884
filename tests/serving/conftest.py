"""Fixtures of the serving tests."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from modelfleet.packaging.sklearn import sklearn_to_onnx
from tests.serving._support import Models, echo_model


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    X, y = make_classification(
        n_samples=600, n_features=4, n_informative=3, n_redundant=0, n_classes=3,
        n_clusters_per_class=1, class_sep=2.0, random_state=0,
    )  # fmt: skip
    X = X.astype(np.float32)
    a = LogisticRegression(max_iter=1000).fit(X, y)
    b = LogisticRegression(max_iter=1000).fit(X, (y + 1) % 3)
    paths = {"lr_a": root / "a.onnx", "lr_b": root / "b.onnx", "echo": root / "echo.onnx"}
    paths["lr_a"].write_bytes(sklearn_to_onnx(a, X[:1]))
    paths["lr_b"].write_bytes(sklearn_to_onnx(b, X[:1]))
    paths["echo"].write_bytes(echo_model())
    return Models(X=X[:200].copy(), **paths)
