"""``modelfleet deploy`` of a version awaiting release approval (issue 10, ADR 0027
amendment), through the real CLI against a real ``hub serve``: refused up front with one
line that says what is missing, then accepted once the threshold is met; ``release-key
remove`` makes the key's next signature fail."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelfleet.cli._errors import ExitCode
from modelfleet.clock import ManualClock
from modelfleet.hub.service import init_home
from tests.cli_run import ServedHub, run_cli, served_hub
from tests.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.e2e


def _ok(hub: ServedHub, *args: str) -> str:
    r = run_cli(*args, env=hub.env())
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_deploy_of_a_pending_version_fails_with_one_line_until_it_is_approved(
    tmp_path: Path, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    home = tmp_path / "hub"
    init_home(home, ManualClock(datetime.now(UTC)))
    model, model2 = tmp_path / "m.onnx", tmp_path / "m2.onnx"
    key, other = tmp_path / "ann.pem", tmp_path / "bob.pem"
    model.write_bytes(onnx_bytes)
    model2.write_bytes(onnx_bytes_v2)
    with served_hub(home, tmp_path) as hub:
        keyid = json.loads(_ok(hub, "release-key", "new", str(key), "--json"))["keyid"]
        _ok(hub, "release-key", "add", f"{key}.pub", "--label", "ann")
        _ok(hub, "model", "register", "m", str(model))
        _ok(hub, "device", "add", "d1", "--site", "plant")

        refused = run_cli("deploy", "m", "1", "--devices", "d1", env=hub.env())
        assert_one_line_error(
            refused,
            ExitCode.ERROR,
            "m v1 awaits release approval: 0 of 1 release signatures "
            "(`modelfleet approve m 1 --key FILE`)",
        )
        device = json.loads(_ok(hub, "device", "show", "d1", "--json"))
        assert device["device"]["assignments"] == []

        _ok(hub, "approve", "m", "1", "--key", str(key))
        _ok(hub, "deploy", "m", "1", "--devices", "d1")

        _ok(hub, "model", "register", "m", str(model2))  # v2: pending
        last = run_cli("release-key", "remove", keyid, env=hub.env())
        assert_one_line_error(last, ExitCode.ERROR, "m/2 (needs 1) could never be approved")

        bob = json.loads(_ok(hub, "release-key", "new", str(other), "--json"))["keyid"]
        _ok(hub, "release-key", "add", f"{other}.pub", "--label", "bob")
        removed = _ok(hub, "release-key", "remove", keyid)
        assert "Removed release key" in removed and "ann" in removed
        gone = run_cli("approve", "m", "2", "--key", str(key), env=hub.env())
        assert_one_line_error(gone, ExitCode.ERROR, "not a release key of this hub")
        assert [k["keyid"] for k in json.loads(_ok(hub, "release-key", "list", "--json"))] == [bob]
