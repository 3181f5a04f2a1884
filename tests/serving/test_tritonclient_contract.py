"""Contract: an unmodified ``tritonclient.http`` drives the agent over real HTTP on loopback
(research/serving.md §3), in its default binary mode and in JSON mode."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelfleet.agent.app import build_agent_app
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.serving.runtime import LoadedModel
from tests.serving._support import Models, ServerThread, load


@pytest.fixture(scope="module")
def v1(models: Models) -> LoadedModel:
    return load(models.lr_a, "1")


@pytest.fixture(scope="module")
def v2(models: Models) -> LoadedModel:
    return load(models.lr_b, "2")


@pytest.fixture(scope="module")
def client(
    models: Models, v1: LoadedModel, v2: LoadedModel
) -> Iterator[httpclient.InferenceServerClient]:
    host = ModelHost()
    host.set_route("iris", Route(v1, v2, Mode.SPLIT, 0.0))
    host.set_route("echo", Route(load(models.echo, "1", name="echo")))
    with ServerThread(build_agent_app(host)) as server:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        yield c
        c.close()


def x_input(x: np.ndarray, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_health_and_readiness(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    assert client.is_model_ready("iris", "2")
    assert not client.is_model_ready("iris", "9")
    assert not client.is_model_ready("nope")


def test_server_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "modelfleet"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_matches_the_onnx_session(
    client: httpclient.InferenceServerClient, v1: LoadedModel
) -> None:
    for version in ("", "1"):
        meta = client.get_model_metadata("iris", version)
        assert meta["platform"] == "onnx_onnxv1"
        assert meta["versions"] == ["1", "2"]
        assert meta["inputs"] == [t.to_dict() for t in v1.schema.inputs]
        assert meta["outputs"] == [t.to_dict() for t in v1.schema.outputs]


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(True, None), (True, True), (True, False), (False, False), (False, True)],
    ids=["bin-in-default-out", "bin-in-bin-out", "bin-in-json-out", "json-both", "json-in-bin-out"],
)
def test_infer_in_every_binary_json_combination(
    client: httpclient.InferenceServerClient,
    models: Models,
    v1: LoadedModel,
    binary_in: bool,
    binary_out: bool | None,
) -> None:
    x = models.X[:7]
    outputs = (
        None
        if binary_out is None
        else [
            httpclient.InferRequestedOutput("label", binary_data=binary_out),
            httpclient.InferRequestedOutput("probabilities", binary_data=binary_out),
        ]
    )
    result = client.infer("iris", [x_input(x, binary_in)], outputs=outputs)
    want = v1.infer({"X": x})
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)
    assert result.get_response()["model_version"] == "1"


def test_request_id_is_echoed(client: httpclient.InferenceServerClient, models: Models) -> None:
    result = client.infer("iris", [x_input(models.X[:1], True)], request_id="req-42")
    assert result.get_response()["id"] == "req-42"


def test_version_in_the_call_routes_to_that_version(
    client: httpclient.InferenceServerClient, models: Models, v2: LoadedModel
) -> None:
    x = models.X[:5]
    result = client.infer("iris", [x_input(x, True)], model_version="2")
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_array_equal(result.as_numpy("label"), v2.infer({"X": x})["label"])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_bool_and_fp16_round_trip(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    text = np.array([b"ab", b"", "☃".encode()], dtype=object)
    flag = np.array([True, False, True])
    half = np.array([[0.5, -1.25], [2.0, 65504.0]], dtype=np.float16)
    inputs = []
    for name, arr, datatype in (
        ("text", text, "BYTES"),
        ("flag", flag, "BOOL"),
        ("half", half, "FP16"),
    ):
        tensor = httpclient.InferInput(name, list(arr.shape), datatype)
        tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary)
        for n in ("text_out", "flag_out", "half_out")
    ]
    result = client.infer("echo", inputs, outputs=outputs)
    # JSON has no bytes: tritonclient hands back str elements there, as with Triton itself
    want_text = text.tolist() if binary else [t.decode() for t in text.tolist()]
    assert result.as_numpy("text_out").tolist() == want_text
    np.testing.assert_array_equal(result.as_numpy("flag_out"), flag)
    half_out = result.as_numpy("half_out")
    assert half_out.dtype == np.float16
    np.testing.assert_array_equal(half_out, half)


def test_unknown_model_raises_404(client: httpclient.InferenceServerClient, models: Models) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [x_input(models.X[:1], True)])
    assert info.value.status() == "404"
    assert "nope" in info.value.message()


def test_unknown_version_raises_404(
    client: httpclient.InferenceServerClient, models: Models
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("iris", [x_input(models.X[:1], True)], model_version="9")
    assert info.value.status() == "404"


def test_wrong_shape_raises_400(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("iris", [x_input(np.zeros((2, 5), np.float32), True)])
    assert info.value.status() == "400"
    assert "expected shape [-1, 4]" in info.value.message()


def test_gzip_compressed_request(client: httpclient.InferenceServerClient, models: Models) -> None:
    result = client.infer(
        "iris", [x_input(models.X[:3], True)], request_compression_algorithm="gzip"
    )
    assert result.as_numpy("label").shape == (3,)
