"""Registration-side packaging: ONNX checks, schema, smoke vectors, manifest round trip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelfleet.errors import InvalidInputError, InvalidModelError, SmokeTestError
from modelfleet.packaging.build import build_manifest
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.onnx_model import inspect_onnx, load_session
from modelfleet.packaging.smoke import SmokeVector, check_smoke
from tests.helpers import logistic_onnx


def test_schema_is_read_from_the_graph() -> None:
    model, _ = logistic_onnx()
    info = inspect_onnx(model)
    assert [(t.name, t.datatype, t.shape) for t in info.schema.inputs] == [("X", "FP32", (-1, 10))]
    assert [t.name for t in info.schema.outputs] == ["label", "probabilities"]
    assert info.opset >= 13


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not a model at all", "not an ONNX model"),
        (b"\x08\x07\x12\x04junk", "ONNX"),
    ],
    ids=["empty", "text", "truncated-protobuf"],
)
def test_non_onnx_bytes_are_rejected_clearly(data: bytes, message: str) -> None:
    with pytest.raises(InvalidModelError, match=message):
        inspect_onnx(data)


def test_graph_onnx_runtime_cannot_load_is_rejected() -> None:
    # A node of an operator that does not exist: valid protobuf, fails the checker / ORT.
    node = helper.make_node("NoSuchOperator", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidModelError):
        inspect_onnx(model.SerializeToString())


def test_manifest_round_trip_keeps_unknown_fields() -> None:
    model, x = logistic_onnx()
    manifest = build_manifest("m", 1, model, sample_input=x[:3])
    data = manifest.to_dict()
    data["future_field"] = {"kept": True}
    again = PackageManifest.from_dict(data)
    assert again.to_dict()["future_field"] == {"kept": True}
    assert again.schema == manifest.schema
    assert len(again.smoke) == 3


def test_smoke_vectors_generated_from_schema_when_no_sample() -> None:
    model, _ = logistic_onnx()
    manifest = build_manifest("m", 1, model)
    assert len(manifest.smoke) == 4
    check_smoke(load_session(model), manifest.smoke)


def test_sample_input_of_wrong_width_is_rejected() -> None:
    model, _ = logistic_onnx()
    with pytest.raises(InvalidInputError, match="does not fit"):
        build_manifest("m", 1, model, sample_input=np.zeros((2, 7), dtype=np.float32))


def test_another_model_fails_the_recorded_smoke_vectors() -> None:
    model_a, x = logistic_onnx(seed=0)
    model_b, _ = logistic_onnx(seed=5)
    manifest = build_manifest("m", 1, model_a, sample_input=x[:8])
    with pytest.raises(SmokeTestError, match="smoke vector"):
        check_smoke(load_session(model_b), manifest.smoke)


def test_smoke_tolerance_is_applied() -> None:
    model, x = logistic_onnx()
    session = load_session(model)
    out = session.run(["probabilities"], {"X": x[:1]})[0]
    nudged = SmokeVector({"X": x[:1]}, {"probabilities": out + 1e-6})
    check_smoke(session, [nudged])
    off = SmokeVector({"X": x[:1]}, {"probabilities": out + 0.1})
    with pytest.raises(SmokeTestError, match="differs"):
        check_smoke(session, [off])


def test_zipmap_output_is_refused_with_a_hint() -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from tests.helpers import make_data

    x, y = make_data()
    proto = to_onnx(LogisticRegression(max_iter=200).fit(x, y), x[:1])
    assert isinstance(proto, onnx.ModelProto)
    with pytest.raises(InvalidModelError, match="zipmap=False"):
        inspect_onnx(proto.SerializeToString())
