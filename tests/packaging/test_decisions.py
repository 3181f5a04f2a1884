"""Output decisions (issue 6, contract 6): inferred at build time from the schema, declared
overrides win, the manifest carries them under "decisions" and keeps what it does not know;
packaging and serving share sessions without importing each other, and the agent's side runs
without the ``onnx`` package."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from modelfleet.catalog.schema import (
    ModelSchema,
    OutputDecision,
    TensorSpec,
    decisions_from_dict,
    infer_decision,
)
from modelfleet.errors import InvalidInputError
from modelfleet.packaging.build import build_manifest
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.onnx_model import inspect_onnx
from tests.helpers import logistic_onnx

SRC = Path(__file__).resolve().parents[2] / "src"

# name: (output spec, inferred decision)
INFERRED: dict[str, tuple[TensorSpec, OutputDecision]] = {
    "int64 label": (TensorSpec("label", "INT64", (-1,)), OutputDecision("label")),
    "string label": (TensorSpec("label", "BYTES", (-1,)), OutputDecision("label")),
    "bool flag": (TensorSpec("is_defect", "BOOL", (-1,)), OutputDecision("label")),
    "probabilities": (TensorSpec("probabilities", "FP32", (-1, 3)), OutputDecision("argmax")),
    "scores": (TensorSpec("class_scores", "FP16", (-1, 5)), OutputDecision("argmax")),
    "logits": (TensorSpec("Logits", "FP64", (-1, 2)), OutputDecision("argmax")),
    "one probability column is regression": (
        TensorSpec("probability", "FP32", (-1, 1)),
        OutputDecision("regression", rtol=1e-3, atol=1e-6),
    ),
    "unnamed [batch, k] float is regression": (
        TensorSpec("variable", "FP32", (-1, 3)),
        OutputDecision("regression", rtol=1e-3, atol=1e-6),
    ),
    "1-d float is regression": (
        TensorSpec("y", "FP32", (-1,)),
        OutputDecision("regression", rtol=1e-3, atol=1e-6),
    ),
}


@pytest.mark.parametrize("case", sorted(INFERRED))
def test_decision_is_inferred_from_datatype_shape_and_name(case: str) -> None:
    spec, want = INFERRED[case]
    assert infer_decision(spec) == want


@pytest.mark.parametrize(
    "raw",
    [
        {"kind": "top5"},
        {"kind": "regression", "rtol": -0.1},
        {"kind": "regression", "atol": float("nan")},
        {"kind": "regression", "rtol": "lots"},
        "argmax",
    ],
    ids=["unknown kind", "negative rtol", "nan atol", "rtol not a number", "not an object"],
)
def test_malformed_decisions_are_refused(raw: object) -> None:
    with pytest.raises(InvalidInputError):
        decisions_from_dict({"y": raw})


def test_build_infers_a_decision_for_every_output_and_writes_them() -> None:
    model, x = logistic_onnx()
    manifest = build_manifest("m", 1, model, sample_input=x[:2])
    assert manifest.decisions == {
        "label": OutputDecision("label"),
        "probabilities": OutputDecision("argmax"),
    }
    written = orjson.loads(manifest.to_json())["decisions"]
    assert written == {
        "label": {"kind": "label", "rtol": 0.0, "atol": 0.0},
        "probabilities": {"kind": "argmax", "rtol": 0.0, "atol": 0.0},
    }
    again = PackageManifest.from_json(manifest.to_json())
    assert again.decisions == manifest.decisions
    assert again.to_json() == manifest.to_json()


def test_declared_decisions_override_the_inferred_ones_at_build() -> None:
    model, x = logistic_onnx()
    declared = {"probabilities": OutputDecision("regression", rtol=0.05)}
    manifest = build_manifest("m", 1, model, sample_input=x[:2], decisions=declared)
    assert manifest.decisions["probabilities"] == OutputDecision("regression", rtol=0.05)
    assert manifest.decisions["label"] == OutputDecision("label")


def test_decision_for_an_output_the_model_lacks_is_refused_at_build() -> None:
    model, _ = logistic_onnx()
    with pytest.raises(InvalidInputError, match="unknown output"):
        build_manifest("m", 1, model, decisions={"score": OutputDecision("label")})


def test_manifest_from_before_decisions_keeps_its_bytes_and_infers_them() -> None:
    model, x = logistic_onnx()
    data = build_manifest("m", 1, model, sample_input=x[:2]).to_dict()
    del data["decisions"]
    old = PackageManifest.from_dict(data)
    assert old.decisions == {}
    assert "decisions" not in old.to_dict()  # re-serializing adds nothing the signer did not sign
    assert old.effective_decisions() == {
        "label": OutputDecision("label"),
        "probabilities": OutputDecision("argmax"),
    }


def test_unknown_fields_next_to_decisions_are_kept() -> None:
    model, x = logistic_onnx()
    data = build_manifest("m", 1, model, sample_input=x[:2]).to_dict()
    data["drift_reference"] = {"kept": True}
    again = PackageManifest.from_dict(data).to_dict()
    assert again["drift_reference"] == {"kept": True}
    assert again["decisions"] == data["decisions"]


def test_packaging_and_serving_do_not_import_each_other() -> None:
    root = SRC / "modelfleet"
    for package, other in (("packaging", "serving"), ("serving", "packaging")):
        for path in (root / package).rglob("*.py"):
            assert f"modelfleet.{other}" not in path.read_text(), f"{path} names {other}"


NO_ONNX = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoOnnx(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "onnx" or name.startswith("onnx."):
                raise ImportError("onnx is not installed on this edge box")
            return None

    sys.meta_path.insert(0, NoOnnx())
    from pathlib import Path
    import numpy as np
    from modelfleet.packaging.manifest import PackageManifest
    from modelfleet.packaging.onnx_model import load_session, schema_of_session
    from modelfleet.packaging.smoke import check_smoke
    from modelfleet.serving.runtime import LoadedModel
    import modelfleet.serving

    manifest = PackageManifest.from_json(Path(sys.argv[2]).read_bytes())
    session = load_session(sys.argv[1])
    assert schema_of_session(session) == manifest.schema
    check_smoke(session, manifest.smoke)
    model = LoadedModel.load("m", "1", Path(sys.argv[1]), "sha256:0",
                             decisions=manifest.effective_decisions())
    model.warm_up()
    out = model.infer({"X": np.zeros((2, 10), np.float32)})
    from modelfleet.catalog.onnx_session import max_supported_opset
    assert max_supported_opset() >= manifest.opset
    assert "onnx" not in sys.modules
    print(sorted(out))
    """
)


def test_the_agents_side_loads_checks_and_serves_without_the_onnx_package(
    tmp_path: Path,
) -> None:
    model, x = logistic_onnx()
    manifest = build_manifest("m", 1, model, sample_input=x[:2])
    (tmp_path / "model.onnx").write_bytes(model)
    (tmp_path / "manifest.json").write_bytes(manifest.to_json())
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_ONNX,
            str(tmp_path / "model.onnx"),
            str(tmp_path / "manifest.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['label', 'probabilities']"


def test_device_opset_is_read_from_onnx_runtime_not_the_onnx_package() -> None:
    from modelfleet.catalog.onnx_session import max_supported_opset

    opset = max_supported_opset()
    assert opset >= 17  # what sklearn_to_onnx targets; ORT 1.17 already ran opset 20
    model, _ = logistic_onnx()
    assert inspect_onnx(model).opset <= opset


def test_schema_round_trip_is_unchanged_by_decisions() -> None:
    schema = ModelSchema((TensorSpec("X", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1,)),))
    assert ModelSchema.from_dict(schema.to_dict()) == schema
