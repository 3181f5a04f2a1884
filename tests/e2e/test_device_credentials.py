"""Device credentials across real processes (issue 10): an operator creates a bootstrap
token, the device exchanges it with ``modelfleet device enrol``, the agent runs on the stored
credential and serves; a used bootstrap token is refused; once the credential is revoked the
hub refuses the device (the reason in its log) and the agent keeps serving; decommissioning
takes it out of the fleet."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import Hub, Proc, cli, free_port, wait_for
from tests.e2e.test_whole_loop import infer, register

pytestmark = pytest.mark.e2e


def _json(hub: Hub, *args: str) -> Any:
    r = cli(*args, "--json", env=hub.env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bootstrap_enrol_serve_revoke_keeps_serving_then_decommission(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    boot = _json(
        hub, "device", "enrol-token", "create", "cam-1", "--site", "plant-a", "--ttl", "1h"
    )
    token_file = tmp_path / "bootstrap.token"
    token_file.write_text(boot["token"])
    os.chmod(token_file, 0o600)
    state = tmp_path / "cam-1"
    enrol_args = ("device", "enrol", "cam-1", "--hub", hub.url,
                  "--bootstrap-token-file", str(token_file), "--state-dir", str(state))  # fmt: skip
    enrolled = cli(*enrol_args, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    assert json.loads(enrolled.stdout)["credential_id"].startswith("dc_")
    assert "mfd_" not in enrolled.stdout  # the credential is written, never printed
    again = cli(*enrol_args)
    assert again.returncode != 0 and "already used" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1  # one clear line, no traceback

    port = free_port()
    agent = spawn(
        "agent-cam-1",
        "agent",
        "run",
        "--hub",
        hub.url,
        "--device-id",
        "cam-1",
        "--state-dir",
        str(state),
        "--port",
        str(port),
        "--poll-interval",
        "0.2",
        "--trust-root",
        str(hub.home / "trust-root.json"),
    )  # fmt: skip  (no --token: the enrolled credential in the state folder)
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/v2/health/live").status_code == 200), agent.output()
    register(hub, tmp_path, 0)
    assert cli("deploy", "m", "1", "--devices", "cam-1", env=hub.env()).returncode == 0
    x = np.zeros((1, 10), np.float32)
    assert wait_for(lambda: infer(url, x).status_code == 200), agent.output()
    (cred,) = _json(hub, "device", "credentials", "cam-1")
    assert cred["state"] == "active"

    revoked = _json(hub, "device", "revoke", "cam-1", "--reason", "lost in transit")
    assert revoked["revoked"] == [cred["id"]]
    assert wait_for(lambda: "has been revoked" in hub.proc.output()), hub.proc.output()
    assert infer(url, x).status_code == 200  # still serving from disk
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200

    gone = _json(hub, "device", "decommission", "cam-1", "--reason", "scrapped")
    assert gone["device_id"] == "cam-1"
    (device,) = _json(hub, "device", "list")
    assert device["assignments"] == []
    assert infer(url, x).status_code == 200
    listed = _json(hub, "device", "credentials")
    assert [c["state"] for c in listed] == ["revoked"]
    twice = cli("device", "decommission", "cam-1", env=hub.env())
    assert twice.returncode != 0 and "already decommissioned" in twice.stderr
