"""``modelfleet webhook add|list|test|deliveries|remove`` through the real CLI against a real
``hub serve`` whose webhook thread delivers an outbox event to a real loopback receiver
that checks the signature (issue 9)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelfleet.cli._errors import ExitCode
from modelfleet.demo import free_port, modelfleet_cmd, start
from modelfleet.hub import events
from modelfleet.hub.db import make_engine, make_sessionmaker
from tests.cli_run import ServedHub, healthy, run_cli
from tests.hub._webhook_receiver import receiver
from tests.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedHub, Path]]:
    root = tmp_path_factory.mktemp("cli-webhooks")
    assert run_cli("init", str(root / "hub")).returncode == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    args = ["--home", str(root / "hub"), "--port", str(port), "--webhook-interval-s", "0.1"]
    proc = start("hub", modelfleet_cmd("hub", "serve", *args), root, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # a real process: poll it
        while not healthy(url) and proc.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert healthy(url), proc.output()
        yield ServedHub(url, (root / "hub" / "admin.token").read_text().strip()), root / "hub"
    finally:
        proc.stop()


def cli_json(served: ServedHub, *args: str) -> Any:
    r = run_cli(*args, "--json", env=served.env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_event_reaches_a_subscribed_receiver_signed_and_is_in_the_log(
    hub: tuple[ServedHub, Path],
) -> None:
    served, home = hub
    with receiver() as rcv:
        created = cli_json(served, "webhook", "add", rcv.url, "--kind", "drift.state_changed")
        rcv.secret = created["secret"]
        hook_id = str(created["id"])
        listed = cli_json(served, "webhook", "list")
        assert [h["id"] for h in listed] == [created["id"]] and "secret" not in listed[0]

        test = cli_json(served, "webhook", "test", hook_id)
        assert test["ok"] and test["status_code"] == 204

        # A drift state change recorded in the hub's database, as the drift upkeep does.
        engine = make_engine(f"sqlite:///{home / 'hub.db'}")
        try:
            with make_sessionmaker(engine).begin() as s:
                event_id = events.record_event(
                    s,
                    events.DRIFT_STATE_CHANGED,
                    "iris/plant-a",
                    {"model": "iris", "site": "plant-a", "to": "drifting"},
                    datetime.now(UTC),
                )
        finally:
            engine.dispose()
        deadline = time.monotonic() + 30  # the hub's thread runs every 0.1 s
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = cli_json(served, "webhook", "deliveries", hook_id)
            if rows and rows[0]["state"] == "delivered":
                break
            time.sleep(0.2)
    assert rows and rows[0]["state"] == "delivered", rows
    assert rows[0]["event_id"] == event_id and rows[0]["log"][0]["status_code"] == 204
    assert [r.event_id for r in rcv.received][-1] == str(event_id)
    assert all(r.signature_ok for r in rcv.received), [r.problem for r in rcv.received]

    table = run_cli("webhook", "deliveries", hook_id, env=served.env())
    assert table.returncode == 0 and "drift.state_changed" in table.stdout
    removed = cli_json(served, "webhook", "remove", hook_id)
    assert removed["id"] == created["id"]
    assert cli_json(served, "webhook", "list") == []


def test_a_test_event_to_a_dead_url_exits_1_with_one_line(hub: tuple[ServedHub, Path]) -> None:
    served, _ = hub
    with receiver() as rcv:
        url = rcv.url  # closed once the block ends
    created = cli_json(served, "webhook", "add", url)
    r = run_cli("webhook", "test", str(created["id"]), env=served.env())
    assert r.returncode == ExitCode.ERROR
    assert "not delivered" in r.stderr
    cli_json(served, "webhook", "remove", str(created["id"]))


def test_pause_resume_and_redrive_from_the_cli(hub: tuple[ServedHub, Path]) -> None:
    served, _ = hub
    created = cli_json(served, "webhook", "add", "http://127.0.0.1:9/hook")
    hook_id = str(created["id"])
    assert cli_json(served, "webhook", "disable", hook_id)["enabled"] is False
    paused = run_cli("webhook", "list", env=served.env())
    assert paused.returncode == 0
    assert cli_json(served, "webhook", "enable", hook_id)["enabled"] is True
    assert cli_json(served, "webhook", "redrive", hook_id)["redriven"] == []
    nothing = run_cli("webhook", "redrive", hook_id, env=served.env())
    assert nothing.returncode == 0 and "No dead deliveries" in nothing.stdout
    cli_json(served, "webhook", "remove", hook_id)


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (("add", "ftp://example.com/x"), ExitCode.ERROR, "must be http(s)"),
        (("add", "http://127.0.0.1/x", "--kind", "nope"), ExitCode.ERROR, "unknown event kind"),
        (("remove", "424242"), ExitCode.NOT_FOUND, "no webhook 424242"),
        (("deliveries", "1", "--state", "lost"), ExitCode.ERROR, "state"),
        (("disable", "424242"), ExitCode.NOT_FOUND, "no webhook 424242"),
        (("redrive", "424242"), ExitCode.NOT_FOUND, "no webhook 424242"),
        (("redrive", "1", "--delivery", "0"), ExitCode.USAGE, "--delivery"),
    ],
)
def test_bad_webhook_commands_fail_with_one_clear_line(
    hub: tuple[ServedHub, Path], args: tuple[str, ...], code: int, text: str
) -> None:
    served, _ = hub
    r = run_cli("webhook", *args, env=served.env())
    assert_one_line_error(r, code, text)
