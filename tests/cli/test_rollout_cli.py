"""``modelfleet rollout …`` and ``model set`` against a fake hub that follows the contract.

What is checked is what the CLI does: the request it sends for a plan file or options,
what it prints, and how it ends (one line, the exit code of ``cli/_errors.py``, never a
traceback). The fake hands out scripted views (gate values, a rollout moving through its stages),
which a real hub would only reach with devices and telemetry. The hub's own decisions are
tested in tests/hub; the CLI against a real ``hub serve`` in ``test_rollout_cli_e2e.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelfleet.cli._errors import ExitCode
from modelfleet.demo import free_port
from tests.cli.conftest import Cli, Served, on_terminal
from tests.cli_run import run_cli

PLAN = """\
model: iris
version: 2
target: {sites: [plant-a], tags: [line1]}
stages:
  - {name: canary, percent: 1, soak: 30m}
  - {name: full, percent: 100, soak: 0}
gates:
  - {metric: error_rate, max_delta: 0.01, min_devices: 3}
change: {window: {tz: Europe/Berlin, days: [mon, tue], start: 06:00, end: 14:00}}
on_failure: pause
"""


def write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(result: Any, code: int, text: str, *, output: bool = False) -> None:
    """``result`` (a subprocess's or an in-process run's) failed with ``code`` and one
    ``error: …`` line containing ``text``, and nothing on stdout unless ``output``."""
    assert "Traceback" not in result.stderr, result.stderr
    got = result.returncode if isinstance(result, subprocess.CompletedProcess) else result.code
    assert got == code, (got, result.stderr)
    assert output or result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert text in lines[0], lines[0]


# -- create ---------------------------------------------------------------------------------


def test_plan_file_is_sent_as_written_with_clock_times_kept(
    cli: Cli, fake_hub: Served, tmp_path: Path
) -> None:
    result = cli("rollout", "create", "-f", str(write(tmp_path, PLAN)), env=fake_hub.env())
    assert result.code == 0, result.stderr
    assert "Created rollout ro-0001" in result.stdout
    sent = fake_hub.fake.requests[-1][2]
    assert sent["target"] == {"sites": ["plant-a"], "tags": ["line1"]}
    # YAML 1.1 would have sent 360 and 840 (base 60): the change window must stay readable.
    assert sent["change"]["window"]["start"] == "06:00"
    assert sent["change"]["window"]["end"] == "14:00"
    assert sent["stages"][0] == {"name": "canary", "percent": 1, "soak": "30m"}


def test_ticket_option_overrides_the_plan_file(cli: Cli, fake_hub: Served, tmp_path: Path) -> None:
    plan = write(tmp_path, PLAN + "")
    result = cli(
        "rollout", "create", "-f", str(plan), "--ticket", "CHG-9", "--json", env=fake_hub.env()
    )
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["ticket"] == "CHG-9"
    sent = fake_hub.fake.requests[-1][2]
    assert sent["change"]["ticket"] == "CHG-9" and sent["change"]["window"]["tz"] == "Europe/Berlin"


def test_plan_from_standard_input(fake_hub: Served, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "rollout", "create", "-f", "-", "--json"],
        input=PLAN,
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), **fake_hub.env()},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "iris"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}


def test_plain_create_builds_the_plan_from_options(cli: Cli, fake_hub: Served) -> None:
    result = cli(
        "rollout",
        "create",
        "iris",
        "2",
        "--site",
        "plant-a",
        "--tag",
        "line1,cam",
        "--soak",
        "30m",
        "--on-failure",
        "pause",
        "--ticket",
        "CHG-1",
        env=fake_hub.env(),
    )
    assert result.code == 0, result.stderr
    assert fake_hub.fake.requests[-1][2] == {
        "model": "iris",
        "version": 2,
        "target": {"sites": ["plant-a"], "tags": ["line1", "cam"]},
        "stages": [
            {"name": "canary", "percent": 1, "soak": 1800.0},
            {"name": "early", "percent": 9, "soak": 1800.0},
            {"name": "stable", "percent": 90, "soak": 1800.0},
            {"name": "full", "percent": 100, "soak": 0},
        ],
        "on_failure": "pause",
        "change": {"ticket": "CHG-1"},
    }


def test_plain_create_with_all_leaves_stages_to_the_hub(cli: Cli, fake_hub: Served) -> None:
    assert cli("rollout", "create", "iris", "3", "--all", env=fake_hub.env()).code == 0
    assert fake_hub.fake.requests[-1][2] == {"model": "iris", "version": 3, "target": {"all": True}}


# -- status and commands ------------------------------------------------------------------


def test_status_shows_stage_devices_gates_and_soak(cli: Cli, fake_hub: Served) -> None:
    cli("rollout", "create", "iris", "2", "--all", env=fake_hub.env())
    fake_hub.fake.script("ro-0001", [GATED])
    result = cli("rollout", "status", "ro-0001", env=fake_hub.env())
    assert result.code == 0, result.stderr
    out = result.stdout
    for text in (
        "stage 1/4 canary · 1 %",
        "30m left",
        "error_rate",
        "0.40 %",
        "≤ 1.40 %",
        "latency_p99",
        "43.0 ms",
        "≤ 1.2× control",
        "hold",
        "too few samples",
        "waiting",
    ):
        assert text in out, (text, out)
    as_json = json.loads(cli("rollout", "status", "ro-0001", "--json", env=fake_hub.env()).stdout)
    assert as_json["gates"][0]["metric"] == "error_rate"


GATED: dict[str, Any] = {
    "stage": {
        "index": 0,
        "name": "canary",
        "percent": 1,
        "mode": "full",
        "share": 0.0,
        "started_at": "2026-12-02T15:00:00Z",
        "soak_s": 3600.0,
        "soak_left_s": 1800.0,
    },
    "devices": {
        "total": 10,
        "waiting": 9,
        "assigned": 1,
        "running": 1,
        "rolled_back": 0,
        "offline": 0,
    },
    "plan": {"gates": [{"metric": "latency_p99", "max_ratio": 1.2}]},
    "gates": [
        {
            "metric": "error_rate",
            "value": 0.004,
            "control": 0.004,
            "limit": 0.014,
            "devices": 1,
            "samples": 40,
            "verdict": "hold",
            "streak": 0,
            "reason": "too few samples (40 < 100)",
        },
        {
            "metric": "latency_p99",
            "value": 0.043,
            "control": 0.040,
            "limit": None,
            "devices": 1,
            "samples": 40,
            "verdict": "pass",
            "streak": 0,
            "reason": "",
        },
    ],
}


@pytest.mark.parametrize(
    ("command", "state", "past"),
    [
        ("pause", "paused", "Paused"),
        ("promote", "running", "Promoted"),
        ("rollback", "rolled_back", "Rolled back"),
        ("abort", "aborted", "Aborted"),
    ],
)
def test_command_sends_reason_and_prints_the_new_state(
    cli: Cli, fake_hub: Served, command: str, state: str, past: str
) -> None:
    cli("rollout", "create", "iris", "2", "--all", env=fake_hub.env())
    result = cli(
        "rollout",
        command,
        "ro-0001",
        "--reason",
        "looks bad",
        "--ticket",
        "CHG-2",
        env=fake_hub.env(),
    )
    assert result.code == 0, result.stderr
    assert f"{past} ro-0001" in result.stdout and state in result.stdout
    path, body = fake_hub.fake.requests[-1][1:]
    assert path == f"/api/v1/rollouts/ro-0001/{command}"
    assert body == {"reason": "looks bad", "ticket": "CHG-2"}


def test_an_id_with_a_slash_cannot_reach_another_endpoint(cli: Cli, fake_hub: Served) -> None:
    cli("rollout", "create", "iris", "2", "--all", env=fake_hub.env())
    # Quoting would not do: the server decodes %2F before routing.
    result = cli("rollout", "status", "ro-0001/evaluations", env=fake_hub.env())
    one_line_error(result, ExitCode.ERROR, "not a rollout id")
    assert fake_hub.fake.requests[-1][1] == "/api/v1/rollouts"  # nothing else was sent


def test_evidence_lists_the_stored_evaluations(cli: Cli, fake_hub: Served) -> None:
    cli("rollout", "create", "iris", "2", "--all", env=fake_hub.env())
    result = cli("rollout", "evidence", "ro-0001", env=fake_hub.env())
    assert result.code == 0 and "error_rate hold" in result.stdout, result.stdout


# -- watch --------------------------------------------------------------------------------

PROGRESS = [
    {**GATED},
    {**GATED, "gates": [{**GATED["gates"][0], "samples": 400, "verdict": "pass", "reason": ""}]},
    {
        **GATED,
        "stage_index": 1,
        "stage": {**GATED["stage"], "index": 1, "name": "early", "percent": 9},
    },
    {
        **GATED,
        "state": "completed",
        "stage": {**GATED["stage"], "index": 3, "name": "full", "percent": 100},
    },
]


def test_watch_prints_each_change_and_exits_0_when_completed(cli: Cli, fake_hub: Served) -> None:
    cli("rollout", "create", "iris", "2", "--all", env=fake_hub.env())
    fake_hub.fake.script("ro-0001", PROGRESS)
    result = cli("rollout", "status", "ro-0001", "--watch", "--interval", "0.2", env=fake_hub.env())
    assert result.code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " ro-0001 iris v2 " in line]
    assert len(lines) == 4, result.stdout
    assert "error_rate hold" in lines[0] and "error_rate pass" in lines[1]
    assert "stage 2/4 early" in lines[2] and "completed" in lines[3]


def test_watch_json_is_one_object_per_change(cli: Cli, fake_hub: Served) -> None:
    cli("rollout", "create", "iris", "2", "--all", env=fake_hub.env())
    fake_hub.fake.script("ro-0001", PROGRESS)
    result = cli(
        "rollout", "status", "ro-0001", "--watch", "--interval", "0.2", "--json", env=fake_hub.env()
    )
    views = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["state"] for v in views] == ["running", "running", "running", "completed"]


def test_watch_of_a_rolled_back_rollout_exits_1_with_the_reason(cli: Cli, fake_hub: Served) -> None:
    cli("rollout", "create", "iris", "2", "--all", env=fake_hub.env())
    fake_hub.fake.script(
        "ro-0001", [GATED, {**GATED, "state": "rolled_back", "reason": "error_rate failed"}]
    )
    result = cli("rollout", "status", "ro-0001", "-w", "--interval", "0.2", env=fake_hub.env())
    message = "rollout ro-0001 ended rolled_back: error_rate failed"
    one_line_error(result, ExitCode.ERROR, message, output=True)
    assert "ro-0001 iris v2 rolled_back · " in result.stdout


@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_watch_rides_out_a_hub_blip_with_a_warning_on_stderr(
    cli: Cli, fake_hub: Served, json_out: bool
) -> None:
    cli("rollout", "create", "iris", "2", "--all", env=fake_hub.env())
    fake_hub.fake.script("ro-0001", [PROGRESS[0], {"http_status": 503}, PROGRESS[-1]])
    args = ("rollout", "status", "ro-0001", "--watch", "--interval", "0.2")
    result = cli(*args, *(["--json"] if json_out else []), env=fake_hub.env())
    assert result.code == 0, result.stderr
    [warning] = result.stderr.splitlines()
    if json_out:
        assert "hub unreachable, retrying" in json.loads(warning)["warning"]
        assert [json.loads(v)["state"] for v in result.stdout.splitlines()] == [
            "running",
            "completed",
        ]
    else:
        assert warning.startswith("warning: hub unreachable, retrying: upstream unavailable")
        assert "completed" in result.stdout


def test_watch_on_a_terminal_redraws_in_place_until_the_end(fake_hub: Served) -> None:
    headers = {"Authorization": "Bearer op-token"}
    body = {"model": "iris", "version": 2, "target": {"all": True}}
    httpx.post(f"{fake_hub.url}/api/v1/rollouts", json=body, headers=headers)
    fake_hub.fake.script("ro-0001", PROGRESS)
    code, text, err = on_terminal(
        "rollout", "status", "ro-0001", "-w", "--interval", "0.2", env=fake_hub.env()
    )
    assert code == 0, err
    assert "\x1b[?25l" in text and "\x1b[1A" in text, "a live view hides the cursor, moves up"
    assert " ro-0001 iris v2 running · " not in text, "no log lines on a terminal"
    assert "completed" in text and "early" in text and err == ""


def test_ctrl_c_stops_watching_quietly_with_exit_0(fake_hub: Served) -> None:
    headers = {"Authorization": "Bearer op-token"}
    httpx.post(
        f"{fake_hub.url}/api/v1/rollouts",
        json={"model": "iris", "version": 2, "target": {"all": True}},
        headers=headers,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfleet", "rollout", "status", "ro-0001", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_clean_env(), **fake_hub.env()},
        # As at a terminal: a suite started as a background job (`make test &`, CI) hands
        # its children SIGINT ignored, and Python then installs no KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first view is out: the watch loop is running
        assert "ro-0001" in first, first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err == "", err


# -- errors: one line, the right code ----------------------------------------------------

DEAD = f"http://127.0.0.1:{free_port()}"

FILE_CASES = [
    ("missing-file", None, 2, "no such file"),
    ("bad-yaml", "model: iris\nstages: [1, 2\n", 2, "not valid YAML"),
    ("duplicate-key", "model: iris\nmodel: other\n", 2, "found the key 'model' twice"),
    ("not-a-mapping", "- just\n- a list\n", 2, "a rollout plan is a mapping"),
    ("empty-file", "", 2, "not empty"),
]


@pytest.mark.parametrize(
    ("text", "code", "message"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_a_bad_plan_file_is_one_line(
    cli: Cli, tmp_path: Path, text: str | None, code: int, message: str
) -> None:
    path = tmp_path / "plan.yaml"
    if text is not None:
        path.write_text(text)
    # No hub needed: the file is refused before anything is sent.
    result = cli("rollout", "create", "-f", str(path), "--token", "t", "--hub", DEAD)
    one_line_error(result, code, message)


PLAN_CASES = [
    ("unknown-key", PLAN + "bogus: 1\n", "bogus: unknown key"),
    ("percents-not-rising", PLAN.replace("percent: 100", "percent: 0.5"), "stages[1].percent"),
    ("unknown-time-zone", PLAN.replace("Europe/Berlin", "Mars/Olympus"), "change.window.tz"),
    ("bad-soak", PLAN.replace("soak: 30m", "soak: soon"), "stages[0].soak"),
]


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in PLAN_CASES], ids=[c[0] for c in PLAN_CASES]
)
def test_a_wrong_plan_is_refused_before_anything_is_sent(
    cli: Cli, fake_hub: Served, tmp_path: Path, text: str, message: str
) -> None:
    plan = write(tmp_path, text)
    result = cli("rollout", "create", "-f", str(plan), env=fake_hub.env())
    one_line_error(result, ExitCode.ERROR, f"{plan}: {message}")
    assert fake_hub.fake.requests == []


def test_dry_run_checks_and_shows_the_plan_without_a_hub(cli: Cli, tmp_path: Path) -> None:
    plan = write(tmp_path, PLAN)
    shown = cli("rollout", "create", "-f", str(plan), "--dry-run", "--hub", DEAD)
    assert shown.code == 0, shown.stderr
    assert "≤ control + 1.00 %" in shown.stdout and "30m" in shown.stdout
    parsed = json.loads(cli("rollout", "create", "-f", str(plan), "--dry-run", "--json").stdout)
    assert parsed["change"]["window"]["end"] == "14:00" and parsed["on_failure"] == "pause"


USAGE_CASES = [
    ("mistyped-command", ("rollout", "stauts", "ro-1"), "No such command 'stauts'"),
    ("no-plan", ("rollout", "create"), "give -f PLAN, or MODEL VERSION"),
    ("plan-and-options", ("rollout", "create", "iris", "2", "-f", "p.yaml"), "not both"),
    ("no-target", ("rollout", "create", "iris", "2"), "name the target"),
    ("all-and-filter", ("rollout", "create", "iris", "2", "--all", "--site", "a"), "--all takes"),
    ("bad-soak", ("rollout", "create", "iris", "2", "--all", "--soak", "soon"), "--soak"),
    ("bad-stages", ("rollout", "create", "iris", "2", "--all", "--stages", "1,x"), "--stages"),
    ("bad-policy", ("rollout", "create", "iris", "2", "--all", "--on-failure", "cry"), "pause"),
    ("status-without-id", ("rollout", "status"), "Missing argument 'ID'"),
    ("unknown-state", ("rollout", "list", "--state", "bogus"), "'bogus' is not one of"),
    ("model-set-nothing", ("model", "set", "iris"), "nothing to set"),
    ("timeout-without-wait", ("deploy", "iris", "1", "--all", "--timeout", "1m"), "--wait"),
    ("bad-timeout", ("deploy", "iris", "1", "--all", "--wait", "--timeout", "1y"), "--timeout"),
]


@pytest.mark.parametrize(
    ("args", "message"), [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES]
)
def test_wrong_usage_is_one_line_exit_2(cli: Cli, args: tuple[str, ...], message: str) -> None:
    one_line_error(cli(*args, "--token", "t", "--hub", DEAD), ExitCode.USAGE, message)
    as_json = cli(*args, "--token", "t", "--hub", DEAD, "--json")
    assert as_json.stdout == "" and json.loads(as_json.stderr)["kind"] == "usage"


@pytest.mark.parametrize(
    "args",
    [
        ("rollout", "list"),
        ("rollout", "status", "ro-1", "--watch"),
        ("model", "set", "iris", "--safety-classified"),
    ],
    ids=["list", "watch", "model-set"],
)
def test_hub_down_is_exit_5_at_once(cli: Cli, args: tuple[str, ...]) -> None:
    one_line_error(
        cli(*args, "--token", "t", "--hub", DEAD), ExitCode.UNREACHABLE, "cannot reach the hub"
    )


# The same through a real process: the entry point, not only main(), prints no traceback.
PROCESS_CASES = [
    (("rollout", "stauts"), 2, "No such command 'stauts'"),
    (("rollout", "create", "-f", "/nonexistent/plan.yaml", "--token", "t"), 2, "no such file"),
    (("rollout", "list", "--token", "t", "--hub", DEAD), 5, "cannot reach the hub"),
]


@pytest.mark.parametrize(
    ("args", "code", "message"), PROCESS_CASES, ids=["mistyped", "missing-file", "hub-down"]
)
def test_errors_of_the_real_process(args: tuple[str, ...], code: int, message: str) -> None:
    one_line_error(run_cli(*args), code, message)


def test_bad_yaml_through_the_real_process(tmp_path: Path) -> None:
    plan = write(tmp_path, "model: iris\n  version: 2\n")
    one_line_error(run_cli("rollout", "create", "-f", str(plan), "--token", "t"), 2, "line 2")
