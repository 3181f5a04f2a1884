"""Telemetry storage on SQLite and PostgreSQL (issue 7): summaries merge exactly, roll-ups
keep whole-hour totals, retention is bounded per round, replicas ingest in parallel,
migration 0003 goes down and up."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import func, inspect, select, text

from modelfleet.clock import ManualClock
from modelfleet.hub import db
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home
from tests.hub._telemetry import batch, event, window
from tests.pg import pg_database

H0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tel.db'}"
    else:
        # A migration's own test starts from nothing; the others from the schema at head.
        with pg_database(empty=request.node.name.startswith("test_migration_")) as url:
            yield url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(H0 + timedelta(hours=3))


def make_service(home: Path, clock: ManualClock, **overrides: Any) -> HubService:
    config = dataclasses.replace(load_hub_config(home), **overrides)
    return HubService(config, clock)


@pytest.fixture
def home(tmp_path: Path, clock: ManualClock, database_url: str) -> Path:
    init_home(tmp_path / "hub", clock, database_url=database_url)
    return tmp_path / "hub"


@pytest.fixture
def hub(home: Path, clock: ManualClock) -> Iterator[HubService]:
    service = make_service(home, clock)
    service.add_device("a1", "plant-a", ["line-1"], actor="admin:admin")
    service.add_device("a2", "plant-a", ["line-2"], actor="admin:admin")
    service.add_device("b1", "plant-b", ["line-1"], actor="admin:admin")
    yield service
    service.close()


def ingest(hub: HubService, device: str, records: list[dict[str, Any]], **kw: Any) -> Any:
    return hub.ingest_telemetry(device, orjson.dumps(batch(device, records, hub.clock.now(), **kw)))


def fill(hub: HubService) -> int:
    """Windows of three hours from three devices, two versions; returns how many."""
    n = 0
    for device in ("a1", "a2", "b1"):
        records = []
        for i in range(36):  # every 5 minutes over [H0, H0 + 3 h)
            closed = H0 + timedelta(minutes=5 * i + 2)
            v2 = i % 3 == 0
            records.append(
                window(
                    i + 1, device, closed,
                    version="2" if v2 else "1",
                    role="candidate" if v2 else "production",
                    rollout_id="r-7" if v2 else None,
                    ok=5 + i, server_error=i % 4,
                    latencies=[0.001 * (1 + i % 7), 0.05 * (1 + i % 3), 0.3 + i / 100],
                )
            )  # fmt: skip
        records.append(event(37, device, H0 + timedelta(minutes=30)))
        assert ingest(hub, device, records)["stored"] == 37
        n += 36
    return n


QUERIES: dict[str, dict[str, Any]] = {
    "everything": {},
    "one version": {"model": "iris", "version": "2"},
    "a role": {"role": "production"},
    "a site": {"site": "plant-a"},
    "a rollout": {"rollout_id": "r-7"},
    "outside any rollout": {"rollout_id": ""},
    "one hour": {"since": H0 + timedelta(hours=1), "until": H0 + timedelta(hours=2)},
}


def summaries(hub: HubService) -> dict[str, dict[str, Any]]:
    out = {}
    for name, q in QUERIES.items():
        kw = {"since": H0, "until": H0 + timedelta(hours=3), **q}
        out[name] = hub.telemetry_summary(**kw)
    return out


def exact_part(summary: dict[str, Any]) -> dict[str, Any]:
    """Everything that must be equal to the integer (histogram sums are floats)."""
    keep = {k: v for k, v in summary.items() if k not in ("sources", "query", "partial")}
    for key in ("latency_s", "compute_s", "queue_s", "confidence"):
        if key in keep:
            keep[key] = {**keep[key], "sum": round(keep[key]["sum"], 6)}
    return keep


def raw_count(hub: HubService) -> int:
    with hub.context.read() as s:
        return int(s.execute(select(func.count()).select_from(db.TelemetryRecord)).scalar() or 0)


def test_summary_merges_windows_with_filters(hub: HubService) -> None:
    n = fill(hub)
    s = summaries(hub)
    assert s["everything"]["windows"] == n and s["everything"]["devices"] == 3
    assert s["one version"]["windows"] == 36 and s["a rollout"]["windows"] == 36
    assert s["outside any rollout"]["windows"] == n - 36 == s["a role"]["windows"]
    assert s["a site"]["devices"] == 2 and s["one hour"]["windows"] == 36
    ok = sum(5 + i for i in range(36)) * 3
    assert s["everything"]["requests"]["ok"] == ok
    errors = sum(i % 4 for i in range(36)) * 3
    assert s["everything"]["error_rate"] == pytest.approx(errors / (ok + errors + n))
    assert s["everything"]["latency_p99_s"] is not None
    tagged = hub.telemetry_summary(since=H0, until=H0 + timedelta(hours=3), tag="line-1")
    assert tagged["devices"] == 2 and tagged["partial"] is False
    one = hub.telemetry_summary(since=H0, until=H0 + timedelta(hours=3), device_id="a2")
    assert one["windows"] == 36 and one["devices"] == 1


def test_whole_hour_totals_are_the_same_before_and_after_roll_up(
    hub: HubService, clock: ManualClock
) -> None:
    n = fill(hub)
    before = summaries(hub)
    clock.advance(15 * 86400)  # past telemetry_raw_days = 14
    done = hub.apply_retention()
    assert done["rolled_up"] == n and done["records_deleted"] == n + 3  # + the events
    assert raw_count(hub) == 0
    after = summaries(hub)
    for name in QUERIES:
        assert exact_part(after[name]) == exact_part(before[name]), name
        assert after[name]["sources"]["windows"] == 0 < after[name]["sources"]["rollups"]
    # a tag filter sees raw windows only: it says the roll-ups were left out
    tagged = hub.telemetry_summary(since=H0, until=H0 + timedelta(hours=3), tag="line-1")
    assert tagged["windows"] == 0 and tagged["partial"] is True

    # a window arriving late (device offline) merges into the existing roll-up row
    late = window(1, "a1", H0 + timedelta(minutes=61), buffer_id_note="late")
    assert ingest(hub, "a1", [late], buffer_id="buf-late")["stored"] == 1
    with hub.context.read() as s:
        rows = s.execute(select(func.count()).select_from(db.TelemetryRollup)).scalar()
    clock.advance(15 * 86400)
    assert hub.apply_retention()["rolled_up"] == 1
    with hub.context.read() as s:
        assert s.execute(select(func.count()).select_from(db.TelemetryRollup)).scalar() == rows
    assert summaries(hub)["everything"]["windows"] == n + 1

    clock.advance(400 * 86400)  # past telemetry_rollup_days
    assert hub.apply_retention()["rollups_deleted"] == rows
    assert summaries(hub)["everything"]["windows"] == 0


def test_retention_is_bounded_per_round_and_the_upkeep_round_runs_it(
    home: Path, clock: ManualClock
) -> None:
    hub = make_service(home, clock, retention_batch=100)
    try:
        hub.add_device("a1", "plant-a", [], actor="admin:admin")
        records = [window(i, "a1", H0 + timedelta(seconds=30 * i)) for i in range(1, 251)]
        ingest(hub, "a1", records)
        before = exact_part(hub.telemetry_summary(since=H0, until=H0 + timedelta(hours=3)))
        clock.advance(15 * 86400)
        first = hub.apply_retention()
        assert (first["records_deleted"], first["more"]) == (100, True)
        assert raw_count(hub) == 150
        hub.refresh_expiring()  # the periodic upkeep round
        assert raw_count(hub) == 50
        last = hub.apply_retention()
        assert (last["records_deleted"], last["more"]) == (50, False)
        after = exact_part(hub.telemetry_summary(since=H0, until=H0 + timedelta(hours=3)))
        assert after == before
    finally:
        hub.close()


def test_old_device_reports_go_but_each_devices_newest_stays(
    hub: HubService, clock: ManualClock
) -> None:
    for day in range(3):
        hub.record_report("a1", {"day": day})
        clock.advance(86400)
    hub.record_report("b1", {"day": 0})
    clock.advance(20 * 86400)
    assert hub.apply_retention()["reports_deleted"] == 2
    with hub.context.read() as s:
        kept = s.execute(select(db.DeviceReport.device_id, db.DeviceReport.report)).all()
    assert sorted((d, r["day"]) for d, r in kept) == [("a1", 2), ("b1", 0)]


def test_replicas_ingesting_the_same_batches_at_once_store_each_record_once(
    hub: HubService, home: Path, clock: ManualClock, database_url: str
) -> None:
    # On PostgreSQL a second hub process on the same database; on SQLite (one hub process
    # per file) concurrent requests into one process.
    other = make_service(home, clock) if database_url.startswith("postgresql") else hub
    try:
        docs = [
            orjson.dumps(batch("a1", [window(i, "a1", H0) for i in range(k, k + 400)], H0))
            for k in (1, 201, 1, 401)
        ]
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda j: (hub if j % 2 else other).ingest_telemetry("a1", docs[j % 4]),
                    range(16),
                )
            )
        assert sum(r["stored"] for r in results) == 800
        assert sum(r["stored"] + r["duplicates"] for r in results) == 16 * 400
        assert raw_count(hub) == 800
    finally:
        if other is not hub:
            other.close()


def _alembic(url: str) -> tuple[Config, Any]:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    return cfg, db.make_engine(url)


def test_migration_0003_goes_down_and_up_and_fills_device_serving(database_url: str) -> None:
    db.migrate(database_url, "0002")
    cfg, engine = _alembic(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO devices (id, site, tags, created_at, reported) VALUES "
                    "('d1', 'p', '[]', '2026-01-01 00:00:00', :r)"
                ),
                {"r": '{"models": {"iris": {"active": {"version": 3}, "candidate": null}}}'},
            )
        db.migrate(database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT model, slot, version FROM device_serving")).all() == [
                ("iris", "active", "3")
            ]
            assert {"telemetry_records", "telemetry_rollups", "device_telemetry"} <= set(
                inspect(conn).get_table_names()
            )
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            assert "telemetry_records" not in names and "device_serving" not in names
            indexes = {i["name"] for i in inspect(conn).get_indexes("device_reports")}
            assert "ix_device_reports_received_at" not in indexes
        db.migrate(database_url)
        with engine.connect() as conn:
            assert "telemetry_rollups" in set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
