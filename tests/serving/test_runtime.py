"""LoadedModel: request tensors are checked against the model's schema before ONNX Runtime sees
them, casts happen only when no value can change, and errors name the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelfleet.errors import InvalidModelError, InvalidTensorError
from modelfleet.serving.runtime import LoadedModel
from tests.serving._support import Models, load


@pytest.fixture(scope="module")
def lr(models: Models) -> LoadedModel:
    return load(models.lr_a, "1")


@pytest.fixture(scope="module")
def echo(models: Models) -> LoadedModel:
    return load(models.echo, "1", name="echo")


def test_load_reads_schema_from_the_session(lr: LoadedModel) -> None:
    assert (lr.name, lr.version, lr.digest) == ("iris", "1", "sha256:" + "1" * 8)
    assert [(t.name, t.datatype, t.shape) for t in lr.schema.inputs] == [("X", "FP32", (-1, 4))]
    assert [(t.name, t.datatype, t.shape) for t in lr.schema.outputs] == [
        ("label", "INT64", (-1,)),
        ("probabilities", "FP32", (-1, 3)),
    ]


def test_load_of_a_file_that_is_not_onnx_raises_invalid_model(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(InvalidModelError):
        LoadedModel.load("junk", "1", path, "sha256:0")


def test_infer_returns_all_outputs_in_graph_order(lr: LoadedModel, models: Models) -> None:
    out = lr.infer({"X": models.X[:5]})
    assert list(out) == ["label", "probabilities"]
    assert out["label"].shape == (5,)
    assert out["probabilities"].shape == (5, 3)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


def test_infer_returns_only_requested_outputs_in_requested_order(
    lr: LoadedModel, models: Models
) -> None:
    out = lr.infer({"X": models.X[:2]}, ["probabilities"])
    assert list(out) == ["probabilities"]


def test_unknown_requested_output_is_refused(lr: LoadedModel, models: Models) -> None:
    with pytest.raises(InvalidTensorError, match="unknown output 'scores'"):
        lr.infer({"X": models.X[:1]}, ["scores"])


def test_integers_that_fit_exactly_are_cast_to_float(lr: LoadedModel) -> None:
    feed = lr.validate({"X": np.array([[1, 2, 3, 4]], dtype=np.int64)})
    assert feed["X"].dtype == np.float32


BAD_INPUTS: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "missing input": ({}, "missing input 'X'"),
    "unknown input": (
        {"X": np.zeros((1, 4), np.float32), "Y": np.zeros(1, np.float32)},
        "unknown input 'Y'",
    ),
    "fp64 into fp32 loses precision": (
        {"X": np.zeros((1, 4), np.float64)},
        "input 'X': expected datatype FP32, got FP64",
    ),
    "int beyond float32 exactness": (
        {"X": np.full((1, 4), 2**25, np.int64)},
        "expected datatype FP32, got INT64 (a value is beyond what FP32 holds exactly)",
    ),
    "strings into fp32": (
        {"X": np.array([["a"] * 4], dtype=object)},
        "expected datatype FP32, got BYTES",
    ),
    "wrong rank": ({"X": np.zeros(4, np.float32)}, "expected shape [-1, 4] (-1 = any), got [4]"),
    "wrong fixed dim": ({"X": np.zeros((2, 5), np.float32)}, "got [2, 5]"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_are_refused_naming_input_expected_and_got(lr: LoadedModel, case: str) -> None:
    inputs, message = BAD_INPUTS[case]
    with pytest.raises(InvalidTensorError) as info:
        lr.infer(inputs)
    assert message in str(info.value)


def test_bytes_bool_and_fp16_inputs_reach_onnx_runtime(echo: LoadedModel) -> None:
    text = np.array([b"ab", "☃".encode()], dtype=object)
    out = echo.infer(
        {
            "text": text,
            "flag": np.array([True, False]),
            "half": np.array([[0.5, 1.0]], dtype=np.float16),
        }
    )
    assert out["text_out"].tolist() == ["ab", "☃"]  # bytes were decoded, not str()-ed
    assert out["flag_out"].tolist() == [True, False]
    assert out["half_out"].dtype == np.float16


def test_bytes_input_that_is_not_utf8_is_refused(echo: LoadedModel) -> None:
    with pytest.raises(InvalidTensorError, match="not UTF-8"):
        echo.validate(
            {
                "text": np.array([b"\xff"], dtype=object),
                "flag": np.array([True]),
                "half": np.zeros((1, 2), np.float16),
            }
        )


def test_warm_up_runs_on_models_with_string_inputs(echo: LoadedModel) -> None:
    echo.warm_up()
