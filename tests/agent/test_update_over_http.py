"""The update path over real loopback HTTP: a 503 is retried, a dripping artefact neither
freezes status and rollback nor outlives its deadline (issue 6, defects 12 and 13)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.agent.daemon import AgentControlImpl, UpdateLoop
from modelfleet.agent.updater import Updater
from modelfleet.backoff import BackoffPolicy
from modelfleet.cli.agent_cmds import configure_logging
from modelfleet.clock import ManualClock
from modelfleet.delivery.http_fetcher import DownloadSettings
from modelfleet.packaging.build import build_manifest
from modelfleet.rollout.desired_state import ArtefactRef
from modelfleet.serving.host import ModelHost
from modelfleet.trust import DeviceTrustClient
from tests.helpers import logistic_onnx
from tests.trust._trust_support import TOKEN, Hub, make_hub, serve

DEVICE = "dev-1"
TIGHT = DownloadSettings(read_timeout_s=2.0, min_rate_bytes_s=1024.0, base_s=1.0, max_s=5.0)


def publish(hub: Hub, version: int) -> ArtefactRef:
    model, x = logistic_onnx(seed=version)
    manifest = build_manifest("m", version, model, sample_input=x[:3]).to_json()
    return hub.publish("m", version, model, manifest)


Rig = tuple[Hub, Updater, UpdateLoop, ManualClock]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    hub = make_hub(tmp_path / "hub")
    with serve(hub) as url:
        source = DeviceTrustClient(
            tmp_path / "dev" / "tuf", url, TOKEN, hub.trust.trust_root_bundle(), download=TIGHT
        )
        clock = ManualClock()
        updater = Updater(
            DEVICE, tmp_path / "dev", source, ModelHost(), clock, retry=BackoffPolicy(1.0, 5.0)
        )
        loop = UpdateLoop(updater, interval=1.0, rand=lambda: 0.5)
        try:
            yield hub, updater, loop, clock
        finally:
            loop.stop()
            source.close()


def step(loop: UpdateLoop) -> None:
    loop.tick()
    assert loop.wait_idle(30)


def serving(updater: Updater) -> str:
    route = updater.host.route("m")
    return route.production.version if route else "-"


def test_one_http_503_on_the_artefact_is_retried_and_the_version_installs(rig: Rig) -> None:
    hub, updater, loop, clock = rig
    hub.assign(DEVICE, publish(hub, 1))
    hub.faults.unavailable["model.onnx"] = 1
    step(loop)
    status = updater.status()
    assert status["update_status"].startswith("retrying: m v1: ")
    assert "HTTP 503" in status["update_status"]
    assert serving(updater) == "-"
    clock.advance(5.0)
    step(loop)
    assert serving(updater) == "1"
    assert updater.status()["update_status"] == "up to date (serial 1)"


def test_dripping_download_leaves_status_and_rollback_answering_and_hits_its_deadline(
    rig: Rig,
) -> None:
    hub, updater, loop, clock = rig
    hub.assign(DEVICE, publish(hub, 1))
    step(loop)
    hub.assign(DEVICE, publish(hub, 2))
    step(loop)
    assert serving(updater) == "2"
    control = AgentControlImpl(updater, loop)
    hub.faults.drip["model.onnx"] = 0.2  # about 5 bytes/s
    hub.assign(DEVICE, publish(hub, 3))
    started = time.monotonic()
    loop.tick()  # the download runs on the loop's worker
    while not any("model.onnx" in p for p in hub.faults.served[-3:]):
        assert time.monotonic() - started < 10
        time.sleep(0.02)
    t0 = time.monotonic()
    assert control.status()["update_status"].startswith("downloading: m v3")
    assert control.rollback("operator")["rolled_back"][0]["to"] == 1
    assert time.monotonic() - t0 < 1.0
    assert serving(updater) == "1"
    assert loop.wait_idle(15)
    assert time.monotonic() - started < 10  # the deadline fired (size ~1 KiB: ~2 s)
    status = control.status()
    assert status["update_status"].startswith("retrying: m v3: ")
    assert "deadline" in status["update_status"]
    hub.faults.drip.clear()
    clock.advance(5.0)
    step(loop)
    assert serving(updater) == "3"


def test_idle_polls_log_nothing_at_info_not_even_tufs_404_for_the_next_root(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # issue 6, defect 7: httpx logged every request at INFO, the normal 404 included
    hub, _, loop, _ = rig
    hub.assign(DEVICE, publish(hub, 1))
    step(loop)
    levels = {n: logging.getLogger(n).level for n in ("httpx", "httpcore")}
    configure_logging("info")
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            for _ in range(3):
                step(loop)
        assert any("root.json" in p for p in hub.faults.served)  # the probe did happen
        assert [r.getMessage() for r in caplog.records] == []
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
