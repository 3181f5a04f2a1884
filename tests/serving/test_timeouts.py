"""Request timeout: a stalled body or a slow off-loop inference gets 503, not a hang."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from modelfleet.agent.app import ServingLimits, build_agent_app
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.serving.runtime import LoadedModel
from tests.helpers import logistic_onnx, slow_logistic_onnx

BODY = orjson.dumps(
    {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [0.0] * 10}]}
)


def app_with(tmp_path: Path, model: bytes, limits: ServingLimits) -> Any:
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    host = ModelHost()
    host.set_route("m", Route(LoadedModel.load("m", "1", path, "0" * 64)))
    return build_agent_app(host, limits=limits)


async def call_with_stalled_body(app: Any) -> tuple[int, bytes]:
    messages = [
        {"type": "http.request", "body": BODY[:20], "more_body": True},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(10)  # the client stalls mid-body
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "raw_path": b"",
        "root_path": "",
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "headers": [(b"content-length", str(len(BODY)).encode())],
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent[0]["status"], sent[1]["body"]


def test_stalled_body_gets_503_within_the_timeout(tmp_path: Path) -> None:
    app = app_with(tmp_path, logistic_onnx()[0], ServingLimits(request_timeout_s=0.05))
    status, body = asyncio.run(call_with_stalled_body(app))
    assert status == 503
    assert b"did not arrive within 0.05 s" in body


def test_slow_offloop_inference_gets_503(tmp_path: Path) -> None:
    limits = ServingLimits(request_timeout_s=0.001, inline_max_rows=0)
    app = app_with(tmp_path, slow_logistic_onnx(size=900), limits)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as c:
            x = np.zeros((1, 10), np.float32).ravel().tolist()
            body = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": x}]}
            return await c.post("/v2/models/m/infer", json=body)

    r = asyncio.run(go())
    assert r.status_code == 503
    assert "did not finish" in r.json()["error"]
