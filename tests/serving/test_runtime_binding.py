"""LoadedModel runs the session's C++ binding when ONNX Runtime has one, the public
``InferenceSession.run`` otherwise (another ORT version, graph capture, a provider failure),
and both paths answer and refuse alike (issue 6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import EPFail, InvalidArgument

from modelfleet.catalog.onnx_session import create_session, schema_of_session
from modelfleet.errors import InvalidTensorError
from modelfleet.serving.runtime import LoadedModel
from tests.serving._support import Models


class _PublicOnly:
    """A session as an ONNX Runtime without the private binding would offer it."""

    def __init__(self, session: Any) -> None:
        self.calls = 0
        self._session = session

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        self.calls += 1
        result: list[Any] = self._session.run(names, feed)
        return result


class _BindingOnly:
    """A real binding under a public ``run`` that must not be called."""

    def __init__(self, binding: Any) -> None:
        self._sess = binding

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        raise AssertionError("the public run was called although the binding is there")


class _FailingBinding:
    """A binding that raises ``error`` on every run."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def run(self, names: list[str], feed: Any, options: Any) -> list[Any]:
        self.calls += 1
        raise self.error


def _model(session: Any, schema_from: Any) -> LoadedModel:
    return LoadedModel("iris", "1", "sha256:0", session, schema_of_session(schema_from))


Paths = dict[str, Callable[[Any], LoadedModel]]
PATHS: Paths = {
    "binding": lambda s: _model(_BindingOnly(s._sess), s),
    "public": lambda s: _model(_PublicOnly(s), s),
}


@pytest.fixture(scope="module")
def session(models: Models) -> Any:
    return create_session(str(models.lr_a))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_both_paths_answer_every_output_or_the_ones_asked_for(
    session: Any, models: Models, path: str
) -> None:
    model = PATHS[path](session)
    expected = session.run(None, {"X": models.X[:5]})
    out = model.infer({"X": models.X[:5]})
    assert list(out) == ["label", "probabilities"]
    np.testing.assert_array_equal(out["label"], expected[0])
    np.testing.assert_array_equal(out["probabilities"], expected[1])
    assert list(model.infer({"X": models.X[:2]}, ["probabilities", "label"])) == [
        "probabilities",
        "label",
    ]


REFUSED: dict[str, tuple[dict[str, np.ndarray], list[str] | None, str]] = {
    "missing input": ({}, None, "missing input 'X'"),
    "unknown input": (
        {"X": np.zeros((1, 4), np.float32), "Y": np.zeros(1)},
        None,
        "unknown input 'Y'; the model takes ['X']",
    ),
    "wrong datatype": ({"X": np.zeros((1, 4), np.float64)}, None, "expected datatype FP32"),
    "wrong shape": ({"X": np.zeros((1, 5), np.float32)}, None, "got [1, 5]"),
    "unknown output": ({"X": np.zeros((1, 4), np.float32)}, ["scores"], "unknown output"),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_both_paths_refuse_bad_requests_with_the_same_message(
    session: Any, path: str, case: str
) -> None:
    inputs, outputs, message = REFUSED[case]
    with pytest.raises(InvalidTensorError) as info:
        PATHS[path](session).infer(inputs, outputs)
    assert message in str(info.value)


def test_without_the_private_binding_the_public_run_is_used(session: Any, models: Models) -> None:
    public = _PublicOnly(session)
    _model(public, session).infer({"X": models.X[:1]})
    assert public.calls == 1


def test_onnx_runtime_refusing_inputs_reads_the_same_on_the_binding(session: Any) -> None:
    error = InvalidArgument(
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: X\n more"
    )
    model = _model(_BindingOnly(_FailingBinding(error)), session)
    with pytest.raises(InvalidTensorError) as info:
        model.infer({"X": np.zeros((1, 4), np.float32)})
    assert str(info.value) == "Got invalid dimensions for input: X"
    assert info.value.__cause__ is error


def test_a_provider_failure_hands_the_session_to_the_public_run_for_good(
    session: Any, models: Models
) -> None:
    """The public run owns ONNX Runtime's provider fallback (it replaces the binding)."""
    failing = _FailingBinding(EPFail("the GPU went away"))
    public = _PublicOnly(session)
    public._sess = failing  # type: ignore[attr-defined]
    model = _model(public, session)
    model.infer({"X": models.X[:1]})
    model.infer({"X": models.X[:1]})
    assert (failing.calls, public.calls) == (1, 2)


def test_a_session_with_graph_capture_on_takes_the_public_run(session: Any, models: Models) -> None:
    class Capturing:
        def run(self, names: list[str], feed: Any, options: Any) -> list[Any]:
            raise AssertionError("the binding was called with graph capture on")

        def is_webgpu_graph_capture_enabled(self) -> bool:
            return True

    public = _PublicOnly(session)
    public._sess = Capturing()  # type: ignore[attr-defined]
    _model(public, session).infer({"X": models.X[:1]})
    assert public.calls == 1
