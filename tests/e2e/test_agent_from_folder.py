"""An agent with no route to the hub updates from a folder (issue 11), across real processes.

A real hub signs v1 and v2 for a device; the files a device's TUF client walks are written
into a site tree by one online cycle (:class:`RecordingFetcher`, as an export does). A real
``agent run --from-folder`` whose hub address leads nowhere installs and serves v1 from the
folder; a stick carrying v2 with a flipped byte in its model is refused with the reason in
the agent's status, and v1 keeps serving. Then the operator mounts a re-made, intact v2
stick with the same desired-state serial: the same running agent retries v2 at once (the
folder changed; ADR 0034), installs and serves it, and its status clears the refusal.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelfleet.client import HubClient
from modelfleet.delivery.folder_fetcher import RecordingFetcher
from modelfleet.delivery.http_fetcher import HttpFetcher
from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.trust.client import DeviceTrustClient
from tests.e2e.conftest import cli, wait_for
from tests.helpers import logistic_onnx, make_data

pytestmark = pytest.mark.e2e

DEVICE = "vault-01"


def infer(url: str) -> str:
    body = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [0.0] * 10}]}
    r = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=10)
    return str(r.json().get("model_version", "")) if r.status_code == 200 else ""


def agent_status(state: Path) -> dict[str, Any]:
    out = cli("agent", "status", "--state-dir", str(state), "--json")
    try:
        status = json.loads(out.stdout)
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def export_tree(hub_url: str, token: str, trust_root: bytes, tree: Path, work: Path) -> None:
    """One online TUF cycle for the device, every file it read kept in ``tree``."""
    recorder = RecordingFetcher(HttpFetcher(token), tree, hub_url)
    client = DeviceTrustClient(work, hub_url, token, trust_root, fetcher=recorder)
    raw = client.fetch_desired_state(DEVICE)
    assert raw is not None
    for a in DesiredState.from_json(raw).assignments:
        p = a.production
        client.fetch_package_file(p.model_path, p.sha256, p.length, work / "m.onnx")
        client.fetch_package_file(
            p.manifest_path, p.manifest_sha256, p.manifest_length, work / "m.json"
        )
    client.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Process]]:
    running: list[Process] = []
    yield running
    for p in reversed(running):
        p.stop()


def test_an_agent_with_no_route_to_the_hub_updates_from_a_folder(
    tmp_path: Path, procs: list[Process]
) -> None:
    home = tmp_path / "hub"
    assert cli("init", str(home)).returncode == 0
    admin = (home / "admin.token").read_text().strip()
    port = free_port()
    procs.append(start("hub", modelfleet_cmd("hub", "serve", "--home", str(home),
                                             "--port", str(port)), tmp_path))  # fmt: skip
    hub_url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{hub_url}/api/v1/health").status_code == 200)
    env = {"MODELFLEET_HUB": hub_url, "MODELFLEET_TOKEN": admin}
    sample = tmp_path / "sample.npy"
    np.save(sample, make_data(0)[0][:5])
    for seed in (0, 1):
        model = tmp_path / f"model{seed}.onnx"
        model.write_bytes(logistic_onnx(seed)[0])
        reg = cli("model", "register", "m", str(model), "--sample-input", str(sample), env=env)
        assert reg.returncode == 0, reg.stderr
    api = HubClient(hub_url, admin)
    token = api.add_device(DEVICE, site="vault")["token"]
    trust_root = (home / "trust-root.json").read_bytes()

    api.deploy("m", 1, all_devices=True)
    stick_v1 = tmp_path / "stick-v1"
    export_tree(hub_url, token, trust_root, stick_v1, tmp_path / "export-v1")
    api.deploy("m", 2, all_devices=True)
    stick_v2 = tmp_path / "stick-v2"
    export_tree(hub_url, token, trust_root, stick_v2, tmp_path / "export-v2")

    mounted = tmp_path / "mnt"
    shutil.copytree(stick_v1, mounted)
    state = tmp_path / "agent"
    aport = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    agent = start("agent", modelfleet_cmd(
        "agent", "run", "--hub", nowhere, "--device-id", DEVICE, "--token", token,
        "--state-dir", str(state), "--port", str(aport), "--poll-interval", "0.3",
        "--trust-root", str(home / "trust-root.json"), "--from-folder", str(mounted),
    ), tmp_path)  # fmt: skip
    procs.append(agent)
    agent_url = f"http://127.0.0.1:{aport}"
    assert wait_for(lambda: infer(agent_url) == "1", 90), agent.output()[-3000:]

    # v2 arrives on a stick with one byte of its model flipped: refused, v1 serves on
    shutil.rmtree(mounted)
    shutil.copytree(stick_v2, mounted)
    (blob,) = [p for p in (mounted / "tuf" / "catalog" / "targets").rglob("*.model.onnx")
               if "/m/2/" in p.as_posix()]  # fmt: skip
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    def refused() -> bool:
        out = cli("agent", "status", "--state-dir", str(state), "--json")
        return "hash mismatch" in out.stdout

    assert wait_for(refused, 60), agent.output()[-3000:]
    assert infer(agent_url) == "1"

    refusal = agent_status(state)["last_refusal"]
    assert (refusal["version"], refusal["kind"]) == (2, "delivery")
    serial = refusal["serial"]

    # the operator re-makes the stick (same serial, intact bytes): the same agent installs v2
    shutil.rmtree(mounted)
    shutil.copytree(stick_v2, mounted)
    assert wait_for(lambda: infer(agent_url) == "2", 60), agent.output()[-3000:]

    def up_to_date() -> bool:
        status = agent_status(state)
        return status.get("update_status") == f"up to date (serial {serial})"

    assert wait_for(up_to_date, 30), agent_status(state)
    status = agent_status(state)
    assert status["last_refusal"] is None and status["applied_serial"] == serial
    assert agent.popen.poll() is None  # the same process throughout
