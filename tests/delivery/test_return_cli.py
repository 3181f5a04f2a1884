"""The return channel through the real ``modelfleet`` command (issue 11): ``agent key``,
``device key``, ``bundle report`` at the site and ``bundle ingest`` at the hub; every
refusal is one line, an exit code and no traceback, and stores nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from modelfleet.agent.hub_link import HttpHubLink
from modelfleet.agent.telemetry import BUFFER_FILE
from modelfleet.clock import SystemClock
from modelfleet.delivery.return_bundle import Envelope, pack_bundle, unpack_bundle
from modelfleet.errors import InvalidInputError
from modelfleet.hub import db
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService
from modelfleet.telemetry.buffer import read_stats
from tests.cli_run import run_cli, served_hub
from tests.delivery._return_site import SiteDevice, make_device

SITE = "plant-7"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "hub"
    r = run_cli("init", str(home), "--json")
    assert r.returncode == 0, r.stderr
    return home


def _service(home: Path) -> HubService:
    return HubService(load_hub_config(home), SystemClock())


def _add_devices(home: Path, ids: list[str], site: str = SITE) -> None:
    svc = _service(home)
    try:
        for d in ids:
            svc.add_device(d, site, [], actor="admin:admin")
    finally:
        svc.close()


def _counts(home: Path) -> dict[str, int]:
    svc = _service(home)
    try:
        with svc.context.read() as s:
            return {
                "records": int(s.scalar(select(func.count()).select_from(db.TelemetryRecord)) or 0),
                "samples": int(s.scalar(select(func.count()).select_from(db.ReviewSample)) or 0),
                "bundles": int(s.scalar(select(func.count()).select_from(db.ReturnBundle)) or 0),
            }
    finally:
        svc.close()


def _register_key(home: Path, device: SiteDevice, tmp_path: Path) -> None:
    pem = tmp_path / f"{device.device_id}.pub"
    r = run_cli("agent", "key", "--state-dir", str(device.state_dir), "--out", str(pem), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["created"] is False  # the agent made it already
    r = run_cli("device", "key", device.device_id, "--public-key", str(pem), "--home", str(home),
                "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "registered"


@pytest.fixture
def site(home: Path, tmp_path: Path) -> Iterator[list[SiteDevice]]:
    devices = [make_device(tmp_path / "site", f"edge-{i}", windows=3, samples=1) for i in range(3)]
    _add_devices(home, [d.device_id for d in devices])
    for d in devices:
        _register_key(home, d, tmp_path)
    yield devices


def _report(devices: list[SiteDevice], out: Path, *extra: str) -> Any:
    args = [a for d in devices for a in ("--agent-state", str(d.state_dir))]
    r = run_cli("bundle", "report", *args, "--site", SITE, "--out", str(out), "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_report_then_ingest_stores_every_record_once_and_leaves_the_buffers(
    home: Path, site: list[SiteDevice], tmp_path: Path
) -> None:
    out = tmp_path / "return.mfr"
    made = _report(site, out)
    assert [d["records"] for d in made["devices"]] == [5, 5, 5]
    assert [d["review_samples"] for d in made["devices"]] == [1, 1, 1]
    for d in site:  # read only: the records wait for the hub's acknowledgement online
        stats = read_stats(d.state_dir / BUFFER_FILE)
        assert stats is not None and stats["records"] == 5
    r = run_cli("bundle", "ingest", str(out), "--home", str(home), "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["status"] == "ingested" and first["stored"] == 15
    assert {d["report"] for d in first["devices"]} == {"recorded"}
    counts = _counts(home)
    assert counts == {"records": 15, "samples": 3, "bundles": 1}
    r = run_cli("bundle", "ingest", str(out), "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert "Already ingested" in r.stdout and "nothing changed" in r.stdout
    assert _counts(home) == counts


def test_tampered_bundle_is_refused_in_one_line_and_nothing_stored(
    home: Path, site: list[SiteDevice], tmp_path: Path
) -> None:
    out = tmp_path / "return.mfr"
    _report(site, out)
    bundle = unpack_bundle(out.read_bytes())
    env = bundle.envelopes[1]
    payload = orjson.loads(env.payload)
    payload["report"]["applied_serial"] = 99
    forged = Envelope(orjson.dumps(payload), env.keyid, env.signature)
    bad = tmp_path / "forged.mfr"
    bad.write_bytes(pack_bundle([bundle.envelopes[0], forged], bundle.site, bundle.created_at))
    r = run_cli("bundle", "ingest", str(bad), "--home", str(home))
    assert r.returncode == 1, r.stderr  # a trust failure: ExitCode.ERROR
    last = r.stderr.strip().splitlines()[-1]  # (the hub's own key warnings come before)
    assert last.startswith("error: envelope 1 (device 'edge-1')") and "does not verify" in last
    assert "Traceback" not in r.stderr
    assert _counts(home) == {"records": 0, "samples": 0, "bundles": 0}


@pytest.mark.slow  # 25-60 s of real CLI processes
def test_unknown_device_truncated_file_and_wrong_usage_are_refused(
    home: Path, site: list[SiteDevice], tmp_path: Path
) -> None:
    stranger = make_device(tmp_path / "other", "edge-x")
    out = tmp_path / "return.mfr"
    _report([*site, stranger], out)
    cases = {
        "unknown device": (out, 3, "unknown device"),
        "truncated": (tmp_path / "cut.mfr", 1, "truncated or corrupt"),
        "missing file": (tmp_path / "nope.mfr", 2, "cannot read"),
    }
    (tmp_path / "cut.mfr").write_bytes(out.read_bytes()[:-7])
    for name, (file, code, words) in cases.items():
        r = run_cli("bundle", "ingest", str(file), "--home", str(home), "--json")
        assert r.returncode == code, (name, r.stderr)
        error = json.loads(r.stderr.strip().splitlines()[-1])  # one JSON line with --json
        assert words in error["error"] and error["exit_code"] == code, (name, r.stderr)
        assert "Traceback" not in r.stderr
    assert _counts(home) == {"records": 0, "samples": 0, "bundles": 0}
    usage = [
        ("bundle", "report", "--out", str(tmp_path / "x")),  # no --agent-state
        ("bundle", "ingest", str(out)),  # no --home
        ("bundle", "report", "--agent-state", str(site[0].state_dir),
         "--agent-state", str(site[0].state_dir), "--out", str(tmp_path / "x")),  # twice
        ("device", "key", "edge-0", "--home", str(home)),  # no --public-key
    ]  # fmt: skip
    for args in usage:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip()
    assert not (tmp_path / "x").exists()


def test_state_folder_without_a_key_is_refused_and_nothing_written(
    home: Path, tmp_path: Path
) -> None:
    d = make_device(tmp_path / "site", "edge-0")
    d.key.path.unlink()
    out = tmp_path / "return.mfr"
    r = run_cli("bundle", "report", "--agent-state", str(d.state_dir), "--out", str(out))
    assert r.returncode == 1 and "no device key" in r.stderr and "agent key" in r.stderr
    assert not out.exists()


def test_the_agent_registers_its_key_with_its_own_token(tmp_path: Path, home: Path) -> None:
    (tmp_path / "logs").mkdir()
    with served_hub(home, tmp_path / "logs") as hub:
        r = run_cli("device", "add", "edge-1", "--site", SITE, "--json", env=hub.env())
        assert r.returncode == 0, r.stderr
        token = json.loads(r.stdout)["token"]
        d = make_device(tmp_path / "site", "edge-1")
        link = HttpHubLink(hub.url, token, attempts=1)
        try:
            assert link.put_device_key("edge-1", d.key.public_hex)["status"] == "registered"
            assert link.put_device_key("edge-1", d.key.public_hex)["status"] == "unchanged"
            with pytest.raises(InvalidInputError, match="409"):  # another key: admin only
                link.put_device_key("edge-1", "11" * 32)
        finally:
            link.close()
    out = tmp_path / "return.mfr"
    _report([d], out)
    r = run_cli("bundle", "ingest", str(out), "--home", str(home), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stored"] == 7


def _key_registered(home: Path, device_id: str) -> bool:
    svc = _service(home)
    try:
        with svc.context.read() as s:
            return s.get(db.DeviceKey, device_id) is not None
    finally:
        svc.close()


@pytest.mark.slow  # 25-60 s of real CLI processes
def test_a_real_agent_makes_its_key_sends_it_and_its_state_folder_round_trips(
    tmp_path: Path, home: Path
) -> None:
    from modelfleet.demo import free_port, modelfleet_cmd, start
    from tests.e2e.conftest import wait_for

    (tmp_path / "logs").mkdir()
    state = tmp_path / "edge-1"
    with served_hub(home, tmp_path / "logs") as hub:
        r = run_cli("device", "add", "edge-1", "--site", SITE, "--json", env=hub.env())
        assert r.returncode == 0, r.stderr
        agent = start(
            "agent",
            modelfleet_cmd(
                "agent", "run", "--hub", hub.url, "--device-id", "edge-1",
                "--token", json.loads(r.stdout)["token"], "--state-dir", str(state),
                "--port", str(free_port()), "--poll-interval", "0.2",
                "--trust-root", str(home / "trust-root.json"),
            ),
            tmp_path / "logs",
        )  # fmt: skip
        try:
            assert wait_for(lambda: (state / "state.json").exists()), agent.output()
            assert wait_for(lambda: _key_registered(home, "edge-1")), agent.output()
        finally:
            agent.stop()
    out = tmp_path / "return.mfr"
    made = _report([SiteDevice("edge-1", state, None)], out)  # type: ignore[arg-type]
    assert made["devices"][0]["report"] is True
    r = run_cli("bundle", "ingest", str(out), "--home", str(home), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["devices"][0]["device_id"] == "edge-1"
