"""In-process latency, no sockets: bare ``session.run`` vs the agent's request path.

* ``bare``: ``InferenceSession.run`` on the decoded row (``intra_op_num_threads=1``).
* ``agent_functions``: the serving functions the agent's infer endpoint calls, in its order
  (route lookup, ``choose``, OIP decoding, batch limit, validation + run, encoding,
  metrics), without the ASGI plumbing.
* ``agent_asgi``: the real agent app (``build_agent_app``) called as an ASGI callable with a
  prepared scope and body: everything the agent does for a request, sockets and the HTTP
  parser excepted. ``agent_guarded_asgi``: the same with the local SLO guard as the daemon
  adds it (an observer after the metrics), watching the served version, as during a rollout.
  ``naive_asgi`` and ``naive_fastapi_asgi``: the hand-written baseline, on Starlette and on
  FastAPI.
* Each path is measured in its own loop in which a bare call and a path call alternate, so
  both see the same machine state; overhead = p50(path) − p50(bare).
* ``stages``: the serving functions the agent's infer endpoint calls, each timed alone
  (route + ``choose``, ``decode_infer_request``, ``LoadedModel.validate``,
  ``LoadedModel.infer``, the response encoder, ``AgentMetrics.on_request``) — a
  profile of where the overhead goes. Skipped with a note if those functions change shape.
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

_PATH = f"/v2/models/{MODEL_NAME}/infer"


def _summary(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1e3
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "calls": int(us.size),
    }


def _agent_parts(model_path: Path, guarded: bool = False) -> tuple[Any, Any, Any]:
    """Host, metrics and app, built the way the agent builds them (``guarded``: with the
    local guard watching the served version against a previous one)."""
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
    if not guarded:
        return host, metrics, build_agent_app(host, metrics=metrics)
    from types import SimpleNamespace

    from modelfleet.agent.local_guard import LocalGuard
    from modelfleet.clock import SystemClock
    from modelfleet.monitoring.guard import SloPolicy

    clock = SystemClock()
    updater: Any = SimpleNamespace(clock=clock)  # the guard only reads its clock here
    guard = LocalGuard(updater, host, clock.monotonic)
    guard.monitor.watch(MODEL_NAME, SloPolicy(), MODEL_VERSION, "0", "production")
    return host, metrics, build_agent_app(host, metrics=metrics, observer=guard)


class _AsgiCall:
    """Calls an ASGI app with a fixed POST request; records response statuses."""

    def __init__(self, app: Any, body: bytes) -> None:
        self.app = app
        self.statuses: list[int] = []
        self._scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": _PATH,
            "raw_path": _PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        self._message = {"type": "http.request", "body": body, "more_body": False}

    async def _receive(self) -> dict[str, Any]:
        return self._message

    async def _send(self, event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            self.statuses.append(event["status"])

    async def __call__(self) -> None:
        scope = dict(self._scope)  # a server builds a fresh scope per request
        scope["state"] = {}
        await self.app(scope, self._receive, self._send)


def _run(factory: Callable[[], Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(factory())
    return uvloop.run(factory())


def _agent_functions(host: Any, metrics: Any, body: bytes) -> Callable[[], bytes]:
    """The serving functions the agent's infer endpoint calls, in its order, as one call.

    Mirrors ``_InferEndpoint.__call__`` in ``modelfleet/agent/_infer.py`` minus the ASGI
    plumbing: route lookup, ``choose``, ``decode_infer_request``, the batch limit,
    ``LoadedModel.infer`` (validation + run), the response encoder, the version header,
    ``AgentMetrics.on_request``.
    """
    from modelfleet.serving import oip
    from modelfleet.serving.router import choose

    encode_body = getattr(oip, "encode_infer_body", None)
    decode = oip.decode_infer_request
    observe = metrics.on_request
    rng = random.random

    def path() -> bytes:
        start = time.perf_counter()
        route = host.route(MODEL_NAME)
        model = choose(route, None, None, rng())[0]
        inputs = model.schema.inputs
        req = decode(body, None, raw_input=inputs[0] if len(inputs) == 1 else None)
        for arr in req.inputs.values():
            if arr.ndim and arr.shape[0] > 4096:
                raise AssertionError("over the batch limit")
        outputs = model.infer(req.inputs, req.output_names)
        if encode_body is not None:
            content, _ = encode_body(MODEL_NAME, model.version, req.id, outputs, False)
            headers = [(b"content-length", str(len(content)).encode())]
            headers.append((b"modelfleet-version", model.version.encode()))
        else:
            content, _headers = oip.encode_infer_response(
                MODEL_NAME, model.version, req.id, outputs, False
            )
        elapsed = time.perf_counter() - start
        observe(MODEL_NAME, model.version, "production", "ok", elapsed, 0.0, None, "127.0.0.1")
        return bytes(content)

    return path


def measure(bench: BenchModel, calls: int, warmup: int) -> dict[str, Any]:
    """Bare ``session.run`` against each agent and baseline path, in alternating pairs.

    Each comparison runs its own loop in which one bare call and one call of the path
    alternate, so both halves of a pair see the same machine state.

    Returns:
        Per path (``agent_functions``, ``agent_asgi``, ``agent_guarded_asgi``, ``naive_asgi``,
        ``naive_fastapi_asgi``):
        ``{"bare": summary, "path": summary, "overhead_p50_us": ..., "overhead_mean_us": ...}``
        (summaries in µs); ``stages_p50_us`` (or ``stages_error``).

    Raises:
        RuntimeError: an app answered something other than 200.
    """
    import onnxruntime as ort

    from benchmarks.serving.naive_app import build_naive_app

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bench.path), options, providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: bench.row}
    host, metrics, agent = _agent_parts(bench.path)
    apps = {
        "agent_asgi": _AsgiCall(agent, bench.body),
        "agent_guarded_asgi": _AsgiCall(_agent_parts(bench.path, guarded=True)[2], bench.body),
        "naive_asgi": _AsgiCall(build_naive_app(str(bench.path), MODEL_NAME), bench.body),
        "naive_fastapi_asgi": _AsgiCall(
            build_naive_app(str(bench.path), MODEL_NAME, fastapi=True), bench.body
        ),
    }
    run = session.run
    perf = time.perf_counter_ns
    result: dict[str, Any] = {}

    def pairs(bare: np.ndarray, path: np.ndarray, i: int, t0: int, t1: int, t2: int) -> None:
        if i >= 0:
            bare[i] = t1 - t0
            path[i] = t2 - t1

    def summarise(key: str, bare: np.ndarray, path: np.ndarray) -> None:
        b, p = _summary(bare), _summary(path)
        result[key] = {
            "bare": b,
            "path": p,
            "overhead_p50_us": p["p50_us"] - b["p50_us"],
            "overhead_mean_us": p["mean_us"] - b["mean_us"],
        }

    functions = _agent_functions(host, metrics, bench.body)
    bare, path = np.empty(calls, dtype=np.int64), np.empty(calls, dtype=np.int64)
    for i in range(-warmup, calls):
        t0 = perf()
        run(None, feed)
        t1 = perf()
        functions()
        pairs(bare, path, i, t0, t1, perf())
    summarise("agent_functions", bare, path)

    for key, call in apps.items():
        bare, path = np.empty(calls, dtype=np.int64), np.empty(calls, dtype=np.int64)

        async def loop(
            call: _AsgiCall = call, bare: np.ndarray = bare, path: np.ndarray = path
        ) -> None:
            for i in range(-warmup, calls):
                t0 = perf()
                run(None, feed)
                t1 = perf()
                await call()
                pairs(bare, path, i, t0, t1, perf())

        _run(loop)
        bad = [s for s in call.statuses if s != 200]
        if bad:
            raise RuntimeError(f"{key}: the in-process call answered {bad[0]}")
        summarise(key, bare, path)

    try:
        result["stages_p50_us"] = _stages(host, metrics, bench.body, calls)
    except Exception as e:  # the serving API moved: report, do not fail the benchmark
        result["stages_error"] = f"{type(e).__name__}: {e}"
    return result


def _stages(host: Any, metrics: Any, body: bytes, calls: int) -> dict[str, float]:
    """p50 µs of each serving step the infer endpoint takes, each timed alone."""
    from modelfleet.serving import oip
    from modelfleet.serving.oip import decode_infer_request
    from modelfleet.serving.router import choose

    encode = getattr(oip, "encode_infer_body", None) or oip.encode_infer_response
    observe = metrics.on_request
    rng = random.random
    perf = time.perf_counter_ns
    model = host.route(MODEL_NAME).production
    spec = model.schema.inputs[0]
    names = ["route+choose", "decode", "validate", "infer (validate+run)", "encode", "metrics"]
    stages = {name: np.empty(calls, dtype=np.int64) for name in names}
    for i in range(calls):
        t0 = perf()
        route = host.route(MODEL_NAME)
        choose(route, None, None, rng())
        t1 = perf()
        req = decode_infer_request(body, None, raw_input=spec)
        t2 = perf()
        model.validate(req.inputs)
        t3 = perf()
        outputs = model.infer(req.inputs, req.output_names)
        t4 = perf()
        encode(MODEL_NAME, model.version, req.id, outputs, False)
        t5 = perf()
        observe(MODEL_NAME, model.version, "production", "ok", 0.0002, 0.00001, None, "::1")
        t6 = perf()
        deltas = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
        for name, dt in zip(names, deltas, strict=True):
            stages[name][i] = dt
    return {name: float(np.percentile(v, 50)) / 1e3 for name, v in stages.items()}
