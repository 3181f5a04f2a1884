"""The hub's ``/metrics`` (issue 7 contract 3): the contract's names, no per-device labels,
gauges from the database cached for a few seconds, an optional token."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.clock import ManualClock
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService
from tests.hub._support import auth

CONTRACT = {
    "modelfleet_hub_checkins": "counter",
    "modelfleet_hub_telemetry_batches": "counter",
    "modelfleet_hub_telemetry_records": "counter",
    "modelfleet_hub_telemetry_ingest_lag_seconds": "histogram",
    "modelfleet_hub_devices": "gauge",
    "modelfleet_hub_devices_clock_skewed": "gauge",
    "modelfleet_hub_devices_serving": "gauge",
    "modelfleet_hub_telemetry_buffered_records": "gauge",
    "modelfleet_hub_telemetry_evicted_records": "gauge",
    "modelfleet_hub_info": "gauge",
}


def samples(http: TestClient, headers: dict[str, str] | None = None) -> dict[str, float]:
    """``name{label="v",...}`` -> value of every sample."""
    r = http.get("/metrics", headers=headers or {})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_expose_the_contract_names_without_a_token(http: TestClient) -> None:
    r = http.get("/metrics")
    families = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    for name, kind in CONTRACT.items():
        assert families.get(name) == kind, name
    assert "process_cpu_seconds" in families
    for result in ("stored", "duplicate", "invalid", "refused"):
        assert f'modelfleet_hub_telemetry_batches_total{{result="{result}"}}' in r.text


def test_checkins_count_and_gauges_follow_the_fleet_without_device_labels(
    http: TestClient, service: HubService, clock: ManualClock, admin_token: str
) -> None:
    for i in range(3):
        service.add_device(f"cam-{i}", "plant-a", ["line-1"], actor="admin:admin")
    service.add_device("far-1", "plant-b", [], actor="admin:admin")
    report = {"models": {"iris": {"active": {"version": 2}, "candidate": {"version": 3}}}}
    for device in ("cam-0", "cam-1", "far-1"):
        r = http.post(f"/api/v1/devices/{device}/report", json=report, headers=auth(admin_token))
        assert r.status_code == 200
    m = samples(http)
    assert m["modelfleet_hub_checkins_total"] == 3
    assert m['modelfleet_hub_devices{state="fresh"}'] == 3
    assert m['modelfleet_hub_devices{state="never_seen"}'] == 1
    assert m['modelfleet_hub_devices_serving{model="iris",site="plant-a",version="2"}'] == 2
    assert m['modelfleet_hub_devices_serving{model="iris",site="plant-a",version="3"}'] == 2
    assert m['modelfleet_hub_devices_serving{model="iris",site="plant-b",version="2"}'] == 1
    labels = [key.partition("{")[2] for key in m]
    assert not any("cam-" in text or "device" in text for text in labels)

    clock.advance(301)  # past stale_after_s (and the gauge cache)
    m = samples(http)
    assert m['modelfleet_hub_devices{state="stale"}'] == 3
    assert m['modelfleet_hub_devices{state="fresh"}'] == 0


def test_gauges_are_cached_so_a_scrape_storm_reads_the_database_once(
    http: TestClient, service: HubService, clock: ManualClock
) -> None:
    calls = 0
    read = service._read_gauges

    def counting() -> object:
        nonlocal calls
        calls += 1
        return read()

    collector = next(c for c in service.metrics.registry._collector_to_names if hasattr(c, "_read"))
    collector._read = counting  # type: ignore[attr-defined]
    for _ in range(20):
        http.get("/metrics")
    service.add_device("new-1", actor="admin:admin")
    before = samples(http)['modelfleet_hub_devices{state="never_seen"}']
    assert calls == 1  # every scrape within metrics_cache_s reused the first reading
    clock.advance(service.config.metrics_cache_s)
    assert samples(http)['modelfleet_hub_devices{state="never_seen"}'] == before + 1
    assert calls == 2


@pytest.fixture
def locked_http(hub_home: tuple[Path, str], clock: ManualClock) -> Iterator[TestClient]:
    config = dataclasses.replace(load_hub_config(hub_home[0]), metrics_token_required=True)
    service = HubService(config, clock)
    try:
        with TestClient(build_hub_app(service, refresh_interval_s=0)) as client:
            yield client
    finally:
        service.close()


def test_metrics_token_required_asks_for_a_viewer_token(
    locked_http: TestClient, admin_token: str
) -> None:
    assert locked_http.get("/metrics").status_code == 401
    assert locked_http.get("/metrics", headers=auth("mft_nope")).status_code == 401
    assert "modelfleet_hub_info" in samples(locked_http, auth(admin_token)).__repr__()
