"""Drift counts on the device (issue 9): inference p99 with profiling on vs off, window bytes.

``python -m benchmarks.drift_device [--seconds S] [--rounds N] [--json]``

* ``serving``: the real agent app (``build_agent_app``, the benchmark's real ONNX model, the
  telemetry recorder in the fan-out) called as an ASGI callable in a closed loop on one event
  loop, without and with a :class:`~modelfleet.agent.profiles.ProfileObserver` watching the
  version (its reference profile built from 5,000 rows with the model's outputs): ``off``,
  ``off_control`` (a second app without counts: the run's noise floor), ``on`` (bins, the
  agent's default: each 1,024-row block counted in the request that seals it) and
  ``on_sketches``. The configurations are interleaved, 32 requests at a time, in each
  round; the ratios are medians of per-round ratios to ``off``. Every served row is
  checked to be counted once (``*_counted_rows`` = ``*_served_rows``).
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
import orjson


def _profile(bench_path: Path, rows: np.ndarray, sketches: bool) -> Any:
    from modelfleet.packaging.reference import ReferenceTable, build_package_profile

    return build_package_profile(
        bench_path.read_bytes(), ReferenceTable({"": rows}), sketches=sketches
    )


#: Requests a configuration serves in a row before the next one takes over (interleaved).
_CHUNK = 32


def _interleaved(
    calls: dict[str, Any], seconds: float, rounds: int, chunk: int = _CHUNK
) -> dict[str, list[dict[str, float]]]:
    """Per round and configuration: requests/s, p50, p99 and p99.9 (µs).

    Each round runs ``seconds`` on one event loop, the configurations taking turns of
    ``chunk`` requests, the first of each cycle rotating: every configuration sees the
    same machine state (on a shared box the load moves within a second; phases of a
    second each gave an off/off ratio of 0.9–1.1 at p99), and none always follows one
    that has just counted a block.
    """
    names = list(calls)

    async def one_round() -> dict[str, list[float]]:
        lat: dict[str, list[float]] = {name: [] for name in names}
        clock = time.perf_counter
        end = clock() + seconds
        cycle = 0
        while clock() < end:
            k = cycle % len(names)
            for name in names[k:] + names[:k]:
                call, out = calls[name], lat[name]
                for _ in range(chunk):
                    t = clock()
                    await call()
                    out.append(clock() - t)
            cycle += 1
        return lat

    asyncio.run(one_round())  # warm-up (the same length as a round)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, values in asyncio.run(one_round()).items():
            lat = np.array(values)
            runs[name].append(
                {
                    "requests_per_s": len(lat) / float(lat.sum()),
                    "p50_us": float(np.percentile(lat, 50) * 1e6),
                    "p99_us": float(np.percentile(lat, 99) * 1e6),
                    "p999_us": float(np.percentile(lat, 99.9) * 1e6),
                }
            )
    return runs


def _summary(runs: dict[str, list[dict[str, float]]], base: str = "off") -> dict[str, Any]:
    """Medians per configuration, and medians of the per-round ratios to ``base``."""
    out: dict[str, Any] = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    for name, rs in runs.items():
        if name == base:
            continue
        for k, key in (("p50", "p50_us"), ("p99", "p99_us"), ("p999", "p999_us")):
            out[f"{name}_{k}_ratio"] = statistics.median(
                o[key] / f[key] for f, o in zip(runs[base], rs, strict=True)
            )
        out[f"{name}_throughput_ratio"] = statistics.median(
            o["requests_per_s"] / f["requests_per_s"] for f, o in zip(runs[base], rs, strict=True)
        )
    out["runs"] = runs
    return out


def bench_serving(directory: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """Off vs on for the benchmark model (~20 µs a request), interleaved (see
    :func:`_interleaved`). ``off_control`` is a second app without counts: its ratio to
    ``off`` is the noise floor of the run. ``on`` counts bins (the agent's default: each
    block in the request that seals it), ``on_sketches`` keeps sketches too."""
    from benchmarks.serving.inproc import MODEL_NAME, MODEL_VERSION, _agent_parts, _AsgiCall
    from benchmarks.serving.model import make_model
    from modelfleet.agent.app import build_agent_app
    from modelfleet.agent.profiles import ProfileObserver
    from modelfleet.clock import SystemClock
    from modelfleet.monitoring.profile_counts import ProfileWindow
    from modelfleet.telemetry.windows import WindowRecorder

    bench = make_model(directory)
    host, metrics, _app = _agent_parts(bench.path)
    ref = np.random.default_rng(0).normal(size=(5000, 10)).astype(np.float32)
    calls: dict[str, Any] = {}
    observers: dict[str, Any] = {}
    configs = (
        ("off", None),
        ("off_control", None),
        ("on", False),
        ("on_sketches", True),
    )
    for name, sketches in configs:
        recorder = WindowRecorder("edge-1", SystemClock().now())
        observer = None
        if sketches is not None:
            observer = ProfileObserver(sketches=sketches)
            profile = _profile(bench.path, ref, sketches)
            observer.watch(MODEL_NAME, MODEL_VERSION, profile)
            recorder.attach = observer.close
            observers[name] = (observer, profile)
        app = build_agent_app(host, metrics=metrics, observers=[recorder], batches=observer)
        calls[name] = _AsgiCall(app, bench.body)
    runs = _interleaved(calls, seconds, rounds)
    for call in calls.values():
        assert set(call.statuses) == {200}, set(call.statuses)
    out = _summary(runs)
    for name, (observer, profile) in observers.items():
        wire = observer.close([])[(MODEL_NAME, MODEL_VERSION, "production")]["profile"]
        # every served row counted once: the window holds as many rows as were answered
        out[f"{name}_counted_rows"] = ProfileWindow.from_wire(wire, profile.profile).rows
        out[f"{name}_served_rows"] = len(calls[name].statuses)
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

    return _summary(_interleaved(calls, seconds, rounds))


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
    included), per row of 1-row and of 64-row requests, at 20 and 200 numeric features;
    and, for 1-row requests, the p99.9 and the worst single call (a request that seals or
    steps a block)."""
    from modelfleet.agent.profiles import ProfileObserver
    from modelfleet.monitoring.profile import ReferenceProfile
    from modelfleet.packaging.reference import PackageProfile, TensorColumns

    rng = np.random.default_rng(2)
    out: dict[str, float] = {}
    for width in (20, 200):
        profile = ReferenceProfile.build(rng.normal(size=(5000, width)), sketch_k=None)
        pp = PackageProfile(profile, (TensorColumns("X", width),))
        for batch in (1, 64):
            observer = ProfileObserver()
            observer.watch("m", "1", pp)
            reqs = [{"X": rng.normal(size=(batch, width)).astype(np.float32)} for _ in range(256)]
            n = rows_total // batch
            t = time.perf_counter()
            for i in range(n):
                observer.on_batch("m", "1", "production", reqs[i % 256], {})
            dt = time.perf_counter() - t
            out[f"{width}_features_batch_{batch}_us_per_row"] = dt / (n * batch) * 1e6
            if batch != 1:
                continue
            calls = np.empty(n)
            clock = time.perf_counter
            for i in range(n):
                t = clock()
                observer.on_batch("m", "1", "production", reqs[i % 256], {})
                calls[i] = clock() - t
            out[f"{width}_features_batch_1_p999_us"] = float(np.percentile(calls, 99.9) * 1e6)
            out[f"{width}_features_batch_1_max_us"] = float(calls.max() * 1e6)
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
    for title, part in (("small", result["serving"]), ("slow", result["serving_slow_model"])):
        names = [k for k, v in part.items() if isinstance(v, dict) and "p50_us" in v]
        for name in names:
            r = part[name]
            print(
                f"{title} {name:12s} {r['requests_per_s']:8.0f} req/s  p50 {r['p50_us']:6.1f} µs  "
                f"p99 {r['p99_us']:6.1f} µs  p99.9 {r['p999_us']:7.1f} µs"
            )
        for name in names[1:]:
            print(
                f"{title} {name}/off (paired medians): p50 {part[f'{name}_p50_ratio']:.3f}, "
                f"p99 {part[f'{name}_p99_ratio']:.3f}, p99.9 {part[f'{name}_p999_ratio']:.3f}, "
                f"throughput {part[f'{name}_throughput_ratio']:.3f}"
            )
    small = result["serving"]
    for name in ("on", "on_sketches"):
        if f"{name}_counted_rows" in small:
            counted, served = small[f"{name}_counted_rows"], small[f"{name}_served_rows"]
            print(f"{name}: rows counted {counted}, served {served}")
    for name, us in result["observer"].items():
        print(f"on_batch, {name.replace('_', ' ')}: {us:.2f} µs")
    for name, size in result["window_bytes"].items():
        print(f"window profile field, {name}: {size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
