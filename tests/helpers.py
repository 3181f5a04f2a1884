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


def slow_logistic_onnx(seed: int = 0, size: int = 700) -> bytes:
    """The logistic model of :func:`logistic_onnx` made slow on purpose.

    A side branch multiplies a ``size``×``size`` matrix built from the input (so ONNX
    Runtime cannot fold it away at load time) and adds zero times its sum to the
    probabilities: same answers, same schema, tens of milliseconds per call.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(logistic_onnx(seed)[0])
    graph = model.graph
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out == "probabilities":
                node.output[i] = "probabilities_fast"
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((size, size)).astype(np.float32) / size
    graph.initializer.extend(
        [
            numpy_helper.from_array(weight, "slow_w"),
            numpy_helper.from_array(np.array([size, size], dtype=np.int64), "slow_shape"),
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "slow_zero"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("ReduceSum", ["X"], ["slow_s"], keepdims=0),
            helper.make_node("Expand", ["slow_s", "slow_shape"], ["slow_e"]),
            helper.make_node("MatMul", ["slow_e", "slow_w"], ["slow_m1"]),
            helper.make_node("MatMul", ["slow_m1", "slow_w"], ["slow_m2"]),
            helper.make_node("ReduceSum", ["slow_m2"], ["slow_r"], keepdims=0),
            helper.make_node("Mul", ["slow_r", "slow_zero"], ["slow_z"]),
            helper.make_node("Add", ["probabilities_fast", "slow_z"], ["probabilities"]),
        ]
    )
    data: bytes = model.SerializeToString()
    return data
