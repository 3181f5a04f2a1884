"""Read and check ONNX models: is it ONNX, can ONNX Runtime load it, what is its schema.

Only :func:`inspect_onnx` (hub side) needs the ``onnx`` package; sessions and schemas come
from :mod:`modelfleet.catalog.onnx_session`, which serving uses too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelfleet.catalog.onnx_session import create_session, schema_of_session
from modelfleet.catalog.schema import ModelSchema
from modelfleet.errors import InvalidModelError

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

    Registration replays smoke vectors on the CPU; serving makes its sessions with its own
    runtime settings (providers, thread counts).

    Raises:
        InvalidModelError: ONNX Runtime cannot load the model.
    """
    return create_session(model, intra_op_threads=intra_op_threads)


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
