"""The agent loads installed versions with its runtime settings and their signed decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.agent.models import onnx_loader
from modelfleet.agent.updater import Updater
from modelfleet.catalog.onnx_session import check_providers
from modelfleet.catalog.schema import OutputDecision
from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError
from modelfleet.serving.host import ModelHost
from modelfleet.serving.model import RuntimeSettings
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx


def test_served_version_judges_shadow_outputs_by_its_signed_decisions(tmp_path: Path) -> None:
    source = MemorySource()
    declared = {"probabilities": OutputDecision("ignore")}
    ref = source.publish("m", 1, logistic_onnx(seed=0)[0], decisions=declared)
    source.assign("dev-1", ref)
    host = ModelHost()
    updater = Updater(
        "dev-1",
        tmp_path,
        source,
        host,
        ManualClock(),
        loader=onnx_loader(RuntimeSettings(intra_op_threads=2)),
    )
    assert updater.run_cycle().changed
    route = host.route("m")
    assert route is not None
    assert route.production.decisions["probabilities"].kind == "ignore"
    assert route.production.decisions["label"].kind == "label"  # inferred, not declared


def test_an_unavailable_execution_provider_is_refused_at_startup() -> None:
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider"):
        check_providers(("NoSuchExecutionProvider",))
