"""Evidently's side of the drift comparison (issue 9): run as a script in Evidently's venv.

``python _evidently_worker.py REFERENCE_DIR CURRENT_DIR`` reads the columns the driver wrote
(``x.npy``: rows × 49 float64, ``colour.npy``, ``score.npy``, ``label.npy``), builds the two
DataFrames, runs ``Report([DataDriftPreset()], include_tests=True)`` on them with Evidently's
defaults and prints one JSON object: the times (import, DataFrames, ``report.run``), the
process CPU time, the peak RSS, and per column Evidently's method, score and verdict (its
"Value Drift" test: FAIL is drift). Imports NumPy, pandas and Evidently only, never modelfleet.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

OUTPUTS = ("score", "label")


def _rss_mib(field: str = "VmHWM") -> float:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident set, MiB. Read from
    /proc: ``ru_maxrss`` of a child starts at its parent's RSS at fork, which would count
    the driver's memory."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frame(folder: Path, pd: Any, np: Any) -> Any:
    x = np.load(folder / "x.npy")
    cols: dict[str, Any] = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    cols["colour"] = np.load(folder / "colour.npy").astype(object)
    for name in OUTPUTS:
        cols[name] = np.load(folder / f"{name}.npy")
    return pd.DataFrame(cols)


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    import numpy as np
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    t1 = time.perf_counter()
    rss_start = _rss_mib("VmRSS")
    reference = _frame(Path(argv[0]), pd, np)
    current = _frame(Path(argv[1]), pd, np)
    rss_data = _rss_mib("VmRSS")
    t2 = time.perf_counter()
    cpu = time.process_time()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        current_data=current, reference_data=reference
    )
    doc = snapshot.dict()
    cpu = time.process_time() - cpu
    t3 = time.perf_counter()
    columns: dict[str, dict[str, Any]] = {}
    for metric in doc["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            columns[config["column"]] = {
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "score": metric.get("value"),
            }
    for test in doc["tests"]:
        params = test.get("metric_config", {}).get("params", {})
        if test.get("id") == "drift" and params.get("column") in columns:
            columns[params["column"]]["drift"] = test.get("status") == "FAIL"
    drifted = sorted(
        ("outputs/" if name in OUTPUTS else "inputs/") + name
        for name, c in columns.items()
        if c.get("drift")
    )
    print(
        json.dumps(
            {
                "import_s": t1 - t0,
                "frames_s": t2 - t1,
                "run_s": t3 - t2,
                "run_cpu_s": cpu,
                "peak_rss_mib": _rss_mib(),
                "rss_start_mib": rss_start,
                "rss_data_mib": rss_data,
                "columns": len(columns),
                "methods": sorted({str(c["method"]) for c in columns.values()}),
                "drifted": drifted,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
