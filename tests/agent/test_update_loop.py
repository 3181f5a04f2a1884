"""Check-ins: sent on change, on request and as a heartbeat — not on every poll."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelfleet.agent.daemon import UpdateLoop
from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.serving.host import ModelHost


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
