"""Reference profiles at registration: each file format, the errors, the signed manifest field."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.profile import FeatureKind
from modelfleet.packaging.build import build_manifest
from modelfleet.packaging.manifest import PackageManifest
from modelfleet.packaging.reference import (
    PackageProfile,
    build_package_profile,
    load_reference,
)
from tests.helpers import logistic_onnx


@pytest.fixture(scope="module")
def model() -> tuple[bytes, np.ndarray]:
    return logistic_onnx()


def two_inputs_onnx() -> bytes:
    """``age`` FP32 [N, 1] and ``city`` STRING [N, 1]; ``score`` = 2 · age, ``city_out`` = city."""
    age = helper.make_tensor_value_info("age", TensorProto.FLOAT, [None, 1])
    city = helper.make_tensor_value_info("city", TensorProto.STRING, [None, 1])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])
    echo = helper.make_tensor_value_info("city_out", TensorProto.STRING, [None, 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    nodes = [
        helper.make_node("Mul", ["age", "two"], ["score"]),
        helper.make_node("Identity", ["city"], ["city_out"]),
    ]
    graph = helper.make_graph(nodes, "g", [age, city], [score, echo], initializer=[two])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    data: bytes = m.SerializeToString()
    return data


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_npy_npz_and_csv_of_the_same_rows_profile_to_the_same_bins(
    tmp_path: Path, model: tuple[bytes, np.ndarray]
) -> None:
    onnx, x = model
    np.save(tmp_path / "r.npy", x)
    np.savez(tmp_path / "r.npz", X=x)
    header = [f"x{i}" for i in range(x.shape[1])]
    write_csv(tmp_path / "r.csv", header, [[repr(float(v)) for v in row] for row in x])
    digests = set()
    for name in ("r.npy", "r.npz", "r.csv"):
        # no sketches: KLL is randomised, the bins are not
        pp = build_package_profile(onnx, load_reference(tmp_path / name), sketches=False)
        assert pp.profile.input_names == tuple(header)
        assert pp.profile.rows == x.shape[0]
        # outputs: the label (categorical) and three probabilities, run through ORT
        assert pp.profile.output_names == (
            "label",
            "probabilities[0]",
            "probabilities[1]",
            "probabilities[2]",
        )
        assert pp.profile.outputs[0].kind is FeatureKind.CATEGORICAL
        assert [t.to_dict() for t in pp.outputs] == [
            {"tensor": "label", "columns": 1},
            {"tensor": "probabilities", "columns": 3},
        ]
        digests.add(pp.digest)
    # float32 rows through CSV text come back as the same float32 values
    assert len(digests) == 1


def test_csv_header_names_the_columns_and_categorical_is_honoured(
    tmp_path: Path, model: tuple[bytes, np.ndarray]
) -> None:
    onnx, x = model
    header = [f"f{i}" for i in range(10)]
    rows = [[float(v) for v in r] for r in x[:200]]
    rows[0][2] = None  # a missing cell
    path = write_csv(tmp_path / "r.csv", header, rows)
    x3 = np.round(x[:200, 3])
    for r, v in zip(rows, x3, strict=True):
        r[3] = float(v)
    write_csv(path, header, rows)
    pp = build_package_profile(onnx, load_reference(path), ["f3"])
    assert pp.profile.input_names == tuple(header)
    f2, f3 = pp.profile.inputs[2], pp.profile.inputs[3]
    assert f2.missing == 1 and f3.kind is FeatureKind.CATEGORICAL


def test_a_multi_input_model_takes_columns_named_after_its_inputs_text_is_categorical(
    tmp_path: Path,
) -> None:
    onnx = two_inputs_onnx()
    path = write_csv(
        tmp_path / "r.csv",
        ["city", "age"],
        [["lyon" if i % 3 else "paris", 20 + i % 50] for i in range(300)],
    )
    pp = build_package_profile(onnx, load_reference(path))
    assert pp.profile.input_names == ("age", "city")  # the model's input order
    assert pp.profile.inputs[1].kind is FeatureKind.CATEGORICAL
    assert pp.profile.output_names == ("score", "city_out")
    assert pp.profile.outputs[1].kind is FeatureKind.CATEGORICAL
    batch = pp.batch(
        {"age": np.array([[1.0], [2.0]], np.float32), "city": np.array([["a"], ["b"]], object)}
    )
    assert isinstance(batch, dict) and list(batch) == ["age", "city"]
    np.testing.assert_array_equal(batch["age"], [1.0, 2.0])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown_suffix", "unknown format '.txt'"),
        ("csv_without_header", "needs a header row"),
        ("ragged_csv", "line 3 has 2 cells"),
        ("too_few_columns", "the reference has 3 columns; input 'X' takes 10"),
        ("pickled_npy", "cannot read reference"),
        ("not_numpy", "cannot read reference"),
        ("empty_npy", "holds no rows"),
        ("unknown_categorical", "--categorical names 'nope'"),
        ("text_in_a_float_input", "does not fit input 'X'"),
    ],
)
def test_bad_references_are_refused_with_one_clear_line(
    tmp_path: Path, model: tuple[bytes, np.ndarray], case: str, message: str
) -> None:
    onnx, x = model
    cats: list[str] = []
    header = [f"f{i}" for i in range(10)]
    if case == "unknown_suffix":
        path = tmp_path / "r.txt"
        path.write_text("1,2\n")
    elif case == "csv_without_header":
        path = tmp_path / "r.csv"
        path.write_text("")
    elif case == "ragged_csv":
        path = write_csv(tmp_path / "r.csv", ["a", "b", "c"], [[1, 2, 3], [1, 2]])
    elif case == "too_few_columns":
        path = tmp_path / "r.npy"
        np.save(path, x[:, :3])
    elif case == "pickled_npy":
        path = tmp_path / "r.npy"
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "not_numpy":
        path = tmp_path / "r.npy"
        path.write_bytes(b"this is not numpy")
    elif case == "empty_npy":
        path = tmp_path / "r.npy"
        np.save(path, np.zeros((0, 10), np.float32))
    elif case == "unknown_categorical":
        path = tmp_path / "r.npy"
        np.save(path, x)
        cats = ["nope"]
    else:
        rows: list[list[object]] = [[float(v) for v in r] for r in x[:20]]
        rows[4][0] = "red"
        path = write_csv(tmp_path / "r.csv", header, rows)
    with pytest.raises(InvalidInputError) as info:
        build_package_profile(onnx, load_reference(path), cats)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_parquet_without_pyarrow_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name)
    )
    (tmp_path / "r.parquet").write_bytes(b"PAR1")
    with pytest.raises(ModuleNotFoundError) as info:
        load_reference(tmp_path / "r.parquet")
    assert info.value.name == "pyarrow"
    assert "pip install 'modelfleet[parquet]'" in str(info.value)


def test_parquet_reads_when_pyarrow_is_installed(
    tmp_path: Path, model: tuple[bytes, np.ndarray]
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    onnx, x = model
    table = pa.table({f"f{i}": x[:, i] for i in range(10)})
    pq.write_table(table, tmp_path / "r.parquet")
    pp = build_package_profile(onnx, load_reference(tmp_path / "r.parquet"))
    assert pp.profile.input_names == tuple(f"f{i}" for i in range(10))


def test_the_manifest_carries_the_profile_signed_and_keeps_unknown_fields(
    model: tuple[bytes, np.ndarray],
) -> None:
    onnx, x = model
    from modelfleet.packaging.reference import ReferenceTable

    pp = build_package_profile(onnx, ReferenceTable({"": x}))
    manifest = build_manifest("m", 1, onnx, reference_profile=pp.to_dict())
    raw = manifest.to_json()
    doc = PackageManifest.from_json(raw).to_dict()
    assert doc["reference_profile"] == pp.to_dict()
    # a newer hub's extra field survives beside it; the canonical bytes are the same
    doc["from_the_future"] = {"x": 1}
    again = PackageManifest.from_dict(copy.deepcopy(doc))
    assert again.to_dict()["from_the_future"] == {"x": 1}
    assert again.package_profile() is not None
    assert again.package_profile().digest == pp.digest  # type: ignore[union-attr]
    without = build_manifest("m", 1, onnx)
    assert "reference_profile" not in without.to_dict() and without.package_profile() is None


def test_a_profile_that_does_not_fit_the_model_is_refused_at_build(
    model: tuple[bytes, np.ndarray],
) -> None:
    onnx, x = model
    from modelfleet.packaging.reference import ReferenceTable

    doc = build_package_profile(onnx, ReferenceTable({"": x})).to_dict()
    doc["inputs"] = [{"tensor": "Y", "columns": 10}]
    with pytest.raises(InvalidInputError, match="names input 'Y'"):
        build_manifest("m", 1, onnx, reference_profile=doc)
    doc["inputs"] = [{"tensor": "X", "columns": 9}]
    with pytest.raises(InvalidInputError, match="the tensors give 9 columns"):
        build_manifest("m", 1, onnx, reference_profile=doc)


def test_a_newer_profile_format_still_loads_the_manifest_but_not_the_profile(
    model: tuple[bytes, np.ndarray],
) -> None:
    onnx, x = model
    from modelfleet.packaging.reference import ReferenceTable

    doc = build_package_profile(onnx, ReferenceTable({"": x})).to_dict()
    manifest = build_manifest("m", 1, onnx, reference_profile=doc).to_dict()
    manifest = copy.deepcopy(manifest)
    manifest["reference_profile"]["profile"]["format"] = 99
    parsed = PackageManifest.from_dict(manifest)  # the model still loads and serves
    with pytest.raises(InvalidInputError, match="newer"):
        parsed.package_profile()
    assert PackageProfile.from_dict(doc).profile.rows == x.shape[0]  # the original reads
