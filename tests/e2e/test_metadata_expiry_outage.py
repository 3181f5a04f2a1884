"""Metadata expiry across real processes (issue 10's "expired timestamp" row, ADR 0036).

A real ``hub serve`` and a real ``agent run`` share one compressed clock
(``MODELFLEET_SIM_CLOCK``, an hour a second). The hub is killed for longer than the
timestamp's one-day lifetime: the agent's verified metadata expires while it keeps
answering every request, says so in ``agent status`` and its metrics, and refuses nothing
it already runs. When the hub is back, fresh metadata clears the state and the next deploy
installs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from tests.e2e.conftest import cli, wait_for
from tests.helpers import logistic_onnx

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RATE = 3600.0  # one simulated hour per real second: the 1-day timestamp lasts 24 s
DEVICE = "edge-exp"
X = np.random.default_rng(0).standard_normal((1, 10)).astype(np.float32)
BODY = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32",
                    "data": X.ravel().tolist()}]}  # fmt: skip


class Client(threading.Thread):
    """Keeps asking for inferences; counts each answer's status and model version."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.halt = threading.Event()
        self.answers: dict[str, int] = {}

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.halt.is_set():
                try:
                    r = http.post(f"{self.url}/v2/models/m/infer", json=BODY)
                    key = f"{r.status_code} v{r.json().get('model_version')}"
                except (httpx.HTTPError, ValueError):
                    key = "error"
                self.answers[key] = self.answers.get(key, 0) + 1
                time.sleep(0.01)


def agent_status(state: Path) -> dict[str, object]:
    r = cli("agent", "status", "--state-dir", str(state), "--json")
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def metadata_expired(state: Path) -> bool:
    meta = agent_status(state).get("metadata")
    return isinstance(meta, dict) and meta.get("expired") is True


def gauge(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("modelfleet_agent_metadata_expired "):
            return float(line.split()[-1])
    raise AssertionError("no modelfleet_agent_metadata_expired on /metrics")


def serving(url: str) -> str:
    r = httpx.post(f"{url}/v2/models/m/infer", json=BODY, timeout=10)
    return str(r.json()["model_version"]) if r.status_code == 200 else "-"


def test_a_hub_outage_past_the_timestamps_life_keeps_serving_and_recovers(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "MODELFLEET_SIM_CLOCK": f"{time.time():.3f}:{RATE}"}
    home = tmp_path / "hub"
    assert cli("init", str(home)).returncode == 0
    hub_env = {"MODELFLEET_HUB": "", "MODELFLEET_TOKEN": (home / "admin.token").read_text().strip()}
    port = free_port()
    hub_env["MODELFLEET_HUB"] = f"http://127.0.0.1:{port}"
    hub_cmd = modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port))
    procs: list[Process] = []

    def hub_up(name: str) -> Process:
        proc = start(name, hub_cmd, tmp_path, env)
        procs.append(proc)
        health = f"{hub_env['MODELFLEET_HUB']}/api/v1/health"
        assert wait_for(lambda: httpx.get(health).status_code == 200, 30), proc.log.read_text()
        return proc

    try:
        hub = hub_up("hub")
        added = cli("device", "add", DEVICE, "--site", "plant-a", "--json", env=hub_env)
        assert added.returncode == 0, added.stderr
        token_file = tmp_path / "device.token"
        token_file.write_text(json.loads(added.stdout)["token"])
        token_file.chmod(0o600)
        for version, seed in ((1, 0), (2, 1)):
            model, x = logistic_onnx(seed=seed)
            (tmp_path / f"m{version}.onnx").write_bytes(model)
            np.save(tmp_path / "sample.npy", x[:5])
            reg = cli("model", "register", "m", str(tmp_path / f"m{version}.onnx"),
                      "--sample-input", str(tmp_path / "sample.npy"), env=hub_env)  # fmt: skip
            assert reg.returncode == 0, reg.stderr
        assert cli("deploy", "m", "1", "--devices", DEVICE, env=hub_env).returncode == 0

        agent_port = free_port()
        url = f"http://127.0.0.1:{agent_port}"
        state = tmp_path / "state"
        agent = start("agent", modelfleet_cmd(
            "agent", "run", "--hub", hub_env["MODELFLEET_HUB"], "--device-id", DEVICE,
            "--token-file", str(token_file), "--state-dir", str(state),
            "--port", str(agent_port), "--poll-interval", "0.5",
            "--trust-root", str(home / "trust-root.json"),
        ), tmp_path, env)  # fmt: skip
        procs.append(agent)
        assert wait_for(lambda: serving(url) == "1", 60), agent.log.read_text()
        assert not metadata_expired(state) and gauge(url) == 0.0
        client = Client(url)
        client.start()

        hub.popen.kill()  # the plant loses its link for more than a simulated day
        hub.popen.wait(10)
        assert wait_for(lambda: metadata_expired(state), 90), agent.log.read_text()
        assert gauge(url) == 1.0
        meta = agent_status(state)["metadata"]
        assert isinstance(meta, dict) and "expired" in str(meta.get("reason")), meta
        shown = cli("agent", "status", "--state-dir", str(state))
        assert "YES: no new installs, serving continues" in shown.stdout, shown.stdout
        assert serving(url) == "1"

        hub_up("hub-again")  # the link is back: fresh metadata, then a deploy
        assert cli("deploy", "m", "2", "--devices", DEVICE, env=hub_env).returncode == 0
        assert wait_for(lambda: serving(url) == "2", 120), agent.log.read_text()
        assert wait_for(lambda: not metadata_expired(state), 30), agent_status(state)
        assert gauge(url) == 0.0
        client.halt.set()
        client.join(15)
        # every request answered through the outage, by v1 and then by v2
        assert set(client.answers) <= {"200 v1", "200 v2"}, client.answers
        assert client.answers.get("200 v1", 0) > 100, client.answers
    finally:
        for proc in reversed(procs):
            proc.stop()
