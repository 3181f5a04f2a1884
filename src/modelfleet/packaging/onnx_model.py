"""Read and check ONNX models: is it ONNX, can ONNX Runtime load it, what is its schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.catalog.schema import ModelSchema, TensorSpec
from modelfleet.errors import InvalidModelError
from modelfleet.serving.dtypes import ONNX_TYPE_TO_DATATYPE

__all__ = ["OnnxInfo", "inspect_onnx", "load_session", "schema_of_session"]


@dataclass(frozen=True, slots=True)
class OnnxInfo:
    """What registration needs to know about an ONNX model."""

    schema: ModelSchema
    opset: int
    ir_version: int
    producer: str


def load_session(model: bytes | str, intra_op_threads: int = 1) -> Any:
    """Create an ONNX Runtime CPU session from model bytes or a file path.

    Raises:
        InvalidModelError: ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidModelError(f"ONNX Runtime cannot load the model: {first_line}") from e


def _spec(arg: Any, kind: str) -> TensorSpec:
    datatype = ONNX_TYPE_TO_DATATYPE.get(arg.type)
    if datatype is None:
        hint = " (convert scikit-learn classifiers with zipmap=False)" if "map" in arg.type else ""
        raise InvalidModelError(
            f"{kind} {arg.name!r} has type {arg.type}; modelfleet serves tensors only{hint}"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def schema_of_session(session: Any) -> ModelSchema:
    """Read the input/output schema of an ONNX Runtime session.

    Raises:
        InvalidModelError: an input or output is not a tensor of a supported type.
    """
    return ModelSchema(
        tuple(_spec(a, "input") for a in session.get_inputs()),
        tuple(_spec(a, "output") for a in session.get_outputs()),
    )


def inspect_onnx(data: bytes) -> OnnxInfo:
    """Check that ``data`` is an ONNX model ONNX Runtime can load, and describe it.

    Raises:
        InvalidModelError: not ONNX, fails the ONNX checker, or ORT cannot load it.
    """
    import onnx

    if not data:
        raise InvalidModelError("the file is empty, not an ONNX model")
    try:
        proto = onnx.load_from_string(data)
    except Exception as e:  # protobuf DecodeError and friends
        raise InvalidModelError("the file is not an ONNX model (protobuf decoding failed)") from e
    if not proto.graph.node and not proto.graph.output:
        raise InvalidModelError("the file is not an ONNX model (no graph found)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise InvalidModelError(f"the ONNX model is invalid: {str(e).splitlines()[0]}") from e
    session = load_session(data)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInfo(
        schema=schema_of_session(session),
        opset=int(opset),
        ir_version=int(proto.ir_version),
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
    )
