"""Telemetry against a real ``modelfleet hub serve`` process (issue 7): the device commands
show the stream, a hub killed while a large batch is in flight stores it whole or not at
all, and ``hub serve`` runs on MODELFLEET_SIM_CLOCK."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from modelfleet.clock import ManualClock
from modelfleet.demo import free_port, modelfleet_cmd, start
from modelfleet.hub.service import init_home
from tests.cli_run import healthy, run_cli, served_hub
from tests.hub._telemetry import batch, event, window

pytestmark = pytest.mark.e2e


@pytest.fixture
def home(tmp_path: Path) -> Path:
    init_home(tmp_path / "hub", ManualClock(datetime.now(UTC)))
    return tmp_path / "hub"


def test_device_list_and_show_give_lag_buffered_and_recent_windows(
    home: Path, tmp_path: Path
) -> None:
    with served_hub(home, tmp_path) as hub:
        assert run_cli("device", "add", "cam-1", "--site", "plant", env=hub.env()).returncode == 0
        now = datetime.now(UTC)
        records = [window(i, "cam-1", now - timedelta(minutes=10 - i)) for i in range(1, 4)]
        records.append(event(4, "cam-1", now))
        doc = batch("cam-1", records, now, buffered=42, evicted_total=3)
        headers = {"Authorization": f"Bearer {hub.token}"}
        r = httpx.post(f"{hub.url}/api/v1/devices/cam-1/telemetry", json=doc, headers=headers)
        assert r.json()["stored"] == 4

        listed = run_cli("device", "list", env=hub.env())
        assert listed.returncode == 0, listed.stderr
        assert "telemetry lag" in listed.stdout and "42" in listed.stdout
        as_json = json.loads(run_cli("device", "list", "--json", env=hub.env()).stdout)
        assert as_json[0]["telemetry"]["buffered"] == 42

        shown = run_cli("device", "show", "cam-1", env=hub.env())
        assert shown.returncode == 0, shown.stderr
        assert "Recent telemetry" in shown.stdout and "switch" in shown.stdout
        data = json.loads(run_cli("device", "show", "cam-1", "--json", env=hub.env()).stdout)
        assert [w["seq"] for w in data["windows"]] == [4, 3, 2, 1]
        assert data["device"]["telemetry"]["evicted_total"] == 3

        missing = run_cli("device", "show", "ghost", "--json", env=hub.env())
        assert missing.returncode == 3
        err = json.loads(missing.stderr)
        assert err["kind"] == "not_found" and "ghost" in err["error"]


def test_a_hub_killed_mid_batch_stores_it_whole_or_not_at_all(home: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    doc = batch("cam-1", [window(i, "cam-1", now) for i in range(1, 5001)], now)
    body = orjson.dumps(doc)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    args = modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port))
    proc = start("hub", args, tmp_path, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60  # a real process: poll it
        while not healthy(url) and time.monotonic() < deadline:
            time.sleep(0.1)
        token = (home / "admin.token").read_text().strip()
        env_cli = {"MODELFLEET_HUB": url, "MODELFLEET_TOKEN": token}
        assert run_cli("device", "add", "cam-1", env=env_cli).returncode == 0
        headers = {"Authorization": f"Bearer {token}"}
        outcome: list[object] = []

        def send() -> None:
            try:
                outcome.append(
                    httpx.post(
                        f"{url}/api/v1/devices/cam-1/telemetry",
                        content=body,
                        headers=headers,
                        timeout=30,
                    )
                )
            except httpx.HTTPError as e:
                outcome.append(e)

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.15)  # a real process: the batch is being parsed or inserted by now
        proc.popen.kill()  # SIGKILL: no shutdown, nothing open is committed
        sender.join(timeout=30)
    finally:
        proc.stop()
    with served_hub(home, tmp_path) as hub:
        headers = {"Authorization": f"Bearer {hub.token}"}
        url = f"{hub.url}/api/v1/devices/cam-1/telemetry"
        first = httpx.post(url, content=body, headers=headers, timeout=60).json()
        assert first["stored"] in (0, 5000) and first["stored"] + first["duplicates"] == 5000
        again = httpx.post(url, content=body, headers=headers, timeout=60).json()
        assert (again["stored"], again["duplicates"]) == (0, 5000)
        summary = httpx.get(
            f"{hub.url}/api/v1/telemetry/summary",
            params={"since": (now - timedelta(hours=1)).isoformat()},
            headers=headers,
        ).json()
        assert summary["windows"] == 5000


def test_hub_serve_runs_on_the_sim_clock(home: Path, tmp_path: Path) -> None:
    origin = time.time()
    env = {"MODELFLEET_SIM_CLOCK": f"{origin}:5000"}
    with served_hub(home, tmp_path, env=env) as hub:
        headers = {"Authorization": f"Bearer {hub.token}"}
        assert run_cli("device", "add", "cam-1", env=hub.env()).returncode == 0
        device = httpx.get(f"{hub.url}/api/v1/devices/cam-1", headers=headers).json()
    created = datetime.fromisoformat(device["created_at"]).timestamp()
    assert created - time.time() > 3600  # thousands of simulated seconds per real second
