"""The OIP v2 codec: JSON and binary requests decode to the right arrays, bad framing is refused
with a message that says what is wrong, and responses carry what tritonclient reads."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from modelfleet.catalog.schema import TensorSpec
from modelfleet.errors import InvalidTensorError
from modelfleet.serving.oip import (
    HEADER_LENGTH,
    decode_infer_request,
    encode_infer_body,
    encode_infer_response,
)


def binary_body(doc: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    header = orjson.dumps(doc)
    return header + b"".join(blobs), len(header)


def test_json_flat_and_nested_data_decode_to_the_same_array() -> None:
    flat = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    nested = {
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]
    }
    for doc in (flat, nested):
        got = decode_infer_request(orjson.dumps(doc), None).inputs["x"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, [[1, 2], [3, 4]])


def test_json_request_keeps_id_outputs_and_binary_flags() -> None:
    doc = {
        "id": "42",
        "inputs": [{"name": "in", "shape": [2], "datatype": "UINT32", "data": [1, 2]}],
        "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
        "parameters": {"binary_data_output": False},
    }
    req = decode_infer_request(orjson.dumps(doc), None)
    assert req.id == "42"
    assert req.inputs["in"].dtype == np.uint32
    assert req.output_names == ["a", "b"]
    assert req.binary_for("a") is True
    assert req.binary_for("b") is False


def test_binary_data_output_applies_to_outputs_without_their_own_flag() -> None:
    doc = {
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [3]}],
        "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": True},
    }
    req = decode_infer_request(orjson.dumps(doc), None)
    assert (req.binary_for("a"), req.binary_for("b")) == (True, False)


def test_json_bytes_and_bool_inputs() -> None:
    doc = {
        "inputs": [
            {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["ab", "é"]},
            {"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
        ]
    }
    req = decode_infer_request(orjson.dumps(doc), None)
    assert req.inputs["s"].tolist() == [b"ab", "é".encode()]
    assert req.inputs["b"].dtype == np.bool_
    assert req.inputs["b"].tolist() == [True, False, True]


def test_the_spec_worked_example_binary_request_decodes() -> None:
    # serving.md §2.5: FP32 [1,4] = 1,2,3,4 as 16 little-endian bytes after a 140-byte header
    header = (
        b'{"inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":16}}],"parameters":{"binary_data_output":true}}'
    )
    blob = bytes.fromhex("0000803f000000400000404000008040")
    req = decode_infer_request(header + blob, len(header))
    np.testing.assert_array_equal(req.inputs["INPUT0"], [[1, 2, 3, 4]])
    assert req.binary_data_output is True


def test_binary_blobs_are_taken_in_input_order_with_bytes_bool_and_fp16() -> None:
    text = np.array([b"ab", b"", "☃".encode()], dtype=object)
    flags = np.array([True, False, True])
    half = np.array([[0.5, -2.0], [1.25, 65504.0]], dtype=np.float16)
    text_blob = serialize_byte_tensor(text).item()
    doc = {
        "inputs": [
            {"name": "t", "shape": [3], "datatype": "BYTES",
             "parameters": {"binary_data_size": len(text_blob)}},
            {"name": "f", "shape": [3], "datatype": "BOOL",
             "parameters": {"binary_data_size": 3}},
            {"name": "h", "shape": [2, 2], "datatype": "FP16",
             "parameters": {"binary_data_size": 8}},
        ]
    }  # fmt: skip
    body, length = binary_body(doc, text_blob, flags.tobytes(), half.tobytes())
    req = decode_infer_request(body, length)
    assert req.inputs["t"].tolist() == text.tolist()
    np.testing.assert_array_equal(req.inputs["f"], flags)
    assert req.inputs["h"].dtype == np.float16
    np.testing.assert_array_equal(req.inputs["h"], half)


def test_binary_and_json_inputs_mix_in_one_request() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    doc = {
        "inputs": [
            {"name": "j", "shape": [1], "datatype": "INT8", "data": [-3]},
            {"name": "x", "shape": [2, 3], "datatype": "FP32",
             "parameters": {"binary_data_size": 24}},
        ]
    }  # fmt: skip
    body, length = binary_body(doc, x.tobytes())
    req = decode_infer_request(body, length)
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.inputs["j"].tolist() == [-3]


def test_raw_binary_request_uses_the_single_input_spec() -> None:
    x = np.arange(8, dtype=np.float32)
    req = decode_infer_request(x.tobytes(), 0, raw_input=TensorSpec("X", "FP32", (-1, 4)))
    assert req.inputs["X"].shape == (2, 4)
    assert req.binary_data_output is True


def _input(**fields: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", **fields}]}


def _json(doc: Any) -> tuple[bytes, int | None]:
    return orjson.dumps(doc), None


def _framed(doc: Any, blob: bytes, length_delta: int = 0) -> tuple[bytes, int | None]:
    header = orjson.dumps(doc)
    return header + blob, len(header) + length_delta


def _binary_input(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    tensor = {"name": name, "shape": shape, "datatype": datatype}
    return {"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]}


BYTES_ONE = struct.pack("<I", 2) + b"ab"

MALFORMED: dict[str, tuple[tuple[bytes, int | None], str]] = {
    "not json": ((b"{nope", None), "not valid JSON"),
    "binary body without the header length": (
        (orjson.dumps(_input(parameters={"binary_data_size": 8})) + b"\x00" * 8, None),
        "Inference-Header-Content-Length",
    ),
    "json array body": (_json([1, 2]), "JSON object"),
    "no inputs": (_json({"inputs": []}), "'inputs' must be a non-empty list"),
    "input without name": (
        _json({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}),
        "'name'",
    ),
    "duplicate input": (
        _json({"inputs": [_input(data=[1, 2])["inputs"][0]] * 2}),
        "more than once",
    ),
    "unknown datatype": (_json(_input(datatype="FP8", data=[1, 2])), "unsupported datatype"),
    "bf16 has no numpy mapping": (_json(_input(datatype="BF16", data=[1, 2])), "BF16"),
    "negative dim": (_json(_input(shape=[-1], data=[1, 2])), "non-negative"),
    "shape not a list": (_json(_input(shape=2, data=[1, 2])), "'shape'"),
    "boolean dim": (_json(_input(shape=[True, 2], data=[1, 2])), "'shape'"),
    "shape vs data count": (_json(_input(data=[1, 2, 3])), "3 elements but shape [2] needs 2"),
    "ragged nested data": (
        _json(_input(shape=[2, 2], data=[[1, 2], [3]])),
        "not a regular",
    ),
    "strings in FP32": (_json(_input(data=["1", "2"])), "not valid FP32"),
    "bools in FP32": (_json(_input(data=[True, False])), "not valid FP32"),
    "fraction in INT64": (
        _json(_input(datatype="INT64", data=[1.5, 2])),
        "not valid INT64",
    ),
    "out of range for UINT8": (
        _json(_input(datatype="UINT8", data=[1, 300])),
        "out of the range of UINT8",
    ),
    "neither data nor binary size": (_json(_input()), "neither 'data' nor"),
    "data and binary size": (
        _framed(_input(data=[1, 2], parameters={"binary_data_size": 8}), b"\x00" * 8),
        "both 'data' and binary_data_size",
    ),
    "binary size runs past the body": (
        _framed(_input(parameters={"binary_data_size": 8}), b"\x00" * 4),
        "runs past the end",
    ),
    "binary size does not match the shape": (
        _framed(_input(parameters={"binary_data_size": 4}), b"\x00" * 4),
        "needs 8",
    ),
    "unclaimed trailing binary bytes": (
        _framed(_input(parameters={"binary_data_size": 8}), b"\x00" * 12),
        "no input claims",
    ),
    "header length beyond the body": (
        _framed(_input(data=[1, 2]), b"", length_delta=5),
        "Inference-Header-Content-Length is",
    ),
    "header length cuts the json": (
        _framed(_input(parameters={"binary_data_size": 8}), b"\x00" * 8, length_delta=-3),
        "not valid JSON",
    ),
    "negative binary size": (
        _framed(_input(parameters={"binary_data_size": -8}), b""),
        "non-negative integer",
    ),
    "bytes length prefix cut short": (
        _framed(
            _binary_input("s", "BYTES", [1], 3),
            b"\x02\x00\x00",
        ),
        "inside a 4-byte length prefix",
    ),
    "bytes element longer than the blob": (
        _framed(
            _binary_input("s", "BYTES", [1], 6),
            struct.pack("<I", 9) + b"ab",
        ),
        "claims 9 bytes",
    ),
    "bytes element count vs shape": (
        _framed(
            _binary_input("s", "BYTES", [2], len(BYTES_ONE)),
            BYTES_ONE,
        ),
        "holds 1 elements but shape [2] needs 2",
    ),
    "bool byte other than 0 or 1": (
        _framed(
            _binary_input("b", "BOOL", [2], 2),
            b"\x01\x07",
        ),
        "bytes 0 or 1",
    ),
    "shared memory": (
        _json(_input(data=[1, 2], parameters={"shared_memory_region": "r"})),
        "shared-memory",
    ),
    "classification extension": (
        _json(
            {**_input(data=[1, 2]), "outputs": [{"name": "y", "parameters": {"classification": 1}}]}
        ),
        "classification",
    ),
    "id not a string": (_json({**_input(data=[1, 2]), "id": 7}), "'id' must be a string"),
    "binary_data_output not a bool": (
        _json({**_input(data=[1, 2]), "parameters": {"binary_data_output": "yes"}}),
        "binary_data_output must be a boolean",
    ),
    "duplicate requested output": (
        _json({**_input(data=[1, 2]), "outputs": [{"name": "y"}, {"name": "y"}]}),
        "more than once",
    ),
    "raw request for a model with several inputs": ((b"\x00" * 8, 0), "exactly one input"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_are_refused_with_a_clear_message(case: str) -> None:
    (body, length), expected = MALFORMED[case]
    with pytest.raises(InvalidTensorError) as info:
        decode_infer_request(body, length)
    assert expected in str(info.value)


def _deep_bytes_data(depth: int) -> bytes:
    data = b"[" * depth + b'"a"' + b"]" * depth
    return b'{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":' + data + b"}]}"


# Issue 6, defect 11: numpy refusing to build the array was an HTTP 500 (ValueError).
# name: (request, message); every case exists in the JSON and in the binary encoding.
UNBUILDABLE: dict[str, tuple[tuple[bytes, int | None], str]] = {
    "66 dimensions, json": (
        _json({"inputs": [{"name": "x", "shape": [1] * 66, "datatype": "FP32", "data": [1]}]}),
        "'shape' has 66 dimensions; at most 64",
    ),
    "66 dimensions, binary": (
        _framed(_binary_input("x", "FP32", [1] * 66, 4), b"\x00" * 4),
        "'shape' has 66 dimensions; at most 64",
    ),
    "65 empty dimensions, json": (
        _json({"inputs": [{"name": "x", "shape": [0] * 65, "datatype": "FP32", "data": []}]}),
        "65 dimensions",
    ),
    "65 empty dimensions, binary": (
        _framed(_binary_input("x", "FP32", [0] * 65, 0), b""),
        "65 dimensions",
    ),
    "negative dimension, binary": (
        _framed(_binary_input("x", "FP32", [-4], 16), b"\x00" * 16),
        "non-negative",
    ),
    "empty but absurdly large, json": (
        _json(
            {"inputs": [{"name": "x", "shape": [0, 2**62, 2**62], "datatype": "FP32", "data": []}]}
        ),
        "no tensor of shape [0, 4611686018427387904, 4611686018427387904] can be built",
    ),
    "empty but absurdly large, binary": (
        _framed(_binary_input("x", "FP32", [0, 2**62, 2**62], 0), b""),
        "can be built",
    ),
    "empty BYTES but absurdly large, binary": (
        _framed(_binary_input("x", "BYTES", [0, 2**62, 2**62], 0), b""),
        "can be built",
    ),
    "dimension beyond int64, json": (
        _json({"inputs": [{"name": "x", "shape": [0, 2**64 - 1], "datatype": "FP32", "data": []}]}),
        "can be built",
    ),
    "dimension beyond int64, binary": (
        _framed(_binary_input("x", "INT8", [0, 2**64 - 1], 0), b""),
        "can be built",
    ),
    "huge shape, little data, json": (
        _json(
            {"inputs": [{"name": "x", "shape": [2**40, 2**40], "datatype": "FP32", "data": [1]}]}
        ),
        "'data' has 1 elements but shape",
    ),
    "huge shape, little data, binary": (
        _framed(_binary_input("x", "FP32", [2**40, 2**40], 4), b"\x00" * 4),
        "binary_data_size is 4 bytes",
    ),
    "BYTES data nested too deep to walk, json": (
        (_deep_bytes_data(1000), None),
        "no tensor of shape [1] can be built",
    ),
}


@pytest.mark.parametrize("case", sorted(UNBUILDABLE))
def test_shapes_numpy_cannot_build_are_invalid_tensors_not_server_errors(case: str) -> None:
    (body, length), expected = UNBUILDABLE[case]
    with pytest.raises(InvalidTensorError) as info:
        decode_infer_request(body, length)
    assert expected in str(info.value)


def test_64_dimensions_still_decode() -> None:
    doc = {"inputs": [{"name": "x", "shape": [1] * 64, "datatype": "FP32", "data": [2]}]}
    assert decode_infer_request(orjson.dumps(doc), None).inputs["x"].ndim == 64
    body, length = _framed(_binary_input("x", "FP32", [1] * 64, 4), b"\x00" * 4)
    assert decode_infer_request(body, length).inputs["x"].ndim == 64


def test_json_response_carries_version_id_and_flat_data() -> None:
    outputs: dict[str, np.ndarray] = {
        "label": np.array([2, 0], dtype=np.int64),
        "probabilities": np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], dtype=np.float32),
    }
    body, headers = encode_infer_response("iris", "3", "req-1", outputs, False)
    assert headers == {"content-type": "application/json"}
    doc = orjson.loads(body)
    assert doc["model_name"] == "iris"
    assert doc["model_version"] == "3"
    assert doc["id"] == "req-1"
    label, proba = doc["outputs"]
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [2, 0]}
    assert proba["shape"] == [2, 3]
    assert proba["datatype"] == "FP32"
    np.testing.assert_array_equal(
        np.array(proba["data"], dtype=np.float32), outputs["probabilities"].ravel()
    )


def test_response_without_request_id_still_names_the_version() -> None:
    body, _ = encode_infer_response("m", "1", None, {"y": np.zeros(1, np.float32)})
    doc = orjson.loads(body)
    assert doc["model_version"] == "1"
    assert "id" not in doc


def test_binary_response_blobs_follow_the_header_in_output_order() -> None:
    outputs = {
        "a": np.array([0.25, 0.75], dtype=np.float32).reshape(1, 2),
        "j": np.array([7], dtype=np.int32),
        "s": np.array(["ab", ""], dtype=object),
        "b": np.array([True, False, True]),
        "h": np.array([1.5], dtype=np.float16),
    }
    binary = {"a": True, "j": False, "s": True, "b": True, "h": True}
    body, headers = encode_infer_response("m", "1", None, outputs, binary)
    length = int(headers[HEADER_LENGTH])
    assert headers["content-type"] == "application/octet-stream"
    doc = orjson.loads(body[:length])
    rest = body[length:]
    by_name = {o["name"]: o for o in doc["outputs"]}
    assert by_name["j"]["data"] == [7]
    sizes = [by_name[n]["parameters"]["binary_data_size"] for n in ("a", "s", "b", "h")]
    assert sizes == [8, 10, 3, 2]  # BYTES ["ab", ""] -> 02000000 6162 00000000
    assert sum(sizes) == len(rest)
    a, s, b, h = np.split(np.frombuffer(rest, np.uint8), np.cumsum(sizes)[:-1])
    np.testing.assert_array_equal(np.frombuffer(a.tobytes(), "<f4"), [0.25, 0.75])
    assert deserialize_bytes_tensor(s.tobytes()).tolist() == [b"ab", b""]
    assert b.tobytes() == b"\x01\x00\x01"
    assert np.frombuffer(h.tobytes(), "<f2").tolist() == [1.5]


def test_encode_body_reports_json_length_only_when_binary_follows() -> None:
    outputs = {"y": np.ones((1, 2), np.float32)}
    _, none = encode_infer_body("m", "1", None, outputs, False)
    body, length = encode_infer_body("m", "1", None, outputs, True)
    assert none is None
    assert length is not None
    assert len(body) == length + 8


def test_string_outputs_go_back_as_json_strings() -> None:
    body, _ = encode_infer_response("m", "1", None, {"s": np.array(["x", "é"], dtype=object)})
    assert orjson.loads(body)["outputs"][0] == {
        "name": "s", "datatype": "BYTES", "shape": [2], "data": ["x", "é"]
    }  # fmt: skip
