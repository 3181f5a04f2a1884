"""Test data makers shared by the suite: small real models, no downloads."""

from __future__ import annotations

import numpy as np

from modelfleet.packaging.sklearn import sklearn_to_onnx


def make_data(seed: int = 0, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n, n_features=10, n_informative=6, n_redundant=2, n_classes=3, random_state=seed
    )
    return x.astype(np.float32), y


def logistic_onnx(seed: int = 0, c: float = 1.0) -> tuple[bytes, np.ndarray]:
    """A 3-class logistic regression as ONNX bytes, and the data it was trained on."""
    from sklearn.linear_model import LogisticRegression

    x, y = make_data(seed)
    model = LogisticRegression(max_iter=500, C=c).fit(x, y)
    return sklearn_to_onnx(model, x), x
