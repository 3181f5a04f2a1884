"""Expired metadata at an air-gapped site (issue 11, ADR 0036): no new installs, the
verified model already running keeps serving, and status and metrics say so until fresh
metadata arrives. The device's clock set back a year changes none of that."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelfleet.agent.daemon import AgentControlImpl
from modelfleet.agent.metrics import AgentMetrics
from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.packaging.build import build_manifest
from modelfleet.rollout.desired_state import ArtefactRef
from modelfleet.serving.host import ModelHost
from modelfleet.trust import DeviceTrustClient
from tests.helpers import logistic_onnx
from tests.trust._trust_support import TOKEN, Hub, make_hub, serve

DEVICE = "dev-1"
START = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


class DeviceClock(ManualClock):
    """A device clock an operator can set to any time (the monotonic reading runs on)."""

    def set(self, at: datetime) -> None:
        self._now = at


def publish(hub: Hub, version: int) -> ArtefactRef:
    model, x = logistic_onnx(seed=version)
    manifest = build_manifest("m", version, model, sample_input=x[:3]).to_json()
    return hub.publish("m", version, model, manifest)


Rig = tuple[Hub, Updater, DeviceClock, AgentMetrics]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    hub = make_hub(tmp_path / "hub", start=START)
    clock = DeviceClock(START)
    with serve(hub) as url:
        source = DeviceTrustClient(
            tmp_path / "dev" / "tuf", url, TOKEN, hub.trust.trust_root_bundle(), now=clock.now
        )
        host = ModelHost()
        updater = Updater(DEVICE, tmp_path / "dev", source, host, clock)
        metrics = AgentMetrics(host)
        metrics.watch_metadata(updater.metadata_health)
        try:
            yield hub, updater, clock, metrics
        finally:
            source.close()


def serving(updater: Updater) -> str:
    route = updater.host.route("m")
    return route.production.version if route else "-"


def expired_gauge(metrics: AgentMetrics) -> float:
    value = metrics.registry.get_sample_value("modelfleet_agent_metadata_expired")
    assert value is not None
    return value


def test_expired_metadata_keeps_serving_blocks_installs_and_clears_on_fresh_metadata(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    hub, updater, clock, metrics = rig
    hub.assign(DEVICE, publish(hub, 1))
    updater.run_cycle()
    assert serving(updater) == "1" and expired_gauge(metrics) == 0.0
    director_expiry = metrics.registry.get_sample_value(
        "modelfleet_agent_metadata_expires_timestamp_seconds", {"repo": "director"}
    )
    assert director_expiry == (START + DAY).timestamp()
    slots = sorted((updater.state_dir / "models").iterdir())

    clock.set(START + 2 * DAY)  # no fresh metadata reached the site for two days
    v2 = publish(hub, 2)
    hub.assign(DEVICE, v2)  # signed with the hub's old time: expired too
    with caplog.at_level(logging.ERROR, logger="modelfleet.agent"):
        result = updater.run_cycle()
    assert not result.changed and "expired" in result.error
    assert serving(updater) == "1"  # never unloaded
    assert [s.active.version for s in updater.state.models.values() if s.active] == [1]
    status = updater.status()
    assert status["update_status"] == (
        "metadata expired (director timestamp expired 2026-03-02T00:00:00+00:00): "
        "serving m v1, no new installs until fresh metadata arrives (bundle import or hub)"
    )
    assert updater.metadata_health().expired
    assert AgentControlImpl(updater).status()["metadata"]["expired"] is True  # agent status
    assert "metadata expired" in caplog.text  # the reason is logged
    assert expired_gauge(metrics) == 1.0

    clock.set(START + 2 * DAY - timedelta(days=365))  # "fixed" by setting the clock back
    updater.run_cycle()
    assert serving(updater) == "1"
    assert updater.status()["update_status"].startswith("metadata expired (director timestamp")
    assert expired_gauge(metrics) == 1.0
    assert sorted((updater.state_dir / "models").iterdir()) == slots  # nothing installed
    assert updater.state.pending == [] and updater.state.refused == {}

    hub.clock.advance(2 * DAY.total_seconds())  # fresh metadata: the hub re-signs
    hub.trust.refresh_expiring()
    hub.assign(DEVICE, v2)
    updater.run_cycle()
    assert serving(updater) == "2"
    assert updater.status()["update_status"] == "up to date (serial 3)"
    assert expired_gauge(metrics) == 0.0
    assert AgentControlImpl(updater).status()["metadata"]["expired"] is False


def test_status_clears_when_fresh_metadata_names_nothing_new(rig: Rig) -> None:
    hub, updater, clock, metrics = rig
    ref = publish(hub, 1)
    hub.assign(DEVICE, ref)
    updater.run_cycle()
    clock.set(START + 2 * DAY)
    updater.run_cycle()
    assert updater.status()["update_status"].startswith("metadata expired")
    hub.clock.advance(2 * DAY.total_seconds())
    hub.trust.refresh_expiring()
    hub.assign(DEVICE, ref)  # re-signed, the same version
    updater.run_cycle()
    assert serving(updater) == "1"
    assert updater.status()["update_status"] == "up to date (serial 2)"
    assert expired_gauge(metrics) == 0.0
