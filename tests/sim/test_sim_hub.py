"""Simulated fleets of a few hundred devices against a real ``hub serve``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from statistics import mean

import httpx
import pytest

from modelfleet.sim import parse_faults
from tests.sim.conftest import Hub, make_sim

pytestmark = pytest.mark.e2e


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def _confidence_mean(summary: dict) -> float:  # type: ignore[type-arg]
    h = summary["confidence"]
    n = sum(c for _, c in h["counts"])
    return float(h["sum"]) / n


def test_a_fleet_enrols_converges_on_deploys_and_its_telemetry_shows(hub: Hub) -> None:
    n = 300
    with make_sim(hub, "conv", n, site="conv") as sim:
        ids = _ids("conv", n)
        hub.client.deploy("m", 1, ids)
        sim.run_for(600, until=lambda: sim.serving() == {"m": {"v1": n}})
        assert sim.serving() == {"m": {"v1": n}}
        sim.run_for(120)  # a window of v1 everywhere
        hub.client.deploy("m", 2, ids)
        sim.run_for(600, until=lambda: sim.serving() == {"m": {"v2": n}})
        assert sim.serving() == {"m": {"v2": n}}
        sim.run_for(120)  # a window of v2 everywhere
        summary = sim.summary()
    assert summary["errors"] == 0, summary["last_errors"]
    assert summary["director_layout"] in ("shared", "per-device")
    assert summary["checkins"] >= 3 * n and summary["bytes_received_per_device"] > 0
    # the hub reads the reports as it reads the agent's: serving v2, previous v1
    devices = {d["id"]: d for d in hub.client.list_devices() if d["id"].startswith("conv-")}
    assert len(devices) == n
    for d in devices.values():
        assert d["report"]["models"]["m"]["active"]["version"] == 2
        assert d["report"]["models"]["m"]["previous"]["version"] == 1
        assert d["telemetry"]["highest_seq"] > 0
    v1, v2 = hub.summary(site="conv", version="1"), hub.summary(site="conv", version="2")
    assert v1["devices"] == n and v2["devices"] == n
    assert v2["requests"]["ok"] > 60 * n * 0.8  # ~1 request/s for a minute and more
    assert summary["telemetry"]["acked"] == summary["telemetry"]["windows"] + summary[
        "telemetry"]["events"]  # fmt: skip


def test_each_fault_shows_in_the_hubs_telemetry(hub: Hub) -> None:
    n = 160
    faults = parse_faults(
        [
            "version=2:error_rate=0.3",
            "version=2:latency_x=10",
            "version=2:drift=0.4",
            "site=flt-1:skew=-3600",
            "site=flt-0:fraction=0.5:late=2",
            "site=flt-0:fraction=0.3:offline_for=20m:offline_at=5m",
        ]
    )
    with make_sim(hub, "flt", n, site="flt", sites=2, faults=tuple(faults)) as sim:
        t0 = sim.clock.now()
        ids = _ids("flt", n)
        hub.client.deploy("m", 1, ids)
        sim.run_for(300)
        start = sim.clock.now()
        hub.client.deploy("m", 2, ids)
        sim.run_for(1500)
        summary = sim.summary()
        late = [d for d in sim.devices if d.effects.late]
        offline = [d for d in sim.devices if d.effects.offline]
        skewed = {d.device_id for d in sim.devices if d.effects.skew_s}
    assert summary["offline_ticks"] > 0 and summary["errors"] == 0, summary["last_errors"]
    since = start.isoformat()
    v1 = hub.summary(site="flt-0", version="1")
    v2 = hub.summary(site="flt-0", version="2", since=since)
    # erroring: a third of v2's requests fail; slow: p99 ten times; drifting: confidence down
    assert v1["error_rate"] < 0.02 and 0.25 < v2["error_rate"] < 0.35
    assert v2["latency_p99_s"] > 5 * v1["latency_p99_s"]
    assert _confidence_mean(v1) - _confidence_mean(v2) > 0.3
    # clock skew: the hub measures an hour more on the skewed site's devices
    views = [d for d in hub.client.list_devices() if d["id"].startswith("flt-")]
    skew = {d["id"]: d["telemetry"]["clock_skew_s"] for d in views}
    gap = mean(skew[i] for i in skewed) - mean(v for i, v in skew.items() if i not in skewed)
    assert 3300 < gap < 3900
    # offline for 20 minutes: no check-in then, yet their windows of that time arrived late
    assert offline and all(d.tally.offline_ticks for d in offline)
    during = {"since": (t0 + timedelta(minutes=7)).isoformat(),
              "until": (t0 + timedelta(minutes=24)).isoformat()}  # fmt: skip
    assert hub.summary(site="flt-0", **during)["devices"] == n // 2
    # late and out of order: stored in another order than their seqs, none lost
    seqs = [w["seq"] for w in _windows(hub, late[0].device_id)]
    assert seqs != sorted(seqs, reverse=True)
    for d in late:
        assert d.tally.records_acked + len(d.buffer) == d.next_seq - 1


def _windows(hub: Hub, device_id: str) -> list[dict]:  # type: ignore[type-arg]
    return hub.client.device_windows(device_id, limit=200)


def test_a_crashing_version_is_rolled_back_by_the_local_guard_and_the_hub_follows(
    hub: Hub,
) -> None:
    n = 100
    faults = parse_faults(["version=3:crash_per_h=600:guard_crashes=2"])
    with make_sim(hub, "crash", n, site="crash", faults=tuple(faults)) as sim:
        ids = _ids("crash", n)
        hub.client.deploy("m", 1, ids)
        sim.run_for(300, until=lambda: sim.serving() == {"m": {"v1": n}})
        hub.client.deploy("m", 3, ids)
        sim.run_for(900)
        summary = sim.summary()
    assert sim.serving() == {"m": {"v1": n}}
    assert summary["guard_rollbacks"] == n == summary["rollbacks_acknowledged"]
    assert summary["rollbacks_unacknowledged"] == 0
    for d in hub.client.list_devices():
        if d["id"].startswith("crash-"):
            (a,) = d["assignments"]
            assert (a["production"], a["previous"]) == (1, None)
            assert a["rollout_id"].startswith("device-rollback-")
    v3 = hub.summary(site="crash", version="3")
    assert v3["guard"]["rollbacks"] == n
    crashed = [w for w in _windows(hub, "crash-00000") if w.get("crashes")]
    assert crashed and crashed[0]["version"] == "3"


def _tamper_timestamps(hub: Hub, prefix: str) -> Callable[[], None]:
    """Change a signed field of each device's director timestamp without re-signing it
    (per-device rows in the hub database, else the shared file); returns the undo."""
    db_path = hub.home / "hub.db"
    with sqlite3.connect(db_path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "director_devices" in tables:
            rows = db.execute(
                "SELECT device_id, timestamp_json, timestamp_version FROM director_devices "
                "WHERE device_id LIKE ?",
                (f"{prefix}-%",),
            ).fetchall()
            for device_id, raw, _ in rows:
                doc = json.loads(raw)
                doc["signed"]["version"] += 1000  # not re-signed
                db.execute(
                    "UPDATE director_devices SET timestamp_json = ?, timestamp_version = ? "
                    "WHERE device_id = ?",
                    (json.dumps(doc).encode(), doc["signed"]["version"], device_id),
                )

            def undo_rows() -> None:
                with sqlite3.connect(db_path) as db:
                    db.executemany(
                        "UPDATE director_devices SET timestamp_json = ?, timestamp_version = ? "
                        "WHERE device_id = ?",
                        [(raw, version, device_id) for device_id, raw, version in rows],
                    )

            return undo_rows
    path = hub.director_metadata() / "timestamp.json"
    signed = path.read_bytes()
    doc = json.loads(signed)
    doc["signed"]["version"] += 1000
    path.chmod(0o644)
    path.write_text(json.dumps(doc))
    return lambda: path.write_bytes(signed)


def test_a_tampered_director_file_is_refused_by_every_simulated_device(hub: Hub) -> None:
    n = 20
    with make_sim(hub, "tamp", n, site="tamp") as sim:
        ids = _ids("tamp", n)
        hub.client.deploy("m", 1, ids)
        sim.run_for(300, until=lambda: sim.serving() == {"m": {"v1": n}})
        hub.client.deploy("m", 2, ids)
        undo = _tamper_timestamps(hub, "tamp")
        try:
            sim.run_for(300)
        finally:
            undo()
        summary = sim.summary()
    assert sim.serving() == {"m": {"v1": n}}
    assert summary["error_kinds"].get("MetadataVerificationError", 0) >= n
    assert all("signature verification failed" in e for e in summary["last_errors"])


def test_an_operator_token_that_may_not_enrol_is_a_clear_error(hub: Hub) -> None:
    viewer = httpx.post(
        f"{hub.url}/api/v1/tokens",
        json={"role": "viewer", "subject": "sim-viewer"},
        headers={"Authorization": f"Bearer {hub.token}"},
    ).json()["token"]
    from modelfleet.errors import ForbiddenError
    from modelfleet.sim import FleetSimulator, SimConfig

    with (
        FleetSimulator(SimConfig(hub_url=hub.url, token=viewer, devices=2, prefix="no")) as sim,
        pytest.raises(ForbiddenError, match="may not"),
    ):
        sim.enrol()
