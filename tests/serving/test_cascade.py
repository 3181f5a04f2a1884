"""Edge–cloud cascade: confident answers stay local, the rest go upstream, with fallbacks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelfleet.agent.app import build_agent_app
from modelfleet.agent.upstream import UpstreamClient
from modelfleet.errors import ConfigError
from modelfleet.serving.cascade import CascadeRoute, CascadeSettings, route_for
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.serving.runtime import LoadedModel
from tests.helpers import logistic_onnx

X = np.zeros((1, 10), np.float32)


def loaded(tmp_path: Path, version: str, seed: int) -> LoadedModel:
    path = tmp_path / f"m{version}.onnx"
    path.write_bytes(logistic_onnx(seed=seed)[0])
    return LoadedModel.load("m", version, path, "0" * 64)


def body(x: np.ndarray = X) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


@pytest.mark.parametrize(
    ("top", "unhealthy", "when_unhealthy", "expected"),
    [
        (0.95, False, False, CascadeRoute.LOCAL),
        (0.50, False, False, CascadeRoute.UPSTREAM),
        (None, False, False, CascadeRoute.LOCAL),
        (0.95, True, False, CascadeRoute.LOCAL),
        (0.95, True, True, CascadeRoute.UPSTREAM),
        (0.80, False, False, CascadeRoute.LOCAL),
    ],
    ids=[
        "confident",
        "unsure",
        "no-probabilities",
        "unhealthy-rule-off",
        "unhealthy-rule-on",
        "exactly-at-threshold",
    ],
)
def test_route_decision(
    top: float | None, unhealthy: bool, when_unhealthy: bool, expected: CascadeRoute
) -> None:
    settings = CascadeSettings("http://up", threshold=0.8, when_unhealthy=when_unhealthy)
    assert route_for(settings, top, unhealthy) is expected


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ConfigError):
        CascadeSettings("ftp://x")
    with pytest.raises(ConfigError):
        CascadeSettings("http://x", threshold=1.5)


class Upstream:
    """An upstream that is another agent app (version 9), reached in-process."""

    def __init__(self, tmp_path: Path, delay: float = 0.0, status: int | None = None) -> None:
        host = ModelHost()
        host.set_route("m", Route(loaded(tmp_path, "9", seed=3)))
        self.app = build_agent_app(host)
        self.calls = 0
        self.delay = delay
        self.status = status

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.status:
                await send({"type": "http.response.start", "status": self.status, "headers": []})
                await send({"type": "http.response.body", "body": b"{}"})
                return
        await self.app(scope, receive, send)


def agent(tmp_path: Path, settings: CascadeSettings, upstream: Any, unhealthy: bool = False) -> Any:
    host = ModelHost()
    host.set_route("m", Route(loaded(tmp_path, "1", seed=0)))
    client = UpstreamClient(
        settings,
        transport=httpx.ASGITransport(app=upstream) if upstream else _refusing(),
        unhealthy=lambda model: unhealthy,
    )
    return build_agent_app(host, cascade=client)


def _refusing() -> httpx.AsyncBaseTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused (test)")

    return httpx.MockTransport(handler)


async def post(app: Any, n: int = 1) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        return [await client.post("/v2/models/m/infer", json=body()) for _ in range(n)]


def metric(app: Any, route: str) -> float | None:
    value: float | None = app.state.metrics.registry.get_sample_value(
        "modelfleet_agent_cascade_total", {"model": "m", "route": route}
    )
    return value


def test_confident_answer_stays_local(tmp_path: Path) -> None:
    up = Upstream(tmp_path)
    app = agent(tmp_path, CascadeSettings("http://up", threshold=0.0), up)
    (r,) = asyncio.run(post(app))
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert r.headers["modelfleet-route"] == "local"
    assert up.calls == 0 and metric(app, "local") == 1


def test_unsure_answer_comes_from_upstream(tmp_path: Path) -> None:
    up = Upstream(tmp_path)
    app = agent(tmp_path, CascadeSettings("http://up", threshold=1.0), up)
    responses = asyncio.run(post(app, 3))
    assert {r.json()["model_version"] for r in responses} == {"9"}
    assert all(r.headers["modelfleet-route"] == "upstream" for r in responses)
    assert up.calls == 3 and metric(app, "upstream") == 3


def test_upstream_down_falls_back_to_local_answer(tmp_path: Path) -> None:
    app = agent(tmp_path, CascadeSettings("http://up", threshold=1.0), None)
    (r,) = asyncio.run(post(app))
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert r.headers["modelfleet-route"] == "fallback" and metric(app, "fallback") == 1


def test_slow_upstream_falls_back_within_the_timeout(tmp_path: Path) -> None:
    up = Upstream(tmp_path, delay=2.0)
    app = agent(tmp_path, CascadeSettings("http://up", threshold=1.0, timeout_s=0.05), up)
    (r,) = asyncio.run(post(app))
    assert r.headers["modelfleet-route"] == "fallback"
    assert r.json()["model_version"] == "1"


def test_upstream_error_status_falls_back(tmp_path: Path) -> None:
    up = Upstream(tmp_path, status=503)
    app = agent(tmp_path, CascadeSettings("http://up", threshold=1.0), up)
    (r,) = asyncio.run(post(app))
    assert r.headers["modelfleet-route"] == "fallback"


def test_unhealthy_device_sends_everything_upstream(tmp_path: Path) -> None:
    up = Upstream(tmp_path)
    settings = CascadeSettings("http://up", threshold=0.0, when_unhealthy=True)
    app = agent(tmp_path, settings, up, unhealthy=True)
    (r,) = asyncio.run(post(app))
    assert r.headers["modelfleet-route"] == "upstream" and r.json()["model_version"] == "9"
