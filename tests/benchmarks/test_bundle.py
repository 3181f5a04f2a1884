"""The bundle benchmark (issue 11) on a 4 KiB artefact: every step runs, the import loads
every device, and the report renders."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks import bundle


def test_the_bundle_benchmark_runs_every_step_and_renders(tmp_path: Path) -> None:
    res = bundle.run_kind("random", 4096, repeats=1, workdir=tmp_path)
    steps = set(bundle.STEPS) if shutil.which("zstd") else set(bundle.STEPS) - {
        "zstd-c", "zstd-d", "zstd-dx"
    }  # fmt: skip
    assert set(res["median_s"]) == steps
    assert res["artefact_bytes"] == 4096 and res["tree_bytes"] > 4096
    assert res["import_bytes_written"] >= 4096  # the artefact was committed
    assert list(tmp_path.iterdir()) == []  # temp files cleaned up
    text = bundle.render(
        {"when": "today", "machine": "test", "zstd_version": "x", "size_bytes": 4096,
         "kinds": [res]}
    )  # fmt: skip
    assert "`import_bundle`" in text and "**export total**" in text
