"""``modelfleet approve``, ``release-key`` and ``model revoke`` (issue 10) in process,
against the hub app over its test client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelfleet.cli import main as cli
from modelfleet.client import HubClient
from modelfleet.hub.service import HubService
from tests.hub._support import register


@pytest.fixture
def run(
    http: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Any:
    def factory(hub: str, token: str, token_file: Path | None = None) -> HubClient:
        return HubClient(str(http.base_url), token, http=http)

    monkeypatch.setattr(cli, "hub_client", factory)

    def invoke(token: str, *args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as done:
            cli.main([*args, "--token", token] if token else list(args))
        out = capsys.readouterr()
        return int(done.value.code or 0), out.out, out.err

    return invoke


def test_approve_signs_locally_and_makes_the_version_installable(
    run: Any,
    tmp_path: Path,
    http: TestClient,
    admin_token: str,
    service: HubService,
    onnx_bytes: bytes,
) -> None:
    key = tmp_path / "ann.pem"
    code, out, _ = run("", "release-key", "new", str(key), "--json")
    assert code == 0 and (key.stat().st_mode & 0o777) == 0o600
    keyid = json.loads(out)["keyid"]
    code, out, err = run(admin_token, "release-key", "add", str(key), "--label", "ann", "--json")
    assert code == 0, err
    assert json.loads(out)["keyid"] == keyid
    register(http, admin_token, "iris", onnx_bytes)
    approver = service.create_token("approver", "ann", actor="admin:admin")
    code, out, err = run(approver, "approve", "iris", "1", "--key", str(key), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["state"], result["installable"]) == ("approved", True)
    code, out, _ = run(admin_token, "release-key", "list", "--json")
    assert [k["label"] for k in json.loads(out)] == ["ann"]


def test_approve_with_a_key_the_hub_does_not_know_fails_cleanly(
    run: Any, tmp_path: Path, http: TestClient, admin_token: str, onnx_bytes: bytes
) -> None:
    known, other = tmp_path / "known.pem", tmp_path / "other.pem"
    run("", "release-key", "new", str(known))
    run("", "release-key", "new", str(other))
    run(admin_token, "release-key", "add", str(known.with_name("known.pem.pub")))
    register(http, admin_token, "iris", onnx_bytes)
    code, _, err = run(admin_token, "approve", "iris", "1", "--key", str(other))
    assert code == 1 and "not a release key of this hub" in err and "Traceback" not in err
    code, _, err = run(admin_token, "approve", "iris", "1", "--key", str(tmp_path / "nope.pem"))
    assert code == 1 and "cannot read release key" in err


def test_model_revoke_reports_the_devices_moved_back(
    run: Any,
    http: TestClient,
    admin_token: str,
    service: HubService,
    onnx_bytes: bytes,
    onnx_bytes_v2: bytes,
) -> None:
    register(http, admin_token, "iris", onnx_bytes)
    register(http, admin_token, "iris", onnx_bytes_v2)
    service.add_device("cam-1", "plant", [], actor="admin:admin")
    service.deploy("iris", 1, ["cam-1"], actor="admin:admin")
    service.deploy("iris", 2, ["cam-1"], actor="admin:admin")
    code, _, err = run(admin_token, "model", "revoke", "iris", "2", "--reason", " ")
    assert code == 1 and "--reason" in err
    code, out, err = run(
        admin_token, "model", "revoke", "iris", "2", "--reason", "drift", "--ticket", "T-1"
    )
    assert code == 0, err
    assert "cam-1" in out and "previous" in out
