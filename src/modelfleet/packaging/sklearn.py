"""Convert fitted scikit-learn estimators and pipelines to ONNX with skl2onnx."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelfleet.errors import InvalidModelError

__all__ = ["sklearn_to_onnx"]


def sklearn_to_onnx(estimator: Any, sample_input: np.ndarray, target_opset: int = 17) -> bytes:
    """Return the serialized ONNX model of a fitted estimator.

    Classifiers are converted with ``zipmap=False`` so that probabilities are a plain
    tensor. The first dimension is left variable (batch).

    Raises:
        InvalidModelError: skl2onnx cannot convert the estimator.
    """
    from skl2onnx import to_onnx

    sample = np.asarray(sample_input)
    if sample.dtype == np.float64:
        sample = sample.astype(np.float32)
    options: dict[Any, Any] = {}
    if hasattr(estimator, "predict_proba"):
        options[id(estimator)] = {"zipmap": False}
        steps = getattr(estimator, "steps", None)
        if steps:
            options[id(steps[-1][1])] = {"zipmap": False}
    try:
        model = to_onnx(estimator, sample[:1], options=options or None, target_opset=target_opset)
    except Exception as e:
        raise InvalidModelError(f"skl2onnx cannot convert {type(estimator).__name__}: {e}") from e
    data: bytes = model.SerializeToString()
    return data
