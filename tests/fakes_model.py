"""An in-memory model that implements :class:`modelfleet.serving.model.Servable`.

Not a mock: it checks request tensors against its schema as the ONNX Runtime model does
(names, exact datatypes, rank and fixed dimensions) and computes its outputs with numpy. It
counts its calls and can be told to fail, for tests of the router, host and shadow mirror
that are not about ONNX Runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import numpy as np

from modelfleet.catalog.dtypes import datatype_of
from modelfleet.catalog.schema import ModelSchema, OutputDecision, TensorSpec, infer_decisions
from modelfleet.errors import InvalidTensorError

__all__ = ["FakeModel", "linear_classifier"]

Compute = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class FakeModel:
    """A model whose outputs are ``compute(inputs)``.

    Args:
        name: model name.
        version: version string.
        schema: inputs and outputs (``compute`` must return every output).
        compute: the model itself.
        decisions: declared output decisions; the rest are inferred from the schema.
        confidence_output: as in :class:`~modelfleet.serving.model.Servable`.
        digest: reported digest.
    """

    def __init__(
        self,
        name: str,
        version: str,
        schema: ModelSchema,
        compute: Compute,
        *,
        decisions: Mapping[str, OutputDecision] | None = None,
        confidence_output: str | None = None,
        digest: str = "sha256:fake",
    ) -> None:
        self.name = name
        self.version = version
        self.digest = digest
        self.schema = schema
        self.confidence_output = confidence_output
        self.decisions: Mapping[str, OutputDecision] = MappingProxyType(
            infer_decisions(schema, decisions)
        )
        self._compute = compute
        self._lock = threading.Lock()
        self._failure: Exception | None = None
        self.calls = 0
        self.warmed_up = False

    def __repr__(self) -> str:
        return f"FakeModel({self.name!r}, version={self.version!r})"

    def fail_with(self, error: Exception | None) -> None:
        """Raise ``error`` from every later :meth:`infer` (None: work again)."""
        with self._lock:
            self._failure = error

    def validate(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = {spec.name: spec for spec in self.schema.inputs}
        for name, arr in inputs.items():
            spec = specs.get(name)
            if spec is None:
                raise InvalidTensorError(f"unknown input {name!r}; the model takes {sorted(specs)}")
            got = datatype_of(arr)
            if got != spec.datatype:
                raise InvalidTensorError(
                    f"input {name!r}: expected datatype {spec.datatype}, got {got}"
                )
            if not spec.accepts_shape(arr.shape):
                raise InvalidTensorError(
                    f"input {name!r}: expected shape {list(spec.shape)} (-1 = any), "
                    f"got {list(arr.shape)}"
                )
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise InvalidTensorError(f"missing input {missing[0]!r}")
        return dict(inputs)

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        feed = self.validate(inputs)
        names = [spec.name for spec in self.schema.outputs]
        wanted = names if outputs is None else list(outputs)
        for name in wanted:
            if name not in names:
                raise InvalidTensorError(f"unknown output {name!r}; the model has {names}")
        with self._lock:
            self.calls += 1
            failure = self._failure
        if failure is not None:
            raise failure
        result = self._compute(feed)
        return {name: result[name] for name in wanted}

    def warm_up(self) -> None:
        self.warmed_up = True


def linear_classifier(
    name: str, version: str, weights: np.ndarray, *, digest: str = "sha256:fake"
) -> FakeModel:
    """A softmax classifier ``X [batch, n] @ weights [n, k]``: outputs ``label`` (INT64) and
    ``probabilities`` (FP32 [batch, k]), like a scikit-learn classifier converted to ONNX."""
    n, k = weights.shape
    w = weights.astype(np.float64)

    def compute(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits = inputs["X"].astype(np.float64) @ w
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return {
            "label": probabilities.argmax(axis=1).astype(np.int64),
            "probabilities": probabilities,
        }

    schema = ModelSchema(
        (TensorSpec("X", "FP32", (-1, n)),),
        (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, k))),
    )
    return FakeModel(
        name, version, schema, compute, confidence_output="probabilities", digest=digest
    )
