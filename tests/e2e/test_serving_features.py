"""Issue 3 features across real processes: the local guard and the edge–cloud cascade."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import Hub, Proc, cli, start_agent, wait_for
from tests.helpers import logistic_onnx, slow_logistic_onnx

pytestmark = pytest.mark.e2e

BODY = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [0.1] * 10}]}


def register(hub: Hub, tmp_path: Path, name: str, model: bytes) -> int:
    path = tmp_path / name
    path.write_bytes(model)
    result = cli("model", "register", "m", str(path), "--json", env=hub.env())
    assert result.returncode == 0, result.stderr
    version: int = json.loads(result.stdout)["version"]
    return version


def status(state: Path) -> dict:  # type: ignore[type-arg]
    data: dict = json.loads(cli("agent", "status", "--state-dir", str(state), "--json").stdout)  # type: ignore[type-arg]
    return data


def test_guard_rolls_back_a_slow_version_and_tells_the_hub(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    url, state, agent = start_agent(hub, spawn, tmp_path, "edge-g")
    v1 = register(hub, tmp_path, "fast.onnx", logistic_onnx()[0])
    assert cli("deploy", "m", str(v1), "--all", env=hub.env()).returncode == 0
    infer = f"{url}/v2/models/m/infer"
    assert wait_for(lambda: httpx.post(infer, json=BODY).headers["modelfleet-version"] == "1")
    v2 = register(hub, tmp_path, "slow.onnx", slow_logistic_onnx())
    deployed = cli(
        "deploy", "m", str(v2), "--all", "--slo", "p99_ms=5,min_samples=15", env=hub.env()
    )
    assert deployed.returncode == 0, deployed.stderr
    assert wait_for(lambda: httpx.post(infer, json=BODY).headers["modelfleet-version"] == "2")
    seen = set()
    with httpx.Client() as client:
        for _ in range(200):
            seen.add(client.post(infer, json=BODY).headers["modelfleet-version"])
            if "1" in seen:
                break
    assert seen == {"2", "1"}, agent.output()
    st = status(state)
    assert st["models"]["m"]["active"]["version"] == 1
    assert any("local guard: p99 latency" in e["message"] for e in st["events"])
    metrics = httpx.get(f"{url}/metrics").text
    assert 'modelfleet_agent_guard_rollbacks_total{model="m",version="2"} 1.0' in metrics

    def hub_knows() -> bool:
        devices = json.loads(cli("device", "list", "--json", env=hub.env()).stdout)
        report = devices[0]["report"]
        return bool(report) and report["models"]["m"]["active"]["version"] == 1

    assert wait_for(hub_knows)


def test_cascade_sends_unsure_requests_to_the_upstream_agent(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    upstream_url, _, _ = start_agent(hub, spawn, tmp_path, "site-server")
    edge_url, _, edge = start_agent(
        hub, spawn, tmp_path, "edge-c", "--upstream", upstream_url, "--cascade-threshold", "0.99"
    )
    register(hub, tmp_path, "m.onnx", logistic_onnx()[0])
    assert cli("deploy", "m", "1", "--all", env=hub.env()).returncode == 0
    for url in (upstream_url, edge_url):
        assert wait_for(
            lambda u=url: httpx.post(f"{u}/v2/models/m/infer", json=BODY).status_code == 200
        )
    x = np.zeros((1, 10), np.float32).ravel().tolist()
    body = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": x}]}
    r = httpx.post(f"{edge_url}/v2/models/m/infer", json=body)
    assert r.status_code == 200, edge.output()
    assert r.headers["modelfleet-route"] == "upstream"
    metrics = httpx.get(f"{edge_url}/metrics").text
    assert 'modelfleet_agent_cascade_total{model="m",route="upstream"}' in metrics
    upstream_metrics = httpx.get(f"{upstream_url}/metrics").text
    assert (
        'modelfleet_agent_requests_total{model="m",outcome="success",version="1"}'
        in upstream_metrics
    )
