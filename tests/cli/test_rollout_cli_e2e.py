"""The rollout CLI and ``deploy --wait`` against a real ``modelfleet hub serve`` process.

One hub for the module (init, serve with a fast controller, two versions of ``iris``, ten
enrolled devices at plant-a); each test makes its own rollouts. Devices are simulated by
posting their check-in reports with their own device tokens, as the agent does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelfleet.cli._errors import ExitCode
from modelfleet.client import HubClient
from modelfleet.demo import free_port, modelfleet_cmd, start
from tests.cli.conftest import Cli, on_terminal
from tests.cli.test_rollout_cli import one_line_error
from tests.cli_run import healthy, run_cli
from tests.helpers import logistic_onnx
from tests.hub._telemetry import batch, window

pytestmark = pytest.mark.e2e

DEVICES = [f"cam-{i:02d}" for i in range(10)]


@dataclass
class RealHub:
    url: str
    admin: str
    operator: str
    approver: str
    viewer: str
    device_tokens: dict[str, str]

    def env(self, token: str | None = None) -> dict[str, str]:
        return {"MODELFLEET_HUB": self.url, "MODELFLEET_TOKEN": token or self.operator}

    def client(self, token: str | None = None) -> HubClient:
        return HubClient(self.url, token or self.admin)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll a condition on another process (a real hub: there is no clock to inject)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def real_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHub]:
    root = tmp_path_factory.mktemp("rollout-e2e")
    assert run_cli("init", str(root / "hub")).returncode == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    proc = start(
        "hub",
        modelfleet_cmd(
            "hub",
            "serve",
            "--home",
            str(root / "hub"),
            "--port",
            str(port),
            "--controller-interval-s",
            "0.2",
        ),
        root,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: healthy(url), 60), proc.output()
        admin = (root / "hub" / "admin.token").read_text().strip()
        with HubClient(url, admin) as c:
            model, x = logistic_onnx(seed=1)
            for _ in range(2):
                c.register_version("iris", model, sample_input=x[:8])
            tokens = {d: c.add_device(d, site="plant-a", tags=["line1"])["token"] for d in DEVICES}
            yield RealHub(
                url,
                admin,
                c.create_token("operator", "alice"),
                c.create_token("approver", "bob"),
                c.create_token("viewer", "carol"),
                tokens,
            )
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def no_rollout_left_running(real_hub: RealHub) -> Iterator[None]:
    """A test that fails half-way must not leave a rollout holding the devices (the hub
    refuses a second unfinished rollout of a model on them) for the next ones."""
    yield
    with real_hub.client() as c:
        for r in c.list_rollouts():
            if r["state"] not in ("completed", "rolled_back", "aborted"):
                c.rollout_command(r["id"], "abort", reason="test cleanup")


def report_serving(hub: RealHub, device: str, version: int, **extra: Any) -> None:
    """Check in as ``device``: it applied its current desired state and serves ``version``."""
    with HubClient(hub.url, hub.device_tokens[device]) as c:
        serial = (c.get_device(device)["desired_state"] or {}).get("serial", 0)
        c.report(
            device,
            {
                "applied_serial": serial,
                "models": {
                    "iris": {
                        "active": {"version": version, "sha256": "x", "path": "p"},
                        "candidate": None,
                        "previous": None,
                        "mode": "full",
                        "share": 0.0,
                    }
                },
                **extra,
            },
        )


# -- rollouts -----------------------------------------------------------------------------

PLAN = """\
model: iris
version: 2
target: {sites: [plant-a], tags: [line1]}
stages:
  - {name: canary, percent: 10, soak: 1h}
  - {name: half, percent: 50, soak: 1h}
  - {name: full, percent: 100, soak: 0}
on_failure: pause
"""


def test_plan_file_to_a_running_rollout_and_through_its_commands(
    cli: Cli, real_hub: RealHub, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    created = cli("rollout", "create", "-f", str(plan), "--json", env=real_hub.env())
    assert created.code == 0, created.stderr
    view = json.loads(created.stdout)
    rid = view["id"]
    assert view["state"] == "running" and view["devices"]["total"] == len(DEVICES)

    # The controller starts the canary; with no telemetry its gates hold.
    def canary_started() -> bool:
        got = json.loads(cli("rollout", "status", rid, "--json", env=real_hub.env()).stdout)
        return bool(got["stage_index"] == 0 and got["devices"]["assigned"] >= 1)

    assert wait_until(canary_started)
    shown = cli("rollout", "status", rid, env=real_hub.env())
    assert shown.code == 0, shown.stderr
    assert "stage 1/3 canary · 10 %" in shown.stdout and "left" in shown.stdout
    assert "Devices" in shown.stdout and "rollout-create" in shown.stdout

    listed = cli("rollout", "list", "--model", "iris", env=real_hub.env())
    assert rid in listed.stdout and "1/3 canary" in listed.stdout

    paused = cli("rollout", "pause", rid, "--reason", "lunch", env=real_hub.env())
    assert paused.code == 0 and f"Paused {rid}" in paused.stdout, paused.stderr
    one_line_error(cli("rollout", "pause", rid, env=real_hub.env()), ExitCode.ERROR, "")
    assert cli("rollout", "resume", rid, env=real_hub.env()).code == 0
    promoted = cli("rollout", "promote", rid, "--json", env=real_hub.env())
    assert json.loads(promoted.stdout)["stage_index"] == 1, promoted.stderr
    rolled = cli("rollout", "rollback", rid, "--reason", "test", "--json", env=real_hub.env())
    assert json.loads(rolled.stdout)["state"] == "rolled_back", rolled.stderr
    history = json.loads(cli("rollout", "status", rid, "--json", env=real_hub.env()).stdout)
    actions = [h["action"] for h in history["history"]]
    for action in (
        "rollout-create",
        "rollout-stage",
        "rollout-pause",
        "rollout-resume",
        "rollout-promote",
        "rollout-rollback",
    ):
        assert action in actions, actions
    evidence = cli("rollout", "evidence", rid, "--json", env=real_hub.env())
    assert evidence.code == 0 and isinstance(json.loads(evidence.stdout), list)


def test_safety_classified_needs_a_ticket_and_a_second_person(cli: Cli, real_hub: RealHub) -> None:
    as_operator = cli("model", "set", "iris", "--safety-classified", env=real_hub.env())
    one_line_error(as_operator, ExitCode.AUTH, "")  # an operator may not change the model
    on = cli("model", "set", "iris", "--safety-classified", env=real_hub.env(real_hub.admin))
    assert on.code == 0 and "iris is safety-classified" in on.stdout, on.stderr
    try:
        no_ticket = cli("rollout", "create", "iris", "2", "--all", env=real_hub.env())
        one_line_error(no_ticket, ExitCode.ERROR, "change ticket")
        created = cli(
            "rollout", "create", "iris", "2", "--all", "--ticket", "CHG-7", env=real_hub.env()
        )
        assert created.code == 0 and "awaiting_approval" in created.stdout, created.stderr
        rid = next(w for w in created.stdout.split() if w.startswith("ro-"))
        by_operator = cli("rollout", "approve", rid, env=real_hub.env())
        one_line_error(by_operator, ExitCode.AUTH, "")
        approved = cli("rollout", "approve", rid, "--json", env=real_hub.env(real_hub.approver))
        body = json.loads(approved.stdout)
        assert body["state"] == "running" and body["approved_by"], approved.stderr
        one_line_error(cli("rollout", "abort", rid, env=real_hub.env(real_hub.viewer)), 4, "")
        assert cli("rollout", "abort", rid, env=real_hub.env()).code == 0
    finally:
        off = cli(
            "model", "set", "iris", "--no-safety-classified", env=real_hub.env(real_hub.admin)
        )
        assert off.code == 0, off.stderr


def post_windows(hub: RealHub, rid: str, devices: list[str], seq: int, canary_errors: int) -> None:
    """One telemetry window per device: the canary's with ``canary_errors`` 5xx of 200."""
    now = datetime.now(UTC) + timedelta(seconds=1)
    with hub.client() as c:
        for d in devices:
            canary = c.get_device(d)["assignments"][0]["rollout_id"] == rid
            record = window(
                seq,
                d,
                now,
                version="2" if canary else "1",
                rollout_id=rid if canary else None,
                ok=200,
                server_error=canary_errors if canary else 0,
                latencies=[0.020] * 150,
            )
            with HubClient(hub.url, hub.device_tokens[d]) as dc:
                dc.send_telemetry(d, batch(d, [record], now, buffer_id=f"b-{rid}"))


def test_status_shows_the_gates_the_controller_evaluated_on_telemetry(
    cli: Cli, real_hub: RealHub
) -> None:
    devices = ["cam-06", "cam-07", "cam-08", "cam-09"]
    with real_hub.client() as c:
        c.deploy("iris", 1, devices)
    args = ("iris", "2", "--device", ",".join(devices), "--stages", "25,100", "--soak", "1h")
    created = cli("rollout", "create", *args, "--json", env=real_hub.env())
    rid = json.loads(created.stdout)["id"]
    with real_hub.client() as c:
        assert wait_until(lambda: c.get_rollout(rid)["stage_index"] == 0)
    post_windows(real_hub, rid, devices, 1, canary_errors=1)
    with real_hub.client() as c:

        def passing() -> bool:
            # An evaluation may read the canary's windows before the control's: wait for
            # one that saw both.
            gates = c.get_rollout(rid)["gates"]
            return bool(gates) and all(g["verdict"] == "pass" for g in gates)

        assert wait_until(passing), c.get_rollout(rid)["gates"]
    shown = cli("rollout", "status", rid, env=real_hub.env())
    assert shown.code == 0, shown.stderr
    cells = [line.split("│") for line in shown.stdout.splitlines() if line.count("│") > 8]
    rows = {c[1].strip(): "│".join(c) for c in cells if c[1].strip()}
    assert set(rows) == {"error_rate", "latency_p99", "guard_rollbacks"}, shown.stdout
    assert "0.50 %" in rows["error_rate"] and "pass" in rows["error_rate"]  # 1 of 202 is 5xx
    assert "ms" in rows["latency_p99"] and "pass" in rows["latency_p99"], rows
    evidence = cli("rollout", "evidence", rid, env=real_hub.env())
    assert "error_rate pass, latency_p99 pass, guard_rollbacks pass" in evidence.stdout
    cli("rollout", "abort", rid, env=real_hub.env())


def test_watch_ends_with_exit_1_when_the_controller_rolls_a_bad_canary_back(
    real_hub: RealHub,
) -> None:
    devices = ["cam-06", "cam-07", "cam-08", "cam-09"]
    with real_hub.client() as c:
        c.deploy("iris", 1, devices)
        plan = {
            "model": "iris",
            "version": 2,
            "target": {"devices": devices},
            "stages": [
                {"name": "canary", "percent": 25, "soak": "1h"},
                {"name": "full", "percent": 100, "soak": 0},
            ],
        }
        rid = c.create_rollout(plan)["id"]
        assert wait_until(lambda: c.get_rollout(rid)["stage_index"] == 0)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfleet",
            "rollout",
            "status",
            rid,
            "--watch",
            "--interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")},
            **real_hub.env(),
            "COLUMNS": "200",
        },
    )
    shown: list[str] = []  # the watch's lines as it prints them
    out = proc.stdout
    assert out is not None
    reader = threading.Thread(target=lambda: shown.extend(iter(out.readline, "")), daemon=True)
    reader.start()
    try:
        post_windows(real_hub, rid, devices, 1, canary_errors=40)
        with real_hub.client() as c:

            def bad_once() -> bool:
                gates = {g["metric"]: g for g in c.get_rollout(rid)["gates"]}
                return gates.get("error_rate", {}).get("verdict") == "bad"

            assert wait_until(bad_once), c.get_rollout(rid)
        # The watch shows the first bad evaluation before the second window fails the gate
        # (on a loaded machine the watch can start late: wait for its line).
        assert wait_until(lambda: any("error_rate bad" in line for line in shown)), shown
        post_windows(real_hub, rid, devices, 2, canary_errors=40)  # the second in a row
        code = proc.wait(timeout=60)
        reader.join(10)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    assert code == ExitCode.ERROR, err
    assert err.startswith(f"error: rollout {rid} ended rolled_back: gate failed"), err
    lines = [line for line in shown if f" {rid} iris v2 " in line]
    assert "error_rate bad" in "".join(lines) and "error_rate fail" in lines[-1], shown


HUB_ERRORS = [
    ("unknown-rollout", ("rollout", "status", "ro-0000000000000000"), 3, "ro-0000000000000000"),
    ("unknown-rollout-command", ("rollout", "abort", "ro-0000000000000000"), 3, "ro-"),
    ("unknown-model", ("rollout", "create", "nosuch", "1", "--all"), 3, "nosuch"),
    ("unknown-version", ("rollout", "create", "iris", "9", "--all"), 3, "9"),
    ("unknown-device", ("rollout", "create", "iris", "2", "--device", "nosuch"), 3, "nosuch"),
]


@pytest.mark.parametrize(
    ("args", "code", "text"), [c[1:] for c in HUB_ERRORS], ids=[c[0] for c in HUB_ERRORS]
)
def test_the_hub_refusing_is_one_line_with_its_code(
    cli: Cli, real_hub: RealHub, args: tuple[str, ...], code: int, text: str
) -> None:
    one_line_error(cli(*args, env=real_hub.env()), code, text)
    as_json = cli(*args, "--json", env=real_hub.env())
    assert as_json.code == code and json.loads(as_json.stderr)["exit_code"] == code


def test_bad_token_is_exit_4(cli: Cli, real_hub: RealHub) -> None:
    one_line_error(cli("rollout", "list", env=real_hub.env("nope")), ExitCode.AUTH, "")


def test_watch_follows_until_aborted_by_someone_else(real_hub: RealHub) -> None:
    with real_hub.client(real_hub.operator) as c:
        rid = c.create_rollout({"model": "iris", "version": 2, "target": {"all": True}})["id"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfleet",
            "rollout",
            "status",
            rid,
            "--watch",
            "--interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")},
            **real_hub.env(),
            "COLUMNS": "200",
        },
    )
    try:
        assert proc.stdout is not None
        assert rid in proc.stdout.readline()
        with real_hub.client(real_hub.operator) as c:
            c.rollout_command(rid, "abort", reason="wrong model")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == ExitCode.ERROR, err
    assert err.startswith(f"error: rollout {rid} ended aborted: ") and "wrong model" in err
    assert "aborted" in out and "Traceback" not in err


# -- deploy --wait --------------------------------------------------------------------------


def start_wait(hub: RealHub, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelfleet", "deploy", "iris", *args, "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")},
            **hub.env(hub.admin),
            "COLUMNS": "200",
        },
    )


def assigned(hub: RealHub, device: str, version: int) -> bool:
    with hub.client() as c:
        return any(a["production"] == version for a in c.get_device(device)["assignments"])


def test_deploy_wait_returns_when_every_device_serves(real_hub: RealHub) -> None:
    devices = ["cam-00", "cam-01"]
    proc = start_wait(real_hub, "1", "--devices", ",".join(devices), "--timeout", "60s")
    try:
        for d in devices:
            assert wait_until(lambda d=d: assigned(real_hub, d, 1))
        report_serving(real_hub, "cam-00", 1)
        assert proc.stdout is not None
        seen = [proc.stdout.readline()]  # the deploy's table, then a line per change
        while seen[-1] and "1/2 devices serving" not in seen[-1]:
            seen.append(proc.stdout.readline())
        assert "1/2 devices serving" in seen[-1], seen
        assert proc.poll() is None, "must wait for the second device"
        report_serving(real_hub, "cam-01", 1)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "All 2 devices serve iris v1" in out


def test_deploy_wait_fails_at_once_when_a_device_rolls_back(real_hub: RealHub) -> None:
    for d in ("cam-02", "cam-03"):
        with real_hub.client() as c:
            c.deploy("iris", 1, [d])
        report_serving(real_hub, d, 1)
    proc = start_wait(real_hub, "2", "--devices", "cam-02,cam-03", "--timeout", "60s")
    try:
        assert wait_until(lambda: assigned(real_hub, "cam-02", 2))
        with real_hub.client() as c:
            serial = c.get_device("cam-02")["desired_state"]["serial"]
        event = {
            "id": "ev-cam-02-1",
            "at": "2026-12-02T16:00:00Z",
            "model": "iris",
            "kind": "production",
            "from_version": 2,
            "to_version": 1,
            "reason": "p99 over the SLO",
            "serial": serial,
        }
        report_serving(real_hub, "cam-02", 1, rollbacks=[event])
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == ExitCode.ERROR, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "cam-02 (rolled v2 back" in err and "will not serve iris v2" in err
    assert "cam-03" in out  # the laggards' table lists the one still pending too


def test_deploy_wait_times_out_naming_the_laggards(real_hub: RealHub) -> None:
    result = run_cli(
        "deploy",
        "iris",
        "1",
        "--devices",
        "cam-04,cam-05",
        "--wait",
        "--timeout",
        "2s",
        env=real_hub.env(real_hub.admin),
    )
    one_line_error(
        result, ExitCode.ERROR, "2 of 2 devices do not serve iris v1 after 2s", output=True
    )
    assert "cam-04 (has not reported yet)" in result.stderr
    as_json = run_cli(
        "deploy",
        "iris",
        "1",
        "--devices",
        "cam-04",
        "--wait",
        "--timeout",
        "1s",
        "--json",
        env=real_hub.env(real_hub.admin),
    )
    assert as_json.returncode == ExitCode.ERROR
    body = json.loads(as_json.stdout)
    assert body["wait"]["timed_out"] and body["wait"]["devices"][0]["state"] == "pending"
    assert json.loads(as_json.stderr)["kind"] == "error"


def test_deploy_wait_on_a_terminal_shows_a_progress_bar(real_hub: RealHub) -> None:
    args = ("deploy", "iris", "1", "--devices", "cam-04", "--wait", "--timeout", "2s")
    code, screen, err = on_terminal(*args, env=real_hub.env(real_hub.admin))
    assert code == ExitCode.ERROR and "cam-04 (has not reported yet)" in err, err
    assert "waiting for iris v1" in screen and "0/1" in screen, screen
    assert "\x1b[?25l" in screen, "the bar hides the cursor while it runs"
