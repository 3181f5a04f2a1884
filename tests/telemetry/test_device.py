"""Faults around the device's telemetry: the buffer full, the disk full, serving unaffected."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelfleet.agent.app import build_agent_app
from modelfleet.agent.metrics import AgentMetrics
from modelfleet.agent.telemetry import TelemetryCollector, routed_versions
from modelfleet.clock import ManualClock
from modelfleet.serving.host import ModelHost
from modelfleet.serving.router import Route
from modelfleet.telemetry.buffer import TelemetryBuffer
from modelfleet.telemetry.device import DeviceTelemetry
from tests.fakes_model import linear_classifier
from tests.serving._support import AppClient
from tests.telemetry.fake_ingest import IngestStore

X = {"inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}]}


@pytest.fixture
def host() -> ModelHost:
    host = ModelHost()
    host.set_route("m", Route(linear_classifier("m", "1", np.eye(3))))
    return host


def serving(host: ModelHost, telemetry: DeviceTelemetry) -> Iterator[AppClient]:
    metrics = AgentMetrics(host)
    metrics.registry.register(TelemetryCollector(telemetry))
    app = build_agent_app(host, metrics=metrics, observers=[telemetry.recorder])
    with AppClient(app) as client:
        yield client


def device(host: ModelHost, buffer: TelemetryBuffer, hub: IngestStore) -> DeviceTelemetry:
    return DeviceTelemetry(
        "edge-1",
        buffer,
        hub.send_for("edge-1"),
        ManualClock(),
        routed=lambda: list(routed_versions(host)),
        production_of=lambda m: "1",
    )


def test_the_disk_full_under_the_buffer_keeps_serving_and_says_so(
    tmp_path: Path, host: ModelHost
) -> None:
    path = tmp_path / "t.sqlite3"
    TelemetryBuffer(path).close()
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    hub = IngestStore()
    tel = device(host, TelemetryBuffer(path, max_pages=pages + 1), hub)
    for client in serving(host, tel):
        for i in range(30):
            for _ in range(5):
                assert client.post("/v2/models/m/infer", json=X).status_code == 200
            tel.record_event(f"2026-01-01T00:00:{i:02d}+00:00", "switch", "x" * 3000, "m", "1")
            tel.close_window()
        status = tel.status()
        assert status["append_failing"] is True and "disk full" in status["last_error"]
        assert status["unwritten"] > 0
        metrics = client.get("/metrics").text
        assert "modelfleet_agent_telemetry_append_failures_total" in metrics
        assert client.post("/v2/models/m/infer", json=X).status_code == 200
    # space comes back (the hub acknowledges, the disk is freed): what waited in memory goes in
    fwd = tel.forwarder
    while tel.buffer.stats().records:
        fwd.step()
    tel.buffer.close()
    tel.buffer = TelemetryBuffer(path)  # as after freeing disk space
    tel.forwarder.buffer = tel.buffer
    tel.close_window()
    assert tel.status()["append_failing"] is False and tel.status()["unwritten"] == 0
    while tel.buffer.stats().records:
        fwd.step()
    windows = hub.seqs(kind="window")
    requests = sum(r["requests"]["ok"] for r in hub.records() if r["kind"] == "window")
    assert requests == 151 and len(windows) == 31  # nothing counted was lost


def test_a_full_buffer_evicts_counts_and_serving_is_unaffected(
    tmp_path: Path, host: ModelHost
) -> None:
    hub = IngestStore()
    tel = device(host, TelemetryBuffer(tmp_path / "t.sqlite3", max_bytes=64 * 1024), hub)
    for client in serving(host, tel):
        for _ in range(120):
            assert client.post("/v2/models/m/infer", json=X).status_code == 200
            tel.close_window()
        text = client.get("/metrics").text
    stats = tel.buffer.stats()
    assert stats.evicted_total > 0 and stats.bytes <= 64 * 1024
    assert f"modelfleet_agent_telemetry_evicted_total {float(stats.evicted_total)}" in text
    while tel.buffer.stats().records:
        tel.forwarder.step()
    assert hub.last_batch is not None and hub.last_batch["evicted_total"] == stats.evicted_total
    assert len(hub.seqs()) + stats.evicted_total == stats.appended_total
