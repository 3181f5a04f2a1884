"""In-process latency: bare ``session.run`` vs the agent's serving path, no sockets.

Three measurements, all on the benchmark model and body:

* ``bare``: ``InferenceSession.run`` on the decoded row (``intra_op_num_threads=1``).
* ``agent_path``: the functions the agent's ``infer`` handler calls, in its order: route
  lookup, ``choose``, ``decode_infer_request``, the batch limit, ``LoadedModel.infer``
  (validation + run), ``encode_infer_response``, metrics. Timed per call and, separately,
  per stage. Bare and path calls alternate in one loop so both see the same machine state.
* ``asgi``: the real Starlette apps (agent and naive) called as ASGI callables with a
  prepared scope, so routing, request and response objects are included, sockets are not.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving.model import INPUT_NAME, MODEL_NAME, MODEL_VERSION, BenchModel


def _summary(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1e3
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "calls": int(us.size),
    }


def _agent_parts(model_path: Path) -> tuple[Any, Any, Any]:
    from modelfleet.agent.app import build_agent_app
    from modelfleet.agent.metrics import AgentMetrics
    from modelfleet.hashing import sha256_file
    from modelfleet.serving.host import ModelHost
    from modelfleet.serving.router import Route
    from modelfleet.serving.runtime import LoadedModel

    digest, _ = sha256_file(model_path)
    model = LoadedModel.load(MODEL_NAME, MODEL_VERSION, model_path, digest)
    model.warm_up()
    host = ModelHost()
    host.set_route(MODEL_NAME, Route(model))
    metrics = AgentMetrics(host)
    return host, metrics, build_agent_app(host, metrics=metrics)


def measure_paths(bench: BenchModel, calls: int, warmup: int) -> dict[str, Any]:
    """Bare ``session.run`` and the agent's handler path, interleaved; plus a stage breakdown.

    Returns:
        ``{"bare": summary, "agent_path": summary, "overhead_p50_us": ..., "stages": {...}}``
        where a summary has p50/p99/mean in microseconds.
    """
    import onnxruntime as ort

    from modelfleet.agent.app import VERSION_HEADER
    from modelfleet.serving.oip import decode_infer_request, encode_infer_response
    from modelfleet.serving.router import choose

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bench.path), options, providers=["CPUExecutionProvider"])
    row = bench.row
    feed = {INPUT_NAME: row}
    host, metrics, _ = _agent_parts(bench.path)
    observe = metrics.observe_request
    body = bench.body
    rng = random.random
    max_batch = 4096
    perf = time.perf_counter_ns

    def agent_path() -> bytes:
        start = time.perf_counter()
        route = host.route(MODEL_NAME)
        decision = choose(route, None, None, rng())
        model = decision.serve
        inputs = model.schema.inputs
        req = decode_infer_request(body, None, raw_input=inputs[0] if len(inputs) == 1 else None)
        for arr in req.inputs.values():
            if arr.ndim and arr.shape[0] > max_batch:
                raise AssertionError("batch limit")
        outputs = model.infer(req.inputs, req.output_names)
        content, headers = encode_infer_response(
            MODEL_NAME, model.version, req.id, outputs, req.binary_data_output
        )
        headers[VERSION_HEADER] = model.version
        observe(MODEL_NAME, model.version, "success", time.perf_counter() - start)
        return content

    for _ in range(warmup):
        session.run(None, feed)
        agent_path()
    bare = np.empty(calls, dtype=np.int64)
    path = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        t0 = perf()
        session.run(None, feed)
        t1 = perf()
        agent_path()
        t2 = perf()
        bare[i] = t1 - t0
        path[i] = t2 - t1

    # Stage breakdown (each stage timed on its own; timer cost ~0.05 µs per stage).
    names = ["route+choose", "decode", "validate", "infer (validate+run)", "encode", "metrics"]
    stages = {name: np.empty(calls, dtype=np.int64) for name in names}
    model = host.route(MODEL_NAME).production
    for i in range(calls):
        t0 = perf()
        route = host.route(MODEL_NAME)
        choose(route, None, None, rng())
        t1 = perf()
        req = decode_infer_request(body, None, raw_input=model.schema.inputs[0])
        t2 = perf()
        model.validate(req.inputs)
        t3 = perf()
        outputs = model.infer(req.inputs, req.output_names)
        t4 = perf()
        encode_infer_response(MODEL_NAME, model.version, req.id, outputs, False)
        t5 = perf()
        observe(MODEL_NAME, model.version, "success", 0.0002)
        t6 = perf()
        for name, dt in zip(
            names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True
        ):
            stages[name][i] = dt
    bare_s, path_s = _summary(bare), _summary(path)
    return {
        "bare": bare_s,
        "agent_path": path_s,
        "overhead_p50_us": path_s["p50_us"] - bare_s["p50_us"],
        "overhead_mean_us": path_s["mean_us"] - bare_s["mean_us"],
        "stages_p50_us": {name: float(np.percentile(v, 50)) / 1e3 for name, v in stages.items()},
    }


def _asgi_timer(app: Any, path: str, body: bytes, calls: int, warmup: int) -> np.ndarray:
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    message = {"type": "http.request", "body": body, "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    async def loop() -> np.ndarray:
        perf = time.perf_counter_ns
        out = np.empty(calls, dtype=np.int64)
        for i in range(warmup + calls):
            scope = dict(scope_base)
            scope["state"] = {}
            t0 = perf()
            await app(scope, receive, send)
            if i >= warmup:
                out[i - warmup] = perf() - t0
        return out

    result = _run(loop)
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"in-process ASGI call answered {bad[0]}")
    return result


def _run(factory: Callable[[], Any]) -> np.ndarray:
    try:
        import uvloop

        result: np.ndarray = uvloop.run(factory())
    except ImportError:
        result = asyncio.run(factory())
    return result


def measure_asgi(bench: BenchModel, calls: int, warmup: int) -> dict[str, Any]:
    """Per-call latency of the agent app and the naive app driven as ASGI callables."""
    from benchmarks.serving.naive_app import build_naive_app

    _, _, agent = _agent_parts(bench.path)
    naive = build_naive_app(str(bench.path), MODEL_NAME)
    path = f"/v2/models/{MODEL_NAME}/infer"
    results: dict[str, Any] = {}
    # Alternate in blocks so drift hits both apps alike.
    blocks = 4
    agent_ns: list[np.ndarray] = []
    naive_ns: list[np.ndarray] = []
    for _ in range(blocks):
        agent_ns.append(_asgi_timer(agent, path, bench.body, calls // blocks, warmup // blocks))
        naive_ns.append(_asgi_timer(naive, path, bench.body, calls // blocks, warmup // blocks))
    results["agent_asgi"] = _summary(np.concatenate(agent_ns))
    results["naive_asgi"] = _summary(np.concatenate(naive_ns))
    results["agent_minus_naive_p50_us"] = (
        results["agent_asgi"]["p50_us"] - results["naive_asgi"]["p50_us"]
    )
    return results
