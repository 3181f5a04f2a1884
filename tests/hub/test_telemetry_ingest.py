"""Telemetry ingest through the real HTTP API (issue 7): each record stored exactly once,
bad input refused whole, the batch one transaction, clock skew kept and flagged."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from modelfleet.client import HubClient
from modelfleet.clock import ManualClock
from modelfleet.errors import ForbiddenError, NotFoundError, PayloadTooLargeError
from modelfleet.hub import db
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService
from tests.hub._support import auth
from tests.hub._telemetry import batch, window
from tests.hub._telemetry import event as tel_event
from tests.hub.test_metrics import samples

URL = "/api/v1/devices/{}/telemetry"


def stored_count(service: HubService) -> int:
    with service.context.read() as s:
        return int(s.execute(select(func.count()).select_from(db.TelemetryRecord)).scalar() or 0)


@pytest.fixture
def cams(service: HubService) -> dict[str, str]:
    """Two enrolled devices and their tokens."""
    return {
        d: service.add_device(d, "plant-a", ["line-1"], actor="admin:admin")[1]
        for d in ("cam-1", "cam-2")
    }


def post(http: TestClient, device: str, token: str, body: Any) -> Any:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return http.post(URL.format(device), content=content, headers=auth(token))


def test_a_replayed_batch_is_stored_once_and_still_acknowledged(
    http: TestClient, service: HubService, clock: ManualClock, cams: dict[str, str]
) -> None:
    now = clock.now()
    records = [window(i, "cam-1", now - timedelta(minutes=10 - i)) for i in range(1, 6)]
    records.append(tel_event(6, "cam-1", now))
    doc = batch("cam-1", records, now, buffered=7, evicted_total=2)
    first = post(http, "cam-1", cams["cam-1"], doc)
    assert first.status_code == 200, first.text
    assert first.json() == {"stored": 6, "duplicates": 0, "acked_through": 6, "status": "recorded"}
    again = post(http, "cam-1", cams["cam-1"], doc)  # agent killed before it deleted
    assert again.json() == {"stored": 0, "duplicates": 6, "acked_through": 6, "status": "recorded"}
    assert stored_count(service) == 6
    m = samples(http)
    assert m['modelfleet_hub_telemetry_batches_total{result="stored"}'] == 1
    assert m['modelfleet_hub_telemetry_batches_total{result="duplicate"}'] == 1
    assert m['modelfleet_hub_telemetry_records_total{result="stored"}'] == 6
    assert m['modelfleet_hub_telemetry_records_total{result="duplicate"}'] == 6
    assert m["modelfleet_hub_telemetry_ingest_lag_seconds_count"] == 5  # windows, once each
    assert m["modelfleet_hub_telemetry_buffered_records"] == 7
    assert m["modelfleet_hub_telemetry_evicted_records"] == 2


def test_overlapping_and_out_of_order_batches_store_each_seq_once(
    http: TestClient, service: HubService, clock: ManualClock, cams: dict[str, str]
) -> None:
    now = clock.now()
    w = {i: window(i, "cam-1", now - timedelta(minutes=20 - i)) for i in range(1, 9)}
    r1 = post(http, "cam-1", cams["cam-1"], batch("cam-1", [w[5], w[3], w[4]], now)).json()
    assert (r1["stored"], r1["acked_through"]) == (3, 5)
    r2 = post(http, "cam-1", cams["cam-1"], batch("cam-1", list(w.values()), now)).json()
    assert (r2["stored"], r2["duplicates"]) == (5, 3)
    # a new buffer (wiped disk) restarts its seqs: not a replay
    r3 = post(http, "cam-1", cams["cam-1"], batch("cam-1", [w[1]], now, buffer_id="buf-2"))
    assert r3.json()["stored"] == 1
    assert stored_count(service) == 9
    t = service.get_device("cam-1")["telemetry"]
    assert t["highest_seq"] == 1 and t["buffer_id"] == "buf-2"


def test_another_devices_token_is_refused_and_counted_once(
    http: TestClient, service: HubService, clock: ManualClock, cams: dict[str, str]
) -> None:
    now = clock.now()
    doc = batch("cam-1", [window(1, "cam-1", now)], now)
    r = post(http, "cam-1", cams["cam-2"], doc)
    assert r.status_code == 403 and r.json()["type"] == "ForbiddenError"
    # cam-2 naming itself but carrying cam-1's records is malformed, not stored either
    assert post(http, "cam-2", cams["cam-2"], doc).status_code == 400
    assert stored_count(service) == 0
    m = samples(http)
    assert m['modelfleet_hub_telemetry_batches_total{result="refused"}'] == 1
    assert m['modelfleet_hub_telemetry_batches_total{result="invalid"}'] == 1
    assert post(http, "cam-1", "mft_not-a-token", doc).status_code == 401


def _bad_histogram(doc: dict[str, Any]) -> dict[str, Any]:
    doc["records"][1]["latency_s"]["counts"] = [[999, 1]]
    return doc


def _huge_seq(doc: dict[str, Any]) -> dict[str, Any]:
    doc["records"][0]["seq"] = 2**63
    return doc


def _far_time(doc: dict[str, Any]) -> dict[str, Any]:
    doc["records"][0]["closed_at"] = "9999-12-31T23:59:00-05:00"
    return doc


GARBAGE = {
    "truncated JSON": lambda raw, doc: raw[: len(raw) // 2],
    "not JSON": lambda raw, doc: b"\x00\xffgarbage",
    "a JSON list": lambda raw, doc: b"[1, 2]",
    "the second record's histogram out of range": lambda raw, doc: orjson.dumps(
        _bad_histogram(doc)
    ),
    "a seq past 64 bits": lambda raw, doc: orjson.dumps(_huge_seq(doc)),
    "a time past year 9999 in UTC": lambda raw, doc: orjson.dumps(_far_time(doc)),
    "no records": lambda raw, doc: orjson.dumps({**doc, "records": []}),
    "a newer format": lambda raw, doc: orjson.dumps({**doc, "format": 2}),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_a_truncated_or_garbage_batch_is_a_400_and_stores_nothing(
    case: str, http: TestClient, service: HubService, clock: ManualClock, cams: dict[str, str]
) -> None:
    now = clock.now()
    doc = batch("cam-1", [window(i, "cam-1", now) for i in (1, 2, 3)], now)
    body = GARBAGE[case](orjson.dumps(doc), doc)
    r = post(http, "cam-1", cams["cam-1"], body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "InvalidInputError"
    assert stored_count(service) == 0
    assert service.get_device("cam-1")["telemetry"] is None


def test_a_device_clock_years_off_is_stored_and_flagged(
    http: TestClient, service: HubService, clock: ManualClock, cams: dict[str, str]
) -> None:
    device_now = clock.now() + timedelta(days=5 * 365)
    doc = batch("cam-1", [window(1, "cam-1", device_now)], device_now)
    assert post(http, "cam-1", cams["cam-1"], doc).json()["stored"] == 1
    t = service.get_device("cam-1")["telemetry"]
    assert t["skew_flagged"] is True
    assert t["clock_skew_s"] == pytest.approx(-5 * 365 * 86400)
    assert samples(http)["modelfleet_hub_devices_clock_skewed"] == 1
    ok = batch("cam-2", [window(1, "cam-2", clock.now())], clock.now() - timedelta(seconds=30))
    post(http, "cam-2", cams["cam-2"], ok)
    t2 = service.get_device("cam-2")["telemetry"]
    assert (t2["skew_flagged"], t2["clock_skew_s"]) == (False, 30.0)
    windows = service.device_windows("cam-1")
    assert windows[0]["closed_at"] == device_now.isoformat()  # device time kept as sent
    assert windows[0]["received_at"] == clock.now().isoformat()  # and the hub's


@pytest.fixture
def small_limit_http(hub_home: tuple[Path, str], clock: ManualClock) -> Iterator[TestClient]:
    config = dataclasses.replace(load_hub_config(hub_home[0]), max_telemetry_bytes=4096)
    service = HubService(config, clock)
    service.add_device("cam-1", actor="admin:admin")
    try:
        with TestClient(build_hub_app(service, refresh_interval_s=0)) as client:
            yield client
    finally:
        service.close()


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(
    small_limit_http: TestClient, admin_token: str, clock: ManualClock
) -> None:
    now = clock.now()
    body = orjson.dumps(batch("cam-1", [window(i, "cam-1", now) for i in range(1, 40)], now))
    assert len(body) > 4096
    r = small_limit_http.post(URL.format("cam-1"), content=body, headers=auth(admin_token))
    assert r.status_code == 413 and r.json()["type"] == "PayloadTooLargeError"
    chunked = small_limit_http.post(
        URL.format("cam-1"), content=iter([body[:3000], body[3000:]]), headers=auth(admin_token)
    )
    assert chunked.status_code == 413
    assert (
        small_limit_http.get("/api/v1/devices/cam-1/windows", headers=auth(admin_token)).json()
        == []
    )


def test_the_database_failing_mid_batch_stores_nothing_and_a_resend_counts_once(
    http: TestClient, service: HubService, clock: ManualClock, cams: dict[str, str]
) -> None:
    now = clock.now()
    # 2500 records: several multi-row INSERT pages; the second page fails.
    doc = batch("cam-1", [window(i, "cam-1", now) for i in range(1, 2501)], now)
    inserts = 0

    def fail_second_insert(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal inserts
        if statement.startswith("INSERT INTO telemetry_records"):
            inserts += 1
            if inserts == 2:
                # what the driver raises when the disk goes away mid-statement
                raise service.engine.dialect.loaded_dbapi.OperationalError("disk I/O error")

    event.listen(service.engine, "before_cursor_execute", fail_second_insert)
    try:
        r = post(http, "cam-1", cams["cam-1"], doc)
    finally:
        event.remove(service.engine, "before_cursor_execute", fail_second_insert)
    assert inserts == 2
    assert r.status_code == 503 and r.json()["type"] == "StorageError"
    assert stored_count(service) == 0
    assert service.get_device("cam-1")["telemetry"] is None
    again = post(http, "cam-1", cams["cam-1"], doc)
    assert again.json()["stored"] == 2500
    assert post(http, "cam-1", cams["cam-1"], doc).json()["duplicates"] == 2500
    assert stored_count(service) == 2500


def test_unknown_device_recent_windows_and_the_client_sdk(
    client: HubClient, service: HubService, clock: ManualClock, cams: dict[str, str]
) -> None:
    now = clock.now()
    with pytest.raises(NotFoundError):
        client.send_telemetry("ghost", batch("ghost", [window(1, "ghost", now)], now))
    records = [window(i, "cam-1", now - timedelta(minutes=5 - i)) for i in range(1, 5)]
    assert client.send_telemetry("cam-1", batch("cam-1", records, now))["stored"] == 4
    recent = client.device_windows("cam-1", limit=2)
    assert [w["seq"] for w in recent] == [4, 3]
    with pytest.raises(NotFoundError):
        client.device_windows("ghost")
    own = HubClient(client.base_url, cams["cam-1"], http=client._http)
    assert len(own.device_windows("cam-1")) == 4
    other = HubClient(client.base_url, cams["cam-2"], http=client._http)
    with pytest.raises(ForbiddenError):
        other.device_windows("cam-1")
    clock.advance(90)
    device = client.get_device("cam-1")["telemetry"]
    assert device["lag_s"] == pytest.approx(90 + 60)  # newest closed_at is now - 1 min
    listed = {d["id"]: d["telemetry"] for d in client.list_devices()}
    assert listed["cam-2"] is None and listed["cam-1"]["highest_seq"] == 4
    with pytest.raises(PayloadTooLargeError):
        client.send_telemetry("cam-1", {"pad": "x" * (9 << 20)})
