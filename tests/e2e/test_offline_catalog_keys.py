"""Only the director's and the timestamp's keys online (issue 10, ADR 0043), driven as an
operator would: the real CLI makes the root and the catalog's targets keys offline and
signs the snapshot with the timestamp key; a real ``hub serve`` refuses to deploy a
version until the offline targets ceremony (``keys export-targets`` on the hub,
``keys sign-targets`` with no hub home, ``keys apply-targets`` while the hub runs); then
a real enrolled agent installs and serves it. Wrong use gets one line, never a traceback."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.trust.key_registry import KeyRegistry, KeyState
from tests.e2e.conftest import Hub, Proc, cli, free_port, start_agent, wait_for
from tests.e2e.test_whole_loop import infer, register

pytestmark = pytest.mark.e2e


def _ok(*args: str, env: dict[str, str] | None = None) -> str:
    r = cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _one_line_error(r: subprocess.CompletedProcess[str], text: str) -> None:
    assert r.returncode != 0
    err = r.stderr.strip()
    assert text in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err


def test_offline_catalog_keys_ceremony_then_the_agent_serves(
    tmp_path: Path, spawn: Callable[..., Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every key file encrypted, the offline ones too (the hub and the CLI read the variable).
    monkeypatch.setenv("MODELFLEET_KEY_PASSPHRASE", "correct horse battery staple")
    home, offline = tmp_path / "hub", tmp_path / "offline-machine"
    offline.mkdir()
    _ok("init", str(home))
    targets_key = offline / "targets.pem"
    _ok("keys", "rotate", "targets", "--home", str(home), "--out", str(targets_key))
    _ok("keys", "rotate", "snapshot", "--home", str(home), "--timestamp-key")
    _ok("keys", "rotate", "root", "--home", str(home), "--out", str(offline / "root.pem"))
    registry = KeyRegistry.load(home / "keys")
    on_hub = {r.role for r in registry.records() if r.state is KeyState.ACTIVE and r.file}
    assert on_hub == {"director", "timestamp"}
    assert sorted(p.name for p in (home / "keys").glob("*.pem")) == [
        "audit.pem",
        "director.pem",
        "timestamp.pem",
    ]

    token = (home / "admin.token").read_text().strip()
    port = free_port()
    proc = spawn("hub", "hub", "serve", "--home", str(home), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/api/v1/health").status_code == 200), proc.output()
    hub = Hub(home, url, token, proc)
    agent_url, _, agent = start_agent(hub, spawn, tmp_path, "edge-1")

    register(hub, tmp_path, 0)
    refused = cli("deploy", "m", "1", "--all", env=hub.env())
    _one_line_error(refused, "m v1 is not in the signed catalog yet")
    assert "keys export-targets" in refused.stderr
    listed = _ok("keys", "list", "--home", str(home))
    assert "waits for its offline signature" in listed and "models/m/1/model.onnx" in listed

    unsigned, signed = tmp_path / "targets.unsigned.json", offline / "targets.signed.json"
    _ok("keys", "export-targets", "--home", str(home), "--out", str(unsigned))
    # On the offline machine: no hub home, no hub address. 3 targets: the model, its
    # manifest and its OpenSSF model-signing bundle.
    sign = ("keys", "sign-targets", "--unsigned", str(unsigned), "--key", str(targets_key))
    out = json.loads(_ok(*sign, "--out", str(signed), "--json"))
    assert out["targets"] == 3 and out["delegations"] == []
    wrong = cli("keys", "sign-targets", "--unsigned", str(unsigned), "--out", str(signed))
    _one_line_error(wrong, "give either --key FILE or --signer-uri URI")
    edited = json.loads(signed.read_bytes())
    edited["signed"]["targets"].pop("models/m/1/manifest.json")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(edited))
    _one_line_error(
        cli("keys", "apply-targets", "--home", str(home), "--signed", str(forged)),
        "not the one waiting",
    )
    applied = json.loads(
        _ok("keys", "apply-targets", "--home", str(home), "--signed", str(signed), "--json")
    )
    assert applied["written"] == ["catalog/targets", "catalog/snapshot", "catalog/timestamp"]
    _one_line_error(
        cli("keys", "apply-targets", "--home", str(home), "--signed", str(signed)),
        "no catalog targets waits for an offline signature",
    )

    _ok("deploy", "m", "1", "--all", env=hub.env())  # the running hub sees the new catalog
    x = np.zeros((1, 10), np.float32)
    assert wait_for(lambda: infer(agent_url, x).status_code == 200), agent.output()
