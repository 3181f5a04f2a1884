"""Agent lines about one model carry its model, version and rollout id (issue 7)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.rollout.desired_state import Assignment, DesiredState, Mode
from modelfleet.serving.host import ModelHost
from modelfleet.telemetry.logs import configure_logging
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx


def test_the_install_line_names_model_version_and_rollout(tmp_path: Path) -> None:
    source = MemorySource()
    ref = source.publish("m", 1, logistic_onnx()[0])
    assignment = Assignment("m", ref, None, Mode.FULL, 0.0, {}, rollout_id="r-42")
    source.desired["dev-1"] = DesiredState("dev-1", 1, (assignment,)).to_json()
    out = io.StringIO()
    handler = configure_logging("json", "info", {"device_id": "dev-1"}, stream=out)
    try:
        Updater("dev-1", tmp_path, source, ModelHost(), ManualClock()).run_cycle()
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    installed = next(x for x in lines if x["msg"].startswith("installed m v1"))
    assert (installed["device_id"], installed["model"], installed["version"]) == ("dev-1", "m", "1")
    assert installed["rollout_id"] == "r-42"
    assert all(x["device_id"] == "dev-1" for x in lines)
