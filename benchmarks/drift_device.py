"""Drift counts on the device (issue 9): inference p99 with profiling on vs off, window bytes.

``python -m benchmarks.drift_device [--seconds S] [--rounds N] [--json]``

* ``serving``: the real agent app (``build_agent_app``, the benchmark's real ONNX model, the
  telemetry recorder in the fan-out) called as an ASGI callable in a closed loop on one event
  loop, without and with a :class:`~modelfleet.agent.profiles.ProfileObserver` watching the
  version (its reference profile built from 5,000 rows with the model's outputs, sketches
  off as the agent's default, then on). Phases alternate; the ratios are of adjacent
  phases. The block count (every 1,024 rows) runs on the event loop, inside one request.
* ``serving_slow_model``: the same off/on comparison with a model of ~0.2 ms a request.
* ``window_bytes``: the ``profile`` field of one window after 6,000 rows (a busy minute at
  100 rows/s), as JSON, with and without sketches, for the model's profile (10 inputs, 4
  outputs) and for 20 and 50 numeric features.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson


def _profile(bench_path: Path, rows: np.ndarray, sketches: bool) -> Any:
    from modelfleet.packaging.reference import ReferenceTable, build_package_profile

    return build_package_profile(
        bench_path.read_bytes(), ReferenceTable({"": rows}), sketches=sketches
    )


def bench_serving(directory: Path, seconds: float, rounds: int) -> dict[str, Any]:
    from benchmarks.serving.inproc import MODEL_NAME, MODEL_VERSION, _agent_parts, _AsgiCall
    from benchmarks.serving.model import make_model
    from modelfleet.agent.app import build_agent_app
    from modelfleet.agent.profiles import ProfileObserver
    from modelfleet.clock import SystemClock
    from modelfleet.telemetry.windows import WindowRecorder

    bench = make_model(directory)
    host, metrics, _app = _agent_parts(bench.path)
    ref = np.random.default_rng(0).normal(size=(5000, 10)).astype(np.float32)
    calls: dict[str, Any] = {}
    observers: dict[str, ProfileObserver] = {}
    for name, sketches in (("off", None), ("on", False), ("on_sketches", True)):
        recorder = WindowRecorder("edge-1", SystemClock().now())
        observer = None
        if sketches is not None:
            observer = ProfileObserver(sketches=sketches)
            observer.watch(MODEL_NAME, MODEL_VERSION, _profile(bench.path, ref, sketches))
            recorder.attach = observer.close
            observers[name] = observer
        app = build_agent_app(host, metrics=metrics, observers=[recorder], batches=observer)
        calls[name] = _AsgiCall(app, bench.body)

    async def closed_loop(call: Any, duration: float) -> list[float]:
        lat: list[float] = []
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            t = time.perf_counter()
            await call()
            lat.append(time.perf_counter() - t)
        return lat

    def phase(name: str) -> dict[str, float]:
        lat = np.array(asyncio.run(closed_loop(calls[name], seconds)))
        return {
            "requests_per_s": len(lat) / seconds,
            "p50_us": float(np.percentile(lat, 50) * 1e6),
            "p99_us": float(np.percentile(lat, 99) * 1e6),
            "p999_us": float(np.percentile(lat, 99.9) * 1e6),
        }

    for name in calls:
        asyncio.run(closed_loop(calls[name], 0.5))  # warm-up
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name in calls:
            runs[name].append(phase(name))
    for call in calls.values():
        assert set(call.statuses) == {200}, set(call.statuses)
    counted = {
        name: observers[name].close([])[(MODEL_NAME, MODEL_VERSION, "production")]["profile"]
        for name in observers
    }
    out: dict[str, Any] = {
        name: {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        for name in runs
    }
    for name in ("on", "on_sketches"):
        out[f"{name}_p99_ratio"] = statistics.median(
            o["p99_us"] / f["p99_us"] for f, o in zip(runs["off"], runs[name], strict=True)
        )
        out[f"{name}_throughput_ratio"] = statistics.median(
            o["requests_per_s"] / f["requests_per_s"]
            for f, o in zip(runs["off"], runs[name], strict=True)
        )
        out[f"{name}_counted_windows"] = counted[name]["windows"]
    out["runs"] = runs
    return out


def bench_serving_slow(directory: Path, size: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Off vs on (bins) for a model that costs ~0.2 ms a request (the logistic model with a
    ``size``×``size`` matrix product on the side, ``tests.helpers.slow_logistic_onnx``)."""
    from tests.helpers import logistic_onnx, slow_logistic_onnx

    from benchmarks.serving.inproc import _AsgiCall
    from modelfleet.agent.app import build_agent_app
    from modelfleet.agent.metrics import AgentMetrics
    from modelfleet.agent.profiles import ProfileObserver
    from modelfleet.clock import SystemClock
    from modelfleet.hashing import sha256_file
    from modelfleet.packaging.reference import ReferenceTable, build_package_profile
    from modelfleet.serving.host import ModelHost
    from modelfleet.serving.router import Route
    from modelfleet.serving.runtime import LoadedModel
    from modelfleet.telemetry.windows import WindowRecorder

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "slow.onnx"
    path.write_bytes(slow_logistic_onnx(size=size))
    x = logistic_onnx()[1]
    model = LoadedModel.load("lr", "1", path, sha256_file(path)[0])
    model.warm_up()
    host = ModelHost()
    host.set_route("lr", Route(model))
    metrics = AgentMetrics(host)
    profile = build_package_profile(path.read_bytes(), ReferenceTable({"": x}), sketches=False)
    row = [float(v) for v in x[7]]
    body = orjson.dumps(
        {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": row}]}
    )
    calls = {}
    for name in ("off", "on"):
        observer = None
        if name == "on":
            observer = ProfileObserver()
            observer.watch("lr", "1", profile)
        recorder = WindowRecorder("edge-1", SystemClock().now())
        app = build_agent_app(host, metrics=metrics, observers=[recorder], batches=observer)
        calls[name] = _AsgiCall(app, body)

    async def closed_loop(call: Any, duration: float) -> npt.NDArray[np.float64]:
        lat: list[float] = []
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            t = time.perf_counter()
            await call()
            lat.append(time.perf_counter() - t)
        return np.array(lat)

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
    for name in calls:
        asyncio.run(closed_loop(calls[name], 0.3))
    for _ in range(rounds):
        for name, call in calls.items():
            lat = asyncio.run(closed_loop(call, seconds))
            runs[name].append(
                {
                    "requests_per_s": len(lat) / seconds,
                    "p50_us": float(np.percentile(lat, 50) * 1e6),
                    "p99_us": float(np.percentile(lat, 99) * 1e6),
                }
            )
    out: dict[str, Any] = {
        name: {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        for name in runs
    }
    out["on_p99_ratio"] = statistics.median(
        o["p99_us"] / f["p99_us"] for f, o in zip(runs["off"], runs["on"], strict=True)
    )
    out["on_throughput_ratio"] = statistics.median(
        o["requests_per_s"] / f["requests_per_s"]
        for f, o in zip(runs["off"], runs["on"], strict=True)
    )
    return out


def bench_window_bytes(directory: Path, rows: int = 6000) -> dict[str, Any]:
    from benchmarks.serving.model import make_model
    from modelfleet.agent.profiles import ProfileObserver
    from modelfleet.monitoring.profile import ReferenceProfile
    from modelfleet.packaging.reference import PackageProfile, TensorColumns

    bench = make_model(directory)
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {}
    ref = rng.normal(size=(5000, 10)).astype(np.float32)
    cases: dict[str, tuple[Any, Any]] = {}
    for sketches in (False, True):
        cases[f"model_10in_4out_{'sketches' if sketches else 'bins'}"] = (
            _profile(bench.path, ref, sketches),
            None,
        )
    for width in (20, 50):
        data = rng.normal(size=(5000, width)).astype(np.float32)
        for sketches in (False, True):
            profile = ReferenceProfile.build(data, sketch_k=200 if sketches else None)
            pp = PackageProfile(profile, (TensorColumns("X", width),))
            cases[f"{width}_features_{'sketches' if sketches else 'bins'}"] = (pp, width)
    import onnxruntime as ort

    session = ort.InferenceSession(str(bench.path), providers=["CPUExecutionProvider"])
    for name, (pp, width) in cases.items():
        observer = ProfileObserver(sketches=pp.profile.sketch_k is not None)
        observer.watch("m", "1", pp)
        x = rng.normal(size=(rows, width or 10)).astype(np.float32)
        for i in range(0, rows, 10):
            chunk = x[i : i + 10]
            outputs: dict[str, Any] = {}
            if width is None:
                label, proba = session.run(None, {"X": chunk})
                outputs = {"label": label, "probabilities": proba}
            observer.on_batch("m", "1", "production", {"X": chunk}, outputs)
        wire = observer.close([])[("m", "1", "production")]["profile"]
        out[name] = len(orjson.dumps(wire))
    return out


def bench_observer(rows_total: int = 65536) -> dict[str, float]:
    """µs the request path spends in :meth:`ProfileObserver.on_batch` (block counts
    included), per request of 1 row and per row of 64-row requests, 20 numeric features."""
    from modelfleet.agent.profiles import ProfileObserver
    from modelfleet.monitoring.profile import ReferenceProfile
    from modelfleet.packaging.reference import PackageProfile, TensorColumns

    rng = np.random.default_rng(2)
    profile = ReferenceProfile.build(rng.normal(size=(5000, 20)), sketch_k=None)
    pp = PackageProfile(profile, (TensorColumns("X", 20),))
    out: dict[str, float] = {}
    for batch in (1, 64):
        observer = ProfileObserver()
        observer.watch("m", "1", pp)
        reqs = [{"X": rng.normal(size=(batch, 20)).astype(np.float32)} for _ in range(256)]
        n = rows_total // batch
        t = time.perf_counter()
        for i in range(n):
            observer.on_batch("m", "1", "production", reqs[i % 256], {})
        dt = time.perf_counter() - t
        out[f"batch_{batch}_us_per_row"] = dt / (n * batch) * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        result = {
            "observer": bench_observer(),
            "window_bytes": bench_window_bytes(Path(d) / "bytes"),
            "serving": bench_serving(Path(d) / "serving", args.seconds, args.rounds),
            "serving_slow_model": bench_serving_slow(
                Path(d) / "slow", 200, args.seconds, args.rounds
            ),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s = result["serving"]
    for name in ("off", "on", "on_sketches"):
        r = s[name]
        print(
            f"{name:12s} {r['requests_per_s']:8.0f} req/s  p50 {r['p50_us']:6.1f} µs  "
            f"p99 {r['p99_us']:6.1f} µs  p99.9 {r['p999_us']:7.1f} µs"
        )
    for name in ("on", "on_sketches"):
        print(
            f"{name}: p99 ratio {s[f'{name}_p99_ratio']:.3f}, throughput ratio "
            f"{s[f'{name}_throughput_ratio']:.3f}"
        )
    slow = result["serving_slow_model"]
    for name in ("off", "on"):
        r = slow[name]
        print(
            f"slow model {name:4s} {r['requests_per_s']:6.0f} req/s  p50 {r['p50_us']:6.1f} µs  "
            f"p99 {r['p99_us']:6.1f} µs"
        )
    print(
        f"slow model on: p99 ratio {slow['on_p99_ratio']:.3f}, throughput ratio "
        f"{slow['on_throughput_ratio']:.3f}"
    )
    for name, us in result["observer"].items():
        print(f"on_batch, 20 features, {name}: {us:.2f} µs")
    for name, size in result["window_bytes"].items():
        print(f"window profile field, {name}: {size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
