"""``modelfleet drift overrides`` through the real CLI against a real ``hub serve`` (ADR
0040): the table shows each site's state, rate and baseline, ``--json`` the hub's answer,
filters narrow it, and wrong usage is one line on stderr with exit 2, no traceback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelfleet.clock import ManualClock
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home
from tests.cli_run import run_cli, served_hub
from tests.hub._overrides import send_overrides
from tests.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.e2e


def _fill(home: Path) -> None:
    """Twelve closed hours, stepped in-process on a clock that ends at the real time:
    plant-a's rate rises from 5 % to 30 %, plant-b's stays at 5 %."""
    now = datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=13)
    clock = ManualClock(start)
    service = HubService(load_hub_config(home), clock)
    try:
        service.add_device("cam-a", "plant-a", [], actor="admin:admin")
        service.add_device("cam-b", "plant-b", [], actor="admin:admin")
        rates = [0.05] * 6 + [0.1, 0.2, 0.3, 0.3, 0.3, 0.3]
        for seq, rate in enumerate(rates, start=1):
            closed = clock.now() + timedelta(minutes=30)
            send_overrides(service, "cam-a", seq, closed, int(200 * rate), 200 - int(200 * rate))
            send_overrides(service, "cam-b", seq, closed, 10, 190)
            clock.advance(3600)
            service.advance_overrides()
        clock.advance((now - clock.now()).total_seconds())
        service.advance_overrides()  # every hour sent is closed and stepped
    finally:
        service.close()


def test_drift_overrides_through_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "hub"
    init_home(home, ManualClock(datetime.now(UTC)))
    _fill(home)
    with served_hub(home, tmp_path) as hub:
        shown = run_cli("drift", "overrides", env=hub.env())
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        assert "Override-rate states" in out
        cells = [
            [c.strip() for c in line.split("│")[1:-1]]
            for line in out.splitlines()
            if "iris" in line
        ]
        lines = {c[1]: " | ".join(c) for c in cells}
        assert set(lines) == {"plant-a", "plant-b"}, out
        assert "drifting" in lines["plant-a"] and "30.0 %" in lines["plant-a"]
        assert "stable" in lines["plant-b"] and "5.0 %" in lines["plant-b"]
        assert "(expected)" in lines["plant-b"] and "12/0" in lines["plant-b"]

        data = json.loads(
            run_cli(
                "drift",
                "overrides",
                "--model",
                "iris",
                "--site",
                "plant-a",
                "--json",
                env=hub.env(),
            ).stdout
        )
        (state,) = data
        assert state["state"] == "drifting" and state["last_rate"] == 0.3
        assert state["baseline"]["source"] == "expected" and state["hours"] == 12
        other = run_cli("drift", "overrides", "--model", "ghost", "--json", env=hub.env())
        assert other.returncode == 0 and json.loads(other.stdout) == []

        assert_one_line_error(
            run_cli("drift", "overrides", "--site", "", env=hub.env()), 2, "--site"
        )
        assert_one_line_error(
            run_cli("drift", "overrides", "--window", "2h", env=hub.env()), 2, "--window"
        )
        assert_one_line_error(
            run_cli("drift", "overrides", "--model", "m" * 300, env=hub.env()), 2, "--model"
        )
