"""``modelfleet sim`` as users run it, against a real hub."""

from __future__ import annotations

import json

import pytest

from tests.cli_run import run_cli
from tests.sim.conftest import Hub

pytestmark = pytest.mark.e2e


def test_the_command_runs_a_fleet_and_prints_a_json_summary(hub: Hub) -> None:
    result = run_cli(
        "sim", "--hub", hub.url, "--devices", "12", "--prefix", "cli", "--virtual",
        "--duration", "5m", "--fault", "version=1:latency_x=2", "--offline", "0.5", "--json",
        env={"MODELFLEET_TOKEN": hub.token},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["devices"] == 12 and summary["errors"] == 0
    assert summary["checkins"] > 0 and summary["serving"] == {}  # nothing deployed to them
    assert summary["faults"] == [
        "version=1:latency_x=2",
        "fraction=0.5:offline_for=2h:offline_at=0",
    ]
    assert summary["offline_ticks"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--fault", "version=2"), "names no effect"),
        (("--offline", "1.5"), "share of the devices"),
        (("--duration", "soon"), "is not a duration"),
        (("--devices", "0"), "between 1 and 100,000"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    hub: Hub, args: tuple[str, ...], message: str
) -> None:
    result = run_cli("sim", "--hub", hub.url, "--token", hub.token, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_hub_that_is_not_there_exits_unreachable() -> None:
    result = run_cli("sim", "--hub", "http://127.0.0.1:9", "--token", "x", "--devices", "1")
    assert result.returncode == 5, result.stderr
    assert "cannot reach the hub" in result.stderr
