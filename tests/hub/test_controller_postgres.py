"""One rollout controller among many hub processes on one real PostgreSQL (issue 8).

The lease is a session advisory lock: one process holds it, the others wait; it goes to
another when its holder's connection ends. Two real ``hub serve`` processes on one database
show one controller acting; the leader killed with SIGKILL mid-rollout leaves a state the
other one resumes from, each stage started exactly once. (Needs MODELFLEET_TEST_PG_URL:
``bash scripts/with-postgres.sh pytest ...``.)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from modelfleet.clock import ManualClock, SystemClock
from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.db import make_engine
from modelfleet.hub.rollout_lease import ControllerLease
from modelfleet.hub.service import HubService, init_home
from tests.hub._rollouts import ADMIN, OPERATOR, Feed, actions, enrol_fleet, plan
from tests.hub._support import auth
from tests.hub._telemetry import batch, window
from tests.pg import pg_database

pytestmark = pytest.mark.postgres

LEASE_LINE = "holds the rollout controller lease"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


def test_one_process_holds_the_lease_and_it_moves_when_the_holder_goes(pg_url: str) -> None:
    engines = [make_engine(pg_url) for _ in range(2)]
    first, second = (ControllerLease(e) for e in engines)
    try:
        assert first.acquire() and first.acquire()  # held, and still held
        assert not second.acquire() and not second.held
        first.release()
        assert second.acquire()
        # The holder's connection dies (a killed process, a dropped network): the lock
        # goes with it, and the holder notices at its next acquire.
        with engines[0].connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                )
            )
        assert not second.acquire() and not second.held
        assert first.acquire()
    finally:
        first.release()
        second.release()
        for e in engines:
            e.dispose()


def test_the_rollout_flow_on_postgres(
    pg_url: str, tmp_path: Path, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    clock = ManualClock()
    init_home(tmp_path / "hub", clock, database_url=pg_url)
    service = HubService(load_hub_config(tmp_path / "hub"), clock)
    try:
        ids = enrol_fleet(service, 20)
        service.register_version("iris", onnx_bytes, actor=ADMIN)
        service.deploy("iris", 1, "all", actor=ADMIN)
        service.register_version("iris", onnx_bytes_v2, actor=ADMIN)
        ro = service.create_rollout(plan(), actor=OPERATOR)
        service.tick_rollouts()
        feed = Feed(service, clock)
        for _ in range(8):
            clock.advance(300)
            feed.round(ids)
            service.tick_rollouts()
        view = service.get_rollout(ro["id"])
        assert view["state"] == "completed", view["reason"]
        assert view["devices"] == {
            "total": 20,
            "waiting": 0,
            "assigned": 20,
            "running": 0,
            "rolled_back": 0,
            "offline": 20,
        }
        assert actions(service, ro["id"]).count("rollout-stage") == 3
        assert service.verify_audit() is None
    finally:
        service.close()


# -- two real hub processes ----------------------------------------------------------------


def _serve(home: Path, tmp_path: Path, name: str) -> tuple[Process, str]:
    port = free_port()
    args = ["hub", "serve", "--home", str(home), "--port", str(port)]
    proc = start(name, modelfleet_cmd(*args, "--controller-interval-s", "0.3"), tmp_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.popen.poll() is None, proc.output()
        time.sleep(0.2)
    raise AssertionError(f"{name} did not start:\n{proc.tail(40)}")


def _until(what: str, predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class _Devices(threading.Thread):
    """Every device sends a good telemetry window for what it is assigned, every 0.3 s."""

    def __init__(self, url: str, admin: str, tokens: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.admin, self.tokens = url, admin, tokens
        self.stop = threading.Event()
        self.seq = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.wait(0.3):
                for device, token in self.tokens.items():
                    # The hub it talks to may be busy or restarting: next round.
                    with contextlib.suppress(httpx.HTTPError):
                        self._send(http, device, token)

    def _send(self, http: httpx.Client, device: str, token: str) -> None:
        (a,) = http.get(f"/api/v1/devices/{device}", headers=auth(self.admin)).json()["assignments"]
        self.seq += 1
        now = datetime.now(UTC)
        rollout = a["rollout_id"] if a["rollout_id"].startswith("ro-") else None
        record = window(
            self.seq, device, now - timedelta(milliseconds=50),
            version=str(a["production"]), rollout_id=rollout, ok=20,
        )  # fmt: skip
        http.post(
            f"/api/v1/devices/{device}/telemetry",
            json=batch(device, [record], now),
            headers=auth(token),
        )


def test_two_hub_processes_one_controller_and_a_killed_leader_is_resumed(
    pg_url: str, tmp_path: Path, onnx_bytes: bytes, onnx_bytes_v2: bytes
) -> None:
    home = tmp_path / "hub"
    admin = init_home(home, SystemClock(), database_url=pg_url)
    procs = dict([_serve(home, tmp_path, "hub-a")[::-1], _serve(home, tmp_path, "hub-b")[::-1]])
    feeder: _Devices | None = None
    try:
        _until("a lease holder", lambda: any(LEASE_LINE in p.output() for p in procs.values()))
        time.sleep(1.5)  # both have tried several times by now
        leaders = [url for url, p in procs.items() if LEASE_LINE in p.output()]
        assert len(leaders) == 1, "more than one process took the controller lease"
        leader_url = leaders[0]
        (other_url,) = [u for u in procs if u != leader_url]
        leader, other = procs[leader_url], procs[other_url]

        http = httpx.Client(base_url=other_url, timeout=30, headers=auth(admin))
        tokens = {}
        for i in range(10):
            r = http.post("/api/v1/devices", json={"id": f"d{i}", "site": "plant-a"})
            assert r.status_code == 201, r.text
            tokens[f"d{i}"] = r.json()["token"]
        for blob in (onnx_bytes, onnx_bytes_v2):
            up = http.post("/api/v1/blobs", content=blob).json()["sha256"]
            assert http.post("/api/v1/models/iris/versions", json={"blob": up}).status_code == 201
        assert (
            http.post(
                "/api/v1/deployments", json={"model": "iris", "version": 1, "all": True}
            ).status_code
            == 201
        )
        doc = plan(
            stages=[
                {"name": "canary", "percent": 20, "soak": 2},
                {"name": "half", "percent": 50, "soak": 2},
                {"name": "full", "percent": 100, "soak": 0},
            ],
            gates=[
                {"metric": "error_rate", "max": 0.5, "min_samples": 10, "consecutive": 1},
                {"metric": "guard_rollbacks", "max": 0},
            ],
        )
        r = http.post("/api/v1/rollouts", json=doc)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        feeder = _Devices(other_url, admin, tokens)
        feeder.start()

        def view() -> dict[str, Any]:
            body: dict[str, Any] = http.get(f"/api/v1/rollouts/{rid}").json()
            return body

        _until("stage 1", lambda: view()["stage_index"] >= 1)
        leader.popen.kill()  # SIGKILL: no shutdown, the lease goes with its connection
        leader.popen.wait(timeout=10)
        _until("the other process to take the lease", lambda: LEASE_LINE in other.output())
        _until("the rollout to complete", lambda: view()["state"] == "completed", timeout=120)

        entries = http.get("/api/v1/audit", params={"limit": 100_000}).json()["entries"]
        mine = sorted((e for e in entries if e["subject"] == rid), key=lambda e: e["seq"])
        stages = [e["details"]["stage"] for e in mine if e["action"] == "rollout-stage"]
        assert stages == [0, 1, 2], "a stage was skipped or repeated"
        assert [e["action"] for e in mine].count("rollout-complete") == 1
        names = {url: f"{os.uname().nodename}:{p.popen.pid}" for url, p in procs.items()}
        by_controller = [e["details"].get("controller") for e in mine if e["actor"] == "controller"]
        assert set(by_controller) <= {names[leader_url], names[other_url]}
        # While both ran, only the leader acted; after the kill, only the other.
        first_other = by_controller.index(names[other_url])
        assert set(by_controller[:first_other]) == {names[leader_url]}
        assert set(by_controller[first_other:]) == {names[other_url]}
        assert http.get("/api/v1/audit/verify").json()["intact"] is True
    finally:
        if feeder is not None:
            feeder.stop.set()
            feeder.join(timeout=10)
        for p in procs.values():
            p.stop()
