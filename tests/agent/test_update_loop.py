"""Check-ins: sent on change, on request and as a heartbeat — not on every poll."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from modelfleet.agent.hub_link import check_identity
from modelfleet.agent.update_loop import IdentityCheck, Reporter, UpdateLoop
from modelfleet.agent.updater import Updater
from modelfleet.backoff import BackoffPolicy, jittered_interval
from modelfleet.clock import ManualClock
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.host import ModelHost
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx


def test_checkins_only_on_change_request_or_heartbeat(tmp_path: Path) -> None:
    clock = ManualClock()
    updater = Updater("dev-1", tmp_path, None, ModelHost(), clock)
    sent: list[dict[str, Any]] = []
    loop = UpdateLoop(updater, interval=1.0, reporter=sent.append, heartbeat=60.0)
    loop._report()  # the first check-in always goes
    for _ in range(10):
        clock.advance(1)
        updater.state.last_check = f"t{clock.monotonic()}"  # volatile: not a change
        loop._report()
    assert len(sent) == 1
    updater.state.last_error = "hub unreachable"
    loop._report()
    assert len(sent) == 2
    loop.report_soon()
    loop._report()
    assert len(sent) == 3
    clock.advance(61)
    loop._report()
    assert len(sent) == 4


# -- polling, backoff, identity, rollbacks acknowledged, supersede ------------------------


def _loop(
    tmp_path: Path,
    source: MemorySource,
    reporter: Reporter | None = None,
    identity: IdentityCheck | None = None,
) -> tuple[UpdateLoop, Updater, ModelHost]:
    host = ModelHost()
    updater = Updater("dev-1", tmp_path, source, host, ManualClock())
    loop = UpdateLoop(
        updater,
        interval=10.0,
        reporter=reporter,
        backoff=BackoffPolicy(base_s=10.0, cap_s=80.0),
        rand=lambda: 0.5,
        identity=identity,
    )
    return loop, updater, host


def test_hub_outage_backs_off_exponentially_with_jitter_up_to_the_cap(tmp_path: Path) -> None:
    source = MemorySource()
    source.offline = True
    loop, _, _ = _loop(tmp_path, source)
    # full jitter: uniform in [0, min(cap, base * 2^n)]; the fixed draw 0.5 takes the middle
    assert [loop.tick() for _ in range(6)] == [5.0, 10.0, 20.0, 40.0, 40.0, 40.0]
    source.offline = False
    assert loop.tick() == 10.0  # routine polls again: interval * (0.8 + 0.4 * 0.5)


def test_routine_polling_jitter_spreads_the_interval() -> None:
    assert jittered_interval(10.0, lambda: 0.0) == 8.0
    assert jittered_interval(10.0, lambda: 0.999) == pytest.approx(12.0, abs=0.01)


def test_hub_lost_and_regained_are_logged_once_each_and_idle_polls_stay_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = MemorySource()
    source.assign("dev-1", source.publish("m", 1, logistic_onnx()[0]))
    loop, _, _ = _loop(tmp_path, source)
    loop.tick()
    assert loop.wait_idle(30)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="modelfleet"):
        for _ in range(3):
            loop.tick()  # idle: nothing at info
        assert [r.getMessage() for r in caplog.records] == []
        source.offline = True
        for _ in range(3):
            loop.tick()
        source.offline = False
        for _ in range(3):
            loop.tick()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "hub unreachable, serving what is installed: hub unreachable (test)"),
        ("INFO", "hub reachable again"),
    ]


def test_rollbacks_the_hub_applied_are_dropped_and_the_rest_sent_again(tmp_path: Path) -> None:
    source = MemorySource()
    v1 = source.publish("m", 1, logistic_onnx(seed=0)[0])
    source.assign("dev-1", v1)
    sent: list[dict[str, Any]] = []
    answer: dict[str, Any] = {"status": "recorded", "applied_rollbacks": []}

    def reporter(report: dict[str, Any]) -> dict[str, Any]:
        sent.append(report)
        return answer

    loop, updater, _ = _loop(tmp_path, source, reporter)
    loop.tick()
    assert loop.wait_idle(30)
    source.assign("dev-1", v1, source.publish("m", 2, logistic_onnx(seed=1)[0]), Mode.SPLIT, 0.5)
    loop.tick()
    assert loop.wait_idle(30)
    rolled = updater.rollback(reason="operator")["rolled_back"][0]
    loop.report_soon()
    loop.tick()
    assert [r["id"] for r in sent[-1]["rollbacks"]] == [rolled["id"]]
    answer["applied_rollbacks"] = [rolled["id"]]
    loop.report_soon()
    loop.tick()
    assert updater.status()["rollbacks"] == []


def test_a_token_that_is_not_the_devices_stops_updates_and_check_ins(tmp_path: Path) -> None:
    source = MemorySource()
    source.assign("dev-1", source.publish("m", 1, logistic_onnx()[0]))
    sent: list[dict[str, Any]] = []

    def identity() -> bool:
        check_identity({"subject": "admin", "role": "admin", "device_id": None}, "dev-1")
        return True

    loop, updater, host = _loop(tmp_path, source, sent.append, identity)
    assert loop.tick() is None  # the loop ends
    assert sent == [] and host.route("m") is None
    assert "admin" in loop.refused
    assert updater.status()["update_status"].startswith("refused: token refused")


def test_with_the_hub_unreachable_the_token_is_checked_on_first_contact(tmp_path: Path) -> None:
    source = MemorySource()
    source.assign("dev-1", source.publish("m", 1, logistic_onnx()[0]))
    reachable = [False]
    sent: list[dict[str, Any]] = []
    loop, updater, host = _loop(tmp_path, source, sent.append, lambda: reachable[0])
    assert loop.tick() == 5.0 and loop.tick() == 10.0  # backs off, polls nothing
    assert sent == [] and updater.state.last_check == ""
    reachable[0] = True
    loop.tick()
    assert loop.wait_idle(30)
    # the poll's own check-in, then (the answer had no TUF versions: an older hub) the
    # check-in on change after the poll
    assert host.route("m") is not None and 1 <= len(sent) <= 2


def test_a_newer_desired_state_cancels_the_download_in_progress(tmp_path: Path) -> None:
    source = MemorySource()
    models = [logistic_onnx(seed=i)[0] for i in range(3)]
    source.assign("dev-1", source.publish("m", 1, models[0]))
    loop, updater, host = _loop(tmp_path, source)
    loop.tick()
    assert loop.wait_idle(30)
    source.gate = threading.Event()
    source.assign("dev-1", source.publish("m", 2, models[1]))
    loop.tick()  # starts downloading serial 2 on a worker
    assert source.waiting.wait(10)
    assert updater.status()["update_status"].startswith("downloading: m v2")  # not blocked
    source.assign("dev-1", source.publish("m", 3, models[2]))
    loop.tick()  # serial 3 supersedes it
    assert loop.wait_idle(10) and source.cancelled == 1
    source.gate = None
    loop.tick()
    assert loop.wait_idle(30)
    route = host.route("m")
    assert route is not None and route.production.version == "3"
    assert updater.state.applied_serial == 3


# -- staggered pulls (issue 11) -----------------------------------------------------------


def test_a_new_serial_waits_for_its_staggered_pull_time_then_applies(tmp_path: Path) -> None:
    from modelfleet.rollout.stagger import pull_at

    source = MemorySource()
    models = [logistic_onnx(seed=i)[0] for i in range(2)]
    clock = ManualClock()
    host = ModelHost()
    updater = Updater("dev-1", tmp_path, source, host, clock)
    sent: list[dict[str, Any]] = []
    loop = UpdateLoop(updater, interval=10.0, reporter=sent.append, rand=lambda: 0.5,
                      pull_window_s=3600.0)  # fmt: skip
    v1 = source.publish("m", 1, models[0])
    serial = source.assign("dev-1", v1)
    at = pull_at("dev-1", serial, clock.now(), 3600.0)
    wait_s = (at - clock.now()).total_seconds()
    assert 0 < wait_s < 3600
    delay = loop.tick()
    assert delay is not None and delay <= min(10.0, wait_s) + 1e-9
    assert loop._job is None and source.downloads == 0  # nothing downloaded yet
    status = loop.status()
    assert status["update_status"] == (
        f"new serial {serial}: download scheduled at {at:%Y-%m-%dT%H:%MZ} (staggered)"
    )
    assert status["pull_scheduled"]["serial"] == serial
    clock.advance(max(0.0, wait_s - 1))
    loop.tick()
    assert loop._job is None  # one second early: still waiting
    clock.advance(1)
    loop.tick()
    assert loop.wait_idle(30)
    assert updater.state.applied_serial == serial
    assert "pull_scheduled" not in loop.status()

    # v2 is staggered too; going back to v1 (still in a slot) needs no download: at once
    source.assign("dev-1", source.publish("m", 2, models[1]))
    loop.tick()
    assert loop._job is not None and loop._job.serial == serial  # v2 waits its turn
    assert "staggered" in loop.status()["update_status"]
    clock.advance(3600)
    loop.tick()
    assert loop.wait_idle(30) and updater.state.applied_serial == serial + 1
    back = source.assign("dev-1", v1)
    loop.tick()
    assert loop.wait_idle(30) and updater.state.applied_serial == back
    route = host.route("m")
    assert route is not None and route.production.version == "1"


def test_without_a_window_a_new_serial_applies_at_once(tmp_path: Path) -> None:
    source = MemorySource()
    source.assign("dev-1", source.publish("m", 1, logistic_onnx(seed=0)[0]))
    loop, updater, _ = _loop(tmp_path, source)
    loop.tick()
    assert loop.wait_idle(30) and updater.state.applied_serial == 1
