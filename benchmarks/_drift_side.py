"""modelfleet's side of the drift comparison with Evidently (issue 9).

The pipeline, step by step as the product runs it:

1. **registration** (:func:`package_profile`): the reference rows become a
   :class:`PackageProfile` (bins from the reference quantiles; the model's tensors ``x``,
   rows × 49 float64, and ``colour``; outputs ``score`` and ``label``).
2. **device** (:func:`device_windows`): the current rows arrive as requests of
   ``request_rows`` rows through the agent's :class:`ProfileObserver` (sketches off, its
   default; counted per 1,024-row block), and each of ``windows`` telemetry windows is
   closed into its wire form (``ProfileWindow.to_wire``), as the agent sends it.
3. **hub** (:func:`hub_report`): the windows are checked and merged (``merge_wire``, as
   ingest does) and :func:`~modelfleet.monitoring.drift.evaluate` gives the verdicts.

``python -m benchmarks._drift_side PROFILE_JSON CURRENT_DIR [--repeats R]`` times steps 2-3
(and 3 alone) in a single-threaded process (one core) and prints one JSON object with the peak RSS
and the drifted columns; the driver (``benchmarks/drift_vs_evidently.py``) runs it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.agent.profiles import ProfileObserver
from modelfleet.monitoring.drift import DriftReport, evaluate
from modelfleet.monitoring.profile import ReferenceProfile
from modelfleet.monitoring.profile_counts import merge_wire
from modelfleet.packaging.reference import PackageProfile, TensorColumns

__all__ = ["device_windows", "hub_report", "load_rows", "package_profile", "save_rows"]

Rows = dict[str, Any]


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


def save_rows(rows: Rows, folder: Path) -> None:
    """Write ``{"inputs": …, "outputs": …}`` (``benchmarks._drift_data``) as the tensors both
    workers read: ``x.npy`` (rows × numeric columns), ``colour.npy`` (fixed-width strings, so
    no pickle), ``score.npy``, ``label.npy``."""
    folder.mkdir(parents=True, exist_ok=True)
    ins = rows["inputs"]
    numeric = [k for k in ins if k != "colour"]
    np.save(folder / "x.npy", np.column_stack([ins[k] for k in numeric]))
    np.save(folder / "colour.npy", np.asarray(ins["colour"]).astype(np.str_))
    for name, col in rows["outputs"].items():
        np.save(folder / f"{name}.npy", col)


def load_rows(folder: Path) -> dict[str, np.ndarray[Any, Any]]:
    """The tensors :func:`save_rows` wrote (``colour`` as an object array of ``str``, as a
    request's string tensor arrives)."""
    return {
        "x": np.load(folder / "x.npy"),
        "colour": np.load(folder / "colour.npy").astype(object),
        "score": np.load(folder / "score.npy"),
        "label": np.load(folder / "label.npy"),
    }


def package_profile(tensors: dict[str, np.ndarray[Any, Any]]) -> PackageProfile:
    """The registration step: the reference tensors' profile, mapped to the model's tensors."""
    x = tensors["x"]
    inputs: dict[str, Any] = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    inputs["colour"] = tensors["colour"]
    profile = ReferenceProfile.build(
        inputs,
        categorical=["colour"],
        outputs={"score": tensors["score"], "label": tensors["label"]},
        categorical_outputs=["label"],
    )
    return PackageProfile(
        profile,
        (TensorColumns("x", x.shape[1]), TensorColumns("colour", 1)),
        (TensorColumns("score", 1), TensorColumns("label", 1)),
    )


def device_windows(
    package: PackageProfile,
    tensors: dict[str, np.ndarray[Any, Any]],
    windows: int = 10,
    request_rows: int = 100,
) -> list[dict[str, Any]]:
    """The device step: the rows as requests through the agent's observer, ``windows``
    windows closed to their wire form (rows split evenly, in order)."""
    observer = ProfileObserver()  # the agent's defaults: sketches off, 1,024-row blocks
    observer.watch("m", "1", package)
    key = ("m", "1", "production")
    rows = int(tensors["x"].shape[0])
    bounds = np.linspace(0, rows, windows + 1).astype(int)
    x, colour, score, label = tensors["x"], tensors["colour"], tensors["score"], tensors["label"]
    out = []
    for w in range(windows):
        for a in range(int(bounds[w]), int(bounds[w + 1]), request_rows):
            b = min(a + request_rows, int(bounds[w + 1]))
            observer.on_batch(
                "m", "1", "production",
                {"x": x[a:b], "colour": colour[a:b]},
                {"score": score[a:b], "label": label[a:b]},
            )  # fmt: skip
        out.append(observer.close([key])[key]["profile"])
    return out


def hub_report(package: PackageProfile, docs: list[dict[str, Any]]) -> DriftReport:
    """The hub step: check and merge the wire windows, then evaluate."""
    merged = merge_wire(docs, package.profile, sketches=False)
    return evaluate(package.profile, merged)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._drift_side")
    parser.add_argument("profile", type=Path, help="the PackageProfile's JSON")
    parser.add_argument("current", type=Path, help="folder of the current tensors")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--request-rows", type=int, default=100)
    args = parser.parse_args(argv)
    rss_start = _rss_mib("VmRSS")
    package = PackageProfile.from_dict(json.loads(args.profile.read_text()))
    tensors = load_rows(args.current)
    rss_data = _rss_mib("VmRSS")
    hub_report(package, device_windows(package, tensors, 2, args.request_rows))  # warm: SciPy
    e2e, e2e_cpu, device, hub, hub_cpu = [], [], [], [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        docs = device_windows(package, tensors, args.windows, args.request_rows)
        t1 = time.perf_counter()
        report = hub_report(package, docs)
        t2, c2 = time.perf_counter(), time.process_time()
        e2e.append(t2 - t0)
        e2e_cpu.append(c2 - c0)
        device.append(t1 - t0)
        merged = merge_wire(docs, package.profile, sketches=False)
        t3, c3 = time.perf_counter(), time.process_time()
        evaluate(package.profile, merged)
        hub.append(time.perf_counter() - t3)
        hub_cpu.append(time.process_time() - c3)
    result = {
        "rows": int(tensors["x"].shape[0]),
        "windows": args.windows,
        "request_rows": args.request_rows,
        "window_json_bytes": statistics.median(len(json.dumps(d)) for d in docs),
        "e2e_s": statistics.median(e2e),
        "e2e_cpu_s": statistics.median(e2e_cpu),
        "device_s": statistics.median(device),
        "hub_s": statistics.median(hub),
        "hub_cpu_s": statistics.median(hub_cpu),
        "e2e_runs_s": e2e,
        "hub_runs_s": hub,
        "peak_rss_mib": _rss_mib(),
        "rss_start_mib": rss_start,
        "rss_data_mib": rss_data,
        "drifted": sorted(report.drifted),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
