"""The agent's telemetry wiring: updater events become records and counters; /metrics names."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import ProcessCollector, generate_latest

from modelfleet.agent.metrics import AgentMetrics
from modelfleet.agent.telemetry import TelemetryCollector, UpdateCounters, build_device_telemetry
from modelfleet.agent.updater import Updater
from modelfleet.clock import ManualClock
from modelfleet.serving.host import ModelHost
from modelfleet.telemetry.buffer import TelemetryBuffer
from tests.agent.fakes import MemorySource
from tests.helpers import logistic_onnx
from tests.prom import METRIC_NAMES
from tests.telemetry.fake_ingest import IngestStore

DEVICE = "dev-1"

#: The agent series of the issue 7 contract (section 3), as tests/prom.py lists them.
CONTRACT_SERIES = (
    *sorted(
        n
        for n in METRIC_NAMES
        if n.startswith(
            (
                "modelfleet_agent_update",
                "modelfleet_agent_download",
                "modelfleet_agent_refusal",
                "modelfleet_agent_telemetry",
            )
        )
    ),
    "process_cpu_seconds_total",
)


def test_update_events_reach_the_buffer_the_windows_and_the_counters(tmp_path: Path) -> None:
    source = MemorySource()
    host = ModelHost()
    clock = ManualClock()
    updater = Updater(DEVICE, tmp_path / "state", source, host, clock)
    metrics = AgentMetrics(host)
    ProcessCollector(registry=metrics.registry)
    counters = UpdateCounters(metrics.registry)
    hub = IngestStore()

    class Link:
        def send_telemetry(self, device_id: str, batch: object) -> dict[str, object]:
            return hub.ingest(device_id, batch)

    tel = build_device_telemetry(
        DEVICE,
        TelemetryBuffer(tmp_path / "t.sqlite3"),
        Link(),  # type: ignore[arg-type]
        updater,
        host,
        clock,
        60.0,
        counters,
    )
    metrics.registry.register(TelemetryCollector(tel))
    model1 = logistic_onnx(seed=0)[0]
    source.assign(DEVICE, source.publish("m", 1, model1))
    updater.run_cycle()
    v2 = source.publish("m", 2, logistic_onnx(seed=1)[0])
    source.blobs["models/m/2/model.onnx"] = source.blobs["models/m/2/model.onnx"][:-1] + b"\0"
    source.assign(DEVICE, v2)
    updater.run_cycle()  # refused: hash mismatch (and retried: ADR 0034)
    tel.close_window(clock.now())
    while tel.buffer.stats().records:
        tel.forwarder.step()

    records = hub.records()
    events = [r for r in records if r["kind"] == "event"]
    assert [e["event"] for e in events] == ["switch", "refused", "retrying"]
    assert events[1]["model"] == "m" and events[1]["version"] == "2"
    (window,) = [r for r in records if r["kind"] == "window"]
    assert (window["model"], window["version"], window["role"]) == ("m", "1", "production")
    assert (window["updates"], window["refusals"]) == (1, 1)

    text = generate_latest(metrics.registry).decode()
    for name in CONTRACT_SERIES:
        assert f"\n{name}" in text or text.startswith(name), name
    assert 'modelfleet_agent_updates_total{result="installed"} 1.0' in text
    assert 'modelfleet_agent_updates_total{result="refused"} 1.0' in text
    assert "modelfleet_agent_refusals_total 1.0" in text
    assert f"modelfleet_agent_download_bytes_total {float(len(model1))}" in text
    assert 'modelfleet_agent_downloads_total{result="failed"} 1.0' in text
    assert "modelfleet_agent_telemetry_forwarded_total 4.0" in text  # 3 events, 1 window
