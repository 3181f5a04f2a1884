"""The modelfleet side of the Evidently comparison (issue 9), on small synthetic data.

Evidently is not needed: these guard that the pipeline the benchmark times (agent counting,
the hub's merge, ``evaluate``) flags exactly the planted columns, that its windows merge to
the counts of the pooled rows, and that a missing Evidently venv skips cleanly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmarks._drift_data import EXPECTED, SCENARIOS, make
from benchmarks._drift_side import (
    device_windows,
    hub_report,
    load_rows,
    package_profile,
    save_rows,
)
from benchmarks._evidently_env import EvidentlyUnavailable

from benchmarks import drift_vs_evidently
from modelfleet.monitoring.profile_counts import ProfileCounter, merge_wire

ROWS = 4_000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drift-data")
    for scenario in SCENARIOS:
        reference, current = make(scenario, ROWS)
        if scenario == SCENARIOS[0]:
            save_rows(reference, root / "reference")
        save_rows(current, root / scenario)
    return root


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pipeline_flags_exactly_the_planted_columns(data: Path, scenario: str) -> None:
    package = package_profile(load_rows(data / "reference"))
    docs = device_windows(package, load_rows(data / scenario), windows=4, request_rows=64)
    report = hub_report(package, docs)
    assert sorted(report.drifted) == sorted(EXPECTED[scenario])


def test_merged_windows_count_what_the_pooled_rows_count(data: Path) -> None:
    package = package_profile(load_rows(data / "reference"))
    tensors = load_rows(data / "mean_shift")
    merged = merge_wire(device_windows(package, tensors, windows=3, request_rows=100),
                        package.profile, sketches=False)  # fmt: skip
    pooled = ProfileCounter(package.profile, sketches=False)
    x = tensors["x"]
    inputs = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    inputs["colour"] = tensors["colour"]
    pooled.count(inputs, {"score": tensors["score"], "label": tensors["label"]})
    whole = pooled.snapshot()
    for group in ("inputs", "outputs"):
        assert np.array_equal(merged.counts[group], whole.counts[group])
    assert merged.rows == ROWS and merged.windows == 3


def test_a_missing_evidently_venv_skips_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unavailable(venv: Path, log: Path) -> Path:
        raise EvidentlyUnavailable("pip install failed (no network)")

    monkeypatch.setattr(drift_vs_evidently, "ensure_venv", unavailable)
    assert drift_vs_evidently.main(["--no-docs"]) == 2
    assert "skipping the Evidently comparison: pip install failed" in capsys.readouterr().err
