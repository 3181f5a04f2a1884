"""LoadedModel: request tensors are checked against the model's schema before ONNX Runtime sees
them, datatypes must match unless the model allows exact casts, errors name the input; runtime
settings (providers, threads) reach the session; output decisions are inferred or declared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelfleet.catalog.schema import OutputDecision
from modelfleet.errors import ConfigError, InvalidInputError, InvalidModelError, InvalidTensorError
from modelfleet.serving.model import RuntimeSettings, Servable
from modelfleet.serving.runtime import LoadedModel
from tests.fakes_model import linear_classifier
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


MISMATCHED: dict[str, np.ndarray] = {
    "INT64": np.array([[1, 2, 3, 4]], dtype=np.int64),
    "INT32": np.array([[1, 2, 3, 4]], dtype=np.int32),
    "UINT8": np.array([[1, 2, 3, 4]], dtype=np.uint8),
    "FP16": np.array([[1, 2, 3, 4]], dtype=np.float16),
    "FP64": np.array([[1, 2, 3, 4]], dtype=np.float64),
    "BOOL": np.array([[True, False, True, False]]),
}


@pytest.mark.parametrize("given", sorted(MISMATCHED))
def test_other_datatype_for_an_fp32_input_is_refused_not_silently_cast(
    lr: LoadedModel, given: str
) -> None:
    with pytest.raises(InvalidTensorError) as info:
        lr.validate({"X": MISMATCHED[given]})
    assert f"input 'X': expected datatype FP32, got {given}" in str(info.value)


@pytest.fixture(scope="module")
def lr_casting(models: Models) -> LoadedModel:
    return LoadedModel.load("iris", "1", models.lr_a, "sha256:1", allow_cast=True)


def test_allow_cast_casts_integers_that_fit_exactly(lr_casting: LoadedModel) -> None:
    assert lr_casting.allow_cast
    feed = lr_casting.validate({"X": np.array([[1, 2, 3, 4]], dtype=np.int64)})
    assert feed["X"].dtype == np.float32
    assert feed["X"].tolist() == [[1.0, 2.0, 3.0, 4.0]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (np.full((1, 4), 2**25, np.int64), "a value is beyond what FP32 holds exactly"),
        (np.zeros((1, 4), np.float64), "expected datatype FP32, got FP64"),
        (np.array([["a"] * 4], dtype=object), "expected datatype FP32, got BYTES"),
    ],
    ids=["int beyond float32 exactness", "fp64 loses precision", "strings"],
)
def test_allow_cast_still_refuses_casts_that_change_values(
    lr_casting: LoadedModel, inputs: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidTensorError, match=message):
        lr_casting.validate({"X": inputs})


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


def test_onnx_model_and_fake_model_are_both_servable(lr: LoadedModel) -> None:
    assert isinstance(lr, Servable)
    assert isinstance(linear_classifier("m", "1", np.ones((4, 3))), Servable)


def test_thread_counts_from_settings_reach_the_session(models: Models) -> None:
    settings = RuntimeSettings(intra_op_threads=3, inter_op_threads=2)
    model = LoadedModel.load("iris", "1", models.lr_a, "sha256:1", settings)
    options = model._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)
    assert model.infer({"X": models.X[:2]})["label"].shape == (2,)


def test_default_settings_are_one_thread_on_the_cpu(lr: LoadedModel) -> None:
    options = lr._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert lr._session.get_providers() == ["CPUExecutionProvider"]


def test_unavailable_provider_is_refused_listing_the_available_ones(models: Models) -> None:
    settings = RuntimeSettings(providers=("NoSuchExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(ConfigError) as info:
        LoadedModel.load("iris", "1", models.lr_a, "sha256:1", settings)
    assert "'NoSuchExecutionProvider' is not available" in str(info.value)
    assert "CPUExecutionProvider" in str(info.value).split("available:")[1]


def test_cpu_fallback_is_off_unless_the_cpu_provider_is_listed(models: Models) -> None:
    # Azure's provider ships with every ONNX Runtime wheel and runs none of these nodes.
    only_azure = RuntimeSettings(providers=("AzureExecutionProvider",))
    with pytest.raises(InvalidModelError, match="CPU fallback is off"):
        LoadedModel.load("iris", "1", models.lr_a, "sha256:1", only_azure)
    with_cpu = RuntimeSettings(providers=("AzureExecutionProvider", "CPUExecutionProvider"))
    model = LoadedModel.load("iris", "1", models.lr_a, "sha256:1", with_cpu)
    assert model.infer({"X": models.X[:1]})["label"].shape == (1,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"providers": ()},
        {"providers": ["CPUExecutionProvider"]},
        {"providers": ("CPUExecutionProvider", "CPUExecutionProvider")},
        {"intra_op_threads": -1},
        {"inter_op_threads": 10_000},
        {"intra_op_threads": 1.5},
    ],
    ids=["no provider", "list not tuple", "repeated", "negative", "absurd", "not an int"],
)
def test_bad_runtime_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RuntimeSettings(**kwargs)  # type: ignore[arg-type]


def test_decisions_are_inferred_from_the_schema(lr: LoadedModel) -> None:
    assert dict(lr.decisions) == {
        "label": OutputDecision("label"),
        "probabilities": OutputDecision("argmax"),
    }


def test_declared_decisions_override_the_inferred_ones(models: Models) -> None:
    declared = {"probabilities": OutputDecision("regression", rtol=0.05)}
    model = LoadedModel.load("iris", "1", models.lr_a, "sha256:1", decisions=declared)
    assert model.decisions["probabilities"] == declared["probabilities"]
    assert model.decisions["label"] == OutputDecision("label")


def test_decisions_for_an_output_the_model_lacks_are_refused(models: Models) -> None:
    with pytest.raises(InvalidInputError, match="unknown output"):
        LoadedModel.load(
            "iris", "1", models.lr_a, "sha256:1", decisions={"score": OutputDecision("label")}
        )
