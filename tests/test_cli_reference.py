"""``modelfleet model register --reference`` through the real CLI against a real ``hub serve``
(issue 9): each format, registering without one, and bad files as one clear line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelfleet.cli._errors import ExitCode
from tests.cli_run import ServedHub, run_cli, served_hub
from tests.helpers import logistic_onnx
from tests.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHub]:
    root = tmp_path_factory.mktemp("cli-reference")
    assert run_cli("init", str(root / "hub")).returncode == 0
    with served_hub(root / "hub", root) as served:
        yield served


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reference-files")
    onnx, x = logistic_onnx()
    (root / "m.onnx").write_bytes(onnx)
    np.save(root / "ref.npy", x)
    np.savez(root / "ref.npz", X=x)
    header = ",".join(f"f{i}" for i in range(10))
    rows = "\n".join(",".join(repr(float(v)) for v in r) for r in np.round(x, 3))
    (root / "ref.csv").write_text(header + "\n" + rows + "\n")
    (root / "noheader.csv").write_text("")
    np.save(root / "narrow.npy", x[:, :3])
    (root / "ref.txt").write_text("1,2,3\n")
    (root / "ref.parquet").write_bytes(b"PAR1")
    return {p.name: p for p in root.iterdir()}


def register(hub: ServedHub, files: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    r = run_cli("model", "register", "m", str(files["m.onnx"]), *extra, env=hub.env())
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("name", ["ref.npy", "ref.npz", "ref.csv"])
def test_register_with_a_reference_prints_the_profile(
    hub: ServedHub, files: dict[str, Path], name: str
) -> None:
    code, out, err = register(hub, files, "--reference", str(files[name]))
    assert code == 0, err
    assert "Drift: drift reference: 600 rows, 10 input and 4 output columns" in out
    assert "(profile sha256:" in out


def test_categorical_columns_are_named_in_the_json_answer(
    hub: ServedHub, files: dict[str, Path]
) -> None:
    code, out, err = register(
        hub, files, "--reference", str(files["ref.csv"]), "--categorical", "f1,f2", "--json"
    )
    assert code == 0, err
    drift = json.loads(out)["drift"]
    assert drift["categorical"] == ["f1", "f2", "label"]


def test_register_without_a_reference_says_drift_will_not_be_computed(
    hub: ServedHub, files: dict[str, Path]
) -> None:
    code, out, err = register(hub, files)
    assert code == 0, err
    assert "drift will not be computed" in out


@pytest.mark.parametrize(
    ("name", "extra", "code", "text"),
    [
        ("noheader.csv", (), ExitCode.ERROR, "needs a header row"),
        ("narrow.npy", (), ExitCode.ERROR, "the reference has 3 columns; input 'X' takes 10"),
        ("ref.txt", (), ExitCode.ERROR, "unknown format '.txt'"),
        ("ref.npy", ("--categorical", "nope"), ExitCode.ERROR, "--categorical names 'nope'"),
        ("missing.npy", (), ExitCode.USAGE, "no such file"),
    ],
    ids=["csv-without-header", "too-few-columns", "unknown-suffix", "unknown-column", "no-file"],
)
def test_a_bad_reference_is_one_clear_line(
    hub: ServedHub, files: dict[str, Path], name: str, extra: tuple[str, ...], code: int,
    text: str,
) -> None:  # fmt: skip
    path = files.get(name, Path("/nonexistent") / name)
    r = run_cli("model", "register", "m", str(files["m.onnx"]), "--reference", str(path),
                *extra, env=hub.env())  # fmt: skip
    assert_one_line_error(r, code, text)


def test_parquet_without_pyarrow_names_the_package(hub: ServedHub, files: dict[str, Path]) -> None:
    hide = "import sys; sys.modules['pyarrow'] = None"
    r = run_cli("model", "register", "m", str(files["m.onnx"]), "--reference",
                str(files["ref.parquet"]), env=hub.env(), prelude=hide)  # fmt: skip
    assert_one_line_error(r, ExitCode.MISSING_EXTRA, "pyarrow")
    assert "modelfleet[parquet]" in r.stderr


def test_categorical_without_a_reference_is_a_usage_error(
    hub: ServedHub, files: dict[str, Path]
) -> None:
    r = run_cli("model", "register", "m", str(files["m.onnx"]), "--categorical", "f1",
                env=hub.env())  # fmt: skip
    assert_one_line_error(r, ExitCode.USAGE, "--categorical needs --reference")
