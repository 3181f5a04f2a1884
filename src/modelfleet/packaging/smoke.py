"""Smoke vectors: fixed inputs and the outputs a model must give for them.

Recorded at registration with ONNX Runtime; replayed on the device before a model is
activated. A model that does not reproduce them is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelfleet.catalog.dtypes import datatype_of, numpy_dtype
from modelfleet.catalog.schema import ModelSchema, TensorSpec
from modelfleet.errors import InvalidInputError, SmokeTestError

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "SmokeVector",
    "check_smoke",
    "decode_tensor",
    "encode_tensor",
    "generate_inputs",
    "record_smoke_vectors",
]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
MAX_VECTORS = 8


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """JSON form of a tensor: name, OIP datatype, shape and flat row-major data."""
    datatype = datatype_of(array)
    flat = array.reshape(-1)
    if datatype == "BYTES":
        data: list[Any] = [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat
        ]
    else:
        data = flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def decode_tensor(obj: Mapping[str, Any]) -> tuple[str, np.ndarray]:
    """Inverse of :func:`encode_tensor`.

    Raises:
        InvalidInputError: the object is not a well-formed tensor.
    """
    try:
        name = str(obj["name"])
        shape = [int(d) for d in obj["shape"]]
        dtype = numpy_dtype(str(obj["datatype"]))
        array = np.asarray(obj["data"], dtype=dtype).reshape(shape)
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidInputError(f"malformed tensor in smoke vector: {e}") from e
    return name, array


@dataclass(frozen=True)
class SmokeVector:
    """One input set and the outputs recorded for it."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "inputs": [encode_tensor(k, v) for k, v in self.inputs.items()],
            "outputs": [encode_tensor(k, v) for k, v in self.outputs.items()],
            "atol": self.atol,
            "rtol": self.rtol,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SmokeVector:
        known = {"inputs", "outputs", "atol", "rtol"}
        return cls(
            inputs=dict(decode_tensor(t) for t in data["inputs"]),
            outputs=dict(decode_tensor(t) for t in data["outputs"]),
            atol=float(data.get("atol", DEFAULT_ATOL)),
            rtol=float(data.get("rtol", DEFAULT_RTOL)),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _concrete_shape(spec: TensorSpec, batch: int) -> list[int]:
    return [
        batch if (i == 0 and d == -1) else (d if d >= 0 else 1) for i, d in enumerate(spec.shape)
    ]


def generate_inputs(
    schema: ModelSchema, count: int = 4, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """Make ``count`` deterministic input sets that fit ``schema``.

    Floats are standard normal, integers in [0, 10), booleans random, strings short words.
    """
    rng = np.random.default_rng(seed)
    sets: list[dict[str, np.ndarray]] = []
    for _ in range(count):
        one: dict[str, np.ndarray] = {}
        for spec in schema.inputs:
            shape = _concrete_shape(spec, batch=1)
            dtype = numpy_dtype(spec.datatype)
            if dtype.kind == "f":
                one[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                one[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
            elif dtype.kind == "b":
                one[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                words = np.array(["alpha", "beta", "gamma", "delta"], dtype=object)
                one[spec.name] = rng.choice(words, size=shape)
        sets.append(one)
    return sets


def inputs_from_sample(schema: ModelSchema, sample: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Split a sample array (rows = examples) into single-row input sets.

    Raises:
        InvalidInputError: the model has more than one input, or the sample does not fit.
    """
    if len(schema.inputs) != 1:
        raise InvalidInputError(
            "--sample-input works for single-input models; this one has "
            f"{len(schema.inputs)} inputs"
        )
    spec = schema.inputs[0]
    dtype = numpy_dtype(spec.datatype)
    sample = np.asarray(sample)
    if sample.ndim == len(spec.shape) - 1:
        sample = sample[None, ...]
    if not spec.accepts_shape((1, *sample.shape[1:])) or sample.shape[0] < 1:
        raise InvalidInputError(
            f"sample input of shape {list(sample.shape)} does not fit input "
            f"{spec.name!r} of shape {list(spec.shape)}"
        )
    try:
        rows = sample[:MAX_VECTORS].astype(dtype)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"sample input cannot be cast to {spec.datatype}: {e}") from e
    return [{spec.name: rows[i : i + 1]} for i in range(rows.shape[0])]


def record_smoke_vectors(
    session: Any, schema: ModelSchema, input_sets: Sequence[Mapping[str, np.ndarray]]
) -> list[SmokeVector]:
    """Run each input set through ``session`` and record its outputs."""
    names = [o.name for o in schema.outputs]
    vectors = []
    for inputs in input_sets:
        outs = session.run(names, dict(inputs))
        vectors.append(
            SmokeVector(
                inputs=dict(inputs),
                outputs={n: np.asarray(o) for n, o in zip(names, outs, strict=True)},
            )
        )
    return vectors


def check_smoke(session: Any, vectors: Sequence[SmokeVector]) -> None:
    """Replay smoke vectors through ``session``.

    Raises:
        SmokeTestError: an output is missing, has another shape, or differs beyond tolerance
            (floats: ``numpy.allclose`` with the vector's atol/rtol; others: exact).
    """
    for i, vec in enumerate(vectors):
        names = list(vec.outputs)
        try:
            got = session.run(names, dict(vec.inputs))
        except Exception as e:
            raise SmokeTestError(f"smoke vector {i}: the model failed to run: {e}") from e
        for name, actual in zip(names, got, strict=True):
            want = vec.outputs[name]
            actual = np.asarray(actual)
            if actual.shape != want.shape:
                raise SmokeTestError(
                    f"smoke vector {i}: output {name!r} shape {list(actual.shape)} "
                    f"!= recorded {list(want.shape)}"
                )
            if want.dtype.kind == "f":
                if not np.allclose(actual, want, atol=vec.atol, rtol=vec.rtol):
                    worst = float(np.max(np.abs(actual.astype(np.float64) - want)))
                    raise SmokeTestError(
                        f"smoke vector {i}: output {name!r} differs from the recorded "
                        f"value by up to {worst:.3g} (atol {vec.atol}, rtol {vec.rtol})"
                    )
            elif not np.array_equal(actual, want):
                raise SmokeTestError(
                    f"smoke vector {i}: output {name!r} is {actual.reshape(-1)[:4].tolist()}, "
                    f"recorded {want.reshape(-1)[:4].tolist()}"
                )
