"""The whole loop across real processes: CLI → hub → TUF → agent → OIP v2 → rollback."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import Hub, Proc, cli, free_port, start_agent, wait_for
from tests.helpers import logistic_onnx

pytestmark = pytest.mark.e2e


def infer(url: str, x: np.ndarray, model: str = "m") -> httpx.Response:
    body = {
        "inputs": [
            {"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=10)


def agent_status(state_dir: Path) -> dict:  # type: ignore[type-arg]
    result = cli("agent", "status", "--state-dir", str(state_dir), "--json")
    assert result.returncode == 0, result.stderr
    data: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    return data


def register(hub: Hub, tmp_path: Path, version_seed: int) -> dict:  # type: ignore[type-arg]
    model, x = logistic_onnx(seed=version_seed)
    path = tmp_path / f"model-{version_seed}.onnx"
    path.write_bytes(model)
    sample = tmp_path / f"sample-{version_seed}.npy"
    np.save(sample, x[:5])
    result = cli(
        "model", "register", "m", str(path), "--sample-input", str(sample), "--json", env=hub.env()
    )
    assert result.returncode == 0, result.stderr
    data: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    return data


def test_register_deploy_serve_tamper_and_rollback(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    url, state, agent = start_agent(hub, spawn, tmp_path, "edge-1")
    x = np.random.default_rng(0).standard_normal((1, 10)).astype(np.float32)

    v1 = register(hub, tmp_path, 0)
    assert v1["version"] == 1
    deployed = cli("deploy", "m", "1", "--all", env=hub.env())
    assert deployed.returncode == 0, deployed.stderr
    assert wait_for(lambda: infer(url, x).json()["model_version"] == "1"), agent.output()

    v2 = register(hub, tmp_path, 1)
    assert cli("deploy", "m", "2", "--devices", "edge-1", env=hub.env()).returncode == 0
    assert wait_for(lambda: infer(url, x).json()["model_version"] == "2"), agent.output()
    st = agent_status(state)
    assert st["models"]["m"]["previous"]["version"] == 1

    # the hub's copy of v3 is altered after registration: the agent must refuse it
    v3 = register(hub, tmp_path, 2)
    blob = hub.home / "artefacts" / "sha256" / v3["sha256"][:2] / v3["sha256"]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-4] + b"evil")
    assert cli("deploy", "m", "3", "--devices", "edge-1", env=hub.env()).returncode == 0
    assert wait_for(lambda: (agent_status(state).get("last_refusal") or {}).get("version") == 3)
    refusal = agent_status(state)["last_refusal"]
    assert refusal["kind"] == "delivery"  # bad bytes: refused, retried (ADR 0034)
    assert infer(url, x).json()["model_version"] == "2"
    assert "REFUSED" in agent.output()

    # the hub learns about it at the next check-in
    shown = cli("device", "list", "--json", env=hub.env())
    assert shown.returncode == 0
    assert wait_for(
        lambda: (
            json.loads(cli("device", "list", "--json", env=hub.env()).stdout)[0]["report"][
                "last_refusal"
            ]["version"]
            == 3
        )
    )

    # local rollback: previous model kept warm, nothing downloaded
    rolled = cli("agent", "rollback", "--state-dir", str(state))
    assert rolled.returncode == 0, rolled.stderr
    assert "v2 -> v1" in rolled.stdout
    assert infer(url, x).json()["model_version"] == "1"
    assert v2["version"] == 2


def test_a_rollback_on_the_device_moves_the_hubs_view_of_it(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    """Issue 6, contract 2: a rollback done on the device reaches the hub as a structured
    event; the hub's production and previous follow the device's, audited once, and the
    re-signed desired state keeps the device where it is."""
    url, state, agent = start_agent(hub, spawn, tmp_path, "edge-4")
    x = np.zeros((1, 10), np.float32)
    for seed, version in ((0, "1"), (1, "2")):
        register(hub, tmp_path, seed)
        assert cli("deploy", "m", version, "--devices", "edge-4", env=hub.env()).returncode == 0
        assert wait_for(lambda v=version: infer(url, x).json()["model_version"] == v)
    before = agent_status(state)["applied_serial"]

    rolled = cli("agent", "rollback", "--state-dir", str(state))
    assert rolled.returncode == 0, rolled.stderr
    assert infer(url, x).json()["model_version"] == "1"

    def hub_assignment() -> dict:  # type: ignore[type-arg]
        devices = json.loads(cli("device", "list", "--json", env=hub.env()).stdout)
        [device] = [d for d in devices if d["id"] == "edge-4"]
        [assignment] = device["assignments"]
        return assignment  # type: ignore[no-any-return]

    assert wait_for(lambda: hub_assignment()["production"] == 1), agent.output()
    assert hub_assignment()["previous"] is None
    audit = cli("audit", "log", "--action", "device-rollback", "--json", env=hub.env())
    events = json.loads(audit.stdout)["entries"]
    assert len(events) == 1 and events[0]["actor"] == "device:edge-4"
    assert wait_for(lambda: agent_status(state)["applied_serial"] > before), agent.output()
    assert infer(url, x).json()["model_version"] == "1"
    assert agent_status(state).get("last_refusal") is None


def test_agent_refuses_a_token_that_is_not_its_devices(hub: Hub, tmp_path: Path) -> None:
    """Defect 3: the walkthrough's admin token (MODELFLEET_TOKEN) is never taken as the
    device's, and a token of another device or role is refused at startup."""
    cli("device", "add", "edge-7", "--json", env=hub.env())
    other = json.loads(cli("device", "add", "edge-8", "--json", env=hub.env()).stdout)["token"]
    base = ["agent", "run", "--hub", hub.url, "--device-id", "edge-7",
            "--trust-root", str(hub.home / "trust-root.json"), "--port", "0"]  # fmt: skip
    no_token = cli(*base, "--state-dir", str(tmp_path / "a"), env=hub.env(), timeout=60)
    assert no_token.returncode == 2 and "token" in no_token.stderr, no_token.stderr
    for name, token in (("admin", hub.token), ("other-device", other)):
        r = cli(
            *base,
            "--state-dir",
            str(tmp_path / name),
            env={"MODELFLEET_DEVICE_TOKEN": token},
            timeout=60,
        )
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "edge-7" in r.stderr, r.stderr


def test_tampered_metadata_is_refused_and_agent_keeps_serving(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    url, state, agent = start_agent(hub, spawn, tmp_path, "edge-2")
    register(hub, tmp_path, 0)
    assert cli("deploy", "m", "1", "--devices", "edge-2", env=hub.env()).returncode == 0
    x = np.zeros((1, 10), np.float32)
    assert wait_for(lambda: infer(url, x).status_code == 200), agent.output()
    # change a signed byte of the device's own director timestamp on the hub (issue 8: the
    # per-device repository lives in the hub database); its check-in answer then names
    # the new version, so the agent fetches it
    with sqlite3.connect(hub.home / "hub.db") as db:
        (raw,) = db.execute(
            "SELECT timestamp_json FROM director_devices WHERE device_id = 'edge-2'"
        ).fetchone()
        doc = json.loads(raw)
        doc["signed"]["version"] += 1
        db.execute(
            "UPDATE director_devices SET timestamp_json = ?, timestamp_version = ? "
            "WHERE device_id = 'edge-2'",
            (json.dumps(doc).encode(), doc["signed"]["version"]),
        )
    assert wait_for(lambda: "refused" in (agent_status(state).get("last_error") or ""))
    assert "timestamp" in agent_status(state)["last_error"]
    assert infer(url, x).json()["model_version"] == "1"


def test_register_rejects_a_file_that_is_not_onnx(hub: Hub, tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("definitely not protobuf")
    result = cli("model", "register", "m", str(bogus), env=hub.env())
    assert result.returncode == 1
    assert "not an ONNX model" in result.stderr
    assert "Traceback" not in result.stderr
    listed = cli("model", "list", "--json", env=hub.env())
    assert json.loads(listed.stdout) == []


def test_wrong_tensor_and_unknown_model_get_oip_errors(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    url, _, _agent = start_agent(hub, spawn, tmp_path, "edge-3")
    register(hub, tmp_path, 0)
    assert cli("deploy", "m", "1", "--all", env=hub.env()).returncode == 0
    assert wait_for(lambda: infer(url, np.zeros((1, 10), np.float32)).status_code == 200)
    wrong_shape = infer(url, np.zeros((1, 7), np.float32))
    assert wrong_shape.status_code == 400 and "X" in wrong_shape.json()["error"]
    wrong_name = httpx.post(
        f"{url}/v2/models/m/infer",
        json={
            "inputs": [{"name": "nope", "shape": [1, 10], "datatype": "FP32", "data": [0.0] * 10}]
        },
    )
    assert wrong_name.status_code == 400 and "nope" in wrong_name.json()["error"]
    unknown = infer(url, np.zeros((1, 10), np.float32), model="ghost")
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert httpx.get(f"{url}/v2/models/m/versions/99").status_code == 404


def test_cli_without_token_and_with_wrong_role_fail_cleanly(hub: Hub, tmp_path: Path) -> None:
    no_token = cli("model", "list", env={"MODELFLEET_HUB": hub.url, "MODELFLEET_TOKEN": ""})
    assert no_token.returncode == 4 and "token" in no_token.stderr  # auth (cli/_errors.py)
    added = cli("device", "add", "edge-9", "--json", env=hub.env())
    device_token = json.loads(added.stdout)["token"]
    forbidden = cli(
        "device",
        "add",
        "edge-10",
        env={"MODELFLEET_HUB": hub.url, "MODELFLEET_TOKEN": device_token},
    )
    assert forbidden.returncode == 4 and "Traceback" not in forbidden.stderr
    dead = cli(
        "model",
        "list",
        env={"MODELFLEET_HUB": f"http://127.0.0.1:{free_port()}", "MODELFLEET_TOKEN": hub.token},
    )
    assert dead.returncode == 5 and "cannot reach" in dead.stderr  # unreachable


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    result = cli("demo", "--workdir", str(tmp_path / "demo"), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Every step did what it claimed" in result.stdout
    assert "refused v3" in result.stdout
    assert "the rollout ended rolled_back" in result.stdout
    assert "v4 reached only the 5 canary devices" in result.stdout
    assert "drift flagged on x3 only" in result.stdout  # step 11: held by its drift gate
    assert "gate failed in stage plant-b: drift_score" in result.stdout
