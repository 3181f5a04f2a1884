"""Sign after commit (issue 6): a hub killed between committing a deployment and signing it
repairs the signed metadata when it starts again, and the device converges.

Real processes on loopback: ``modelfleet hub serve``, ``modelfleet agent run``, and a hub
process that commits a deployment and dies (``os._exit``) before it signs anything.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from tests.e2e.conftest import Hub, cli, wait_for
from tests.helpers import logistic_onnx

pytestmark = pytest.mark.e2e

# A hub process that commits a deployment, then dies where it would sign it. The fault is
# injected here, in this script, not in the hub's code: its director's publish step (the
# signing after the commit) is replaced by a hard exit.
_CRASH_AFTER_COMMIT = """
import os, sys
from modelfleet.clock import SystemClock
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService

service = HubService(load_hub_config(sys.argv[1]), SystemClock())
service.director.publish = lambda: os._exit(86)
service.deploy("m", 2, ["edge-1"], actor="test:crash")
sys.exit("the deployment returned: the fault was not reached")
"""


def _serve(home: Path, port: int, tmp_path: Path, name: str) -> Process:
    proc = start(
        name, modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port)), tmp_path
    )
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/api/v1/health").status_code == 200), proc.output()
    return proc


def _register(hub: Hub, tmp_path: Path, seed: int) -> None:
    model, x = logistic_onnx(seed=seed)
    path, sample = tmp_path / f"m{seed}.onnx", tmp_path / f"s{seed}.npy"
    path.write_bytes(model)
    np.save(sample, x[:5])
    r = cli("model", "register", "m", str(path), "--sample-input", str(sample), env=hub.env())
    assert r.returncode == 0, r.stderr


def _serving(url: str) -> str | None:
    x = np.zeros((1, 10), dtype=np.float32)
    body = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": x[0].tolist()}]}
    r = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=5)
    version: str | None = r.json().get("model_version") if r.status_code == 200 else None
    return version


def _db_state(home: Path) -> tuple[int, str]:
    with sqlite3.connect(home / "hub.db") as conn:
        row = conn.execute(
            "SELECT serial, sha256 FROM desired_states WHERE device_id = 'edge-1'"
        ).fetchone()
    return int(row[0]), str(row[1])


def _director_lists(home: Path) -> str:
    """The sha256 edge-1's own signed director repository lists (issue 8: in the DB)."""
    with sqlite3.connect(home / "hub.db") as conn:
        row = conn.execute(
            "SELECT listed_sha256 FROM director_devices WHERE device_id = 'edge-1'"
        ).fetchone()
    return str(row[0])


def test_hub_killed_between_commit_and_signing_repairs_on_restart_and_device_converges(
    tmp_path: Path,
) -> None:
    home = tmp_path / "hub"
    assert cli("init", str(home)).returncode == 0
    port = free_port()
    procs: list[Process] = []
    try:
        procs.append(_serve(home, port, tmp_path, "hub"))
        hub = Hub(home, f"http://127.0.0.1:{port}", (home / "admin.token").read_text().strip(),
                  procs[0])  # fmt: skip
        added = cli("device", "add", "edge-1", "--json", env=hub.env())
        assert added.returncode == 0, added.stderr
        agent_port = free_port()
        agent = start(
            "agent",
            modelfleet_cmd(
                "agent", "run", "--hub", hub.url, "--device-id", "edge-1",
                "--token", json.loads(added.stdout)["token"],
                "--state-dir", str(tmp_path / "edge-1"), "--port", str(agent_port),
                "--poll-interval", "0.2", "--trust-root", str(home / "trust-root.json"),
            ),
            tmp_path,
        )  # fmt: skip
        procs.append(agent)
        agent_url = f"http://127.0.0.1:{agent_port}"
        for seed in (0, 1):
            _register(hub, tmp_path, seed)
        assert cli("deploy", "m", "1", "--all", env=hub.env()).returncode == 0
        assert wait_for(lambda: _serving(agent_url) == "1"), agent.output()

        procs[0].stop()
        crashed = subprocess.run(
            [sys.executable, "-c", _CRASH_AFTER_COMMIT, str(home)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert crashed.returncode == 86, crashed.stderr
        serial, committed = _db_state(home)
        assert serial == 2  # the deployment is committed...
        assert _director_lists(home) != committed  # ...and was never signed

        procs.append(_serve(home, port, tmp_path, "hub-restarted"))
        assert _director_lists(home) == committed  # start-up signed what was missing
        assert wait_for(lambda: _serving(agent_url) == "2"), agent.output()
    finally:
        for p in reversed(procs):
            p.stop()
