"""Telemetry across real processes (issue 7): a 72 h hub outage, and kill -9 while forwarding.

The agent's hub is a :class:`TelemetryHub` fixture. Once the hub side of issue 7 is merged
(``modelfleet.hub.api.telemetry`` exists) it is the real ``modelfleet hub serve``: ``down``
kills it with -9, ``up`` restarts it on its port, ``stored`` reads its
``telemetry_records`` table. Until then it is the real hub behind the fake ingest of
:mod:`tests.telemetry.fake_ingest` (which answers ``POST /api/v1/devices/{id}/telemetry`` as
contract 1 says, with a unique index, and proxies every other request to the hub). The
tests are the same either way (both were run: the real-hub variant on a local merge of the
two branches).

Time is compressed with ``MODELFLEET_SIM_CLOCK`` (the agent's ScaledClock): 72 h of windows
pass in about 35 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from tests.e2e.conftest import Hub, cli, wait_for
from tests.helpers import logistic_onnx
from tests.telemetry.fake_ingest import stored_identities, stored_windows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

OUTAGE_S = 72 * 3600
RATE = 4000.0  # simulated seconds per real second: 72 h in 65 s
DEVICE = "edge-tel"


@dataclass
class TelemetryHub:
    """The hub as the agent sees it, with its telemetry store.

    Attributes:
        url: the agent's ``--hub``.
        hub: the real hub, for enrolling and deploying.
    """

    url: str
    hub: Hub
    _start: Callable[[], Process]
    _db: Path  # the fake's database, or the real hub's home
    _proc: Process | None = None
    _log: list[Process] = field(default_factory=list)

    def up(self) -> None:
        """Start (or restart) what ingests, and wait until it answers."""
        self._proc = self._start()
        self._log.append(self._proc)
        assert wait_for(lambda: httpx.get(f"{self.url}/api/v1/health").status_code == 200, 30)

    def down(self) -> None:
        """Kill -9 what ingests (an outage; a batch in flight dies with it)."""
        if self._proc is not None:
            self._proc.popen.kill()
            self._proc.popen.wait(10)
            self._proc = None

    def stored(self) -> list[tuple[str, str, int]]:
        """(device_id, buffer_id, seq) of every stored record."""
        if not REAL_INGEST:
            return stored_identities(self._db)
        db = sqlite3.connect(self._db / "hub.db")
        try:
            rows = db.execute("SELECT device_id, buffer_id, seq FROM telemetry_records")
            return [(str(d), str(b), int(q)) for d, b, q in rows]
        finally:
            db.close()

    def windows(self) -> list[dict[str, object]]:
        if not REAL_INGEST:
            return stored_windows(self._db)
        db = sqlite3.connect(self._db / "hub.db")
        try:
            rows = db.execute("SELECT body FROM telemetry_records WHERE kind = 'window'")
            return [json.loads(r[0]) for r in rows]
        finally:
            db.close()

    def duplicates(self) -> int:
        """Records received again and not stored (since the last restart)."""
        if not REAL_INGEST:
            return int(httpx.get(f"{self.url}/_fake/count").json()["duplicates"])
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith('modelfleet_hub_telemetry_records_total{result="duplicate"}'):
                return int(float(line.split()[-1]))
        return -1

    def stop(self) -> None:
        self.down()


#: The hub serves the ingest endpoint itself once the hub side of issue 7 is merged.
REAL_INGEST = importlib.util.find_spec("modelfleet.hub.api.telemetry") is not None


@pytest.fixture
def telemetry_hub(hub: Hub, tmp_path: Path) -> Iterator[TelemetryHub]:
    """The real `modelfleet hub serve` when it has the ingest endpoint (down/up kill -9 and
    restart it on its port; stored rows read from its `telemetry_records` table), else the
    real hub behind the fake ingest (down/up kill -9 and restart the fake)."""
    if REAL_INGEST:
        port = hub.url.rsplit(":", 1)[1]
        cmd = modelfleet_cmd("hub", "serve", "--home", str(hub.home), "--port", port)
        th = TelemetryHub(hub.url, hub, lambda: start("hub-again", cmd, tmp_path), hub.home)
        th._proc = hub.proc
    else:
        port = str(free_port())
        db = tmp_path / "ingest.sqlite3"
        cmd = [sys.executable, "-m", "tests.telemetry.fake_ingest", "--port", port,
               "--db", str(db), "--upstream", hub.url]  # fmt: skip
        th = TelemetryHub(
            f"http://127.0.0.1:{port}", hub, lambda: start("ingest", cmd, tmp_path), db
        )
        th.up()
    yield th
    th.stop()


def enroll_and_deploy(th: TelemetryHub, tmp_path: Path) -> Path:
    """Enroll the device, register and deploy one model to it; return its token file."""
    added = cli("device", "add", DEVICE, "--site", "plant-a", "--json", env=th.hub.env())
    assert added.returncode == 0, added.stderr
    token_file = tmp_path / "device.token"
    token_file.write_text(json.loads(added.stdout)["token"])
    token_file.chmod(0o600)
    model, x = logistic_onnx(seed=0)
    (tmp_path / "m.onnx").write_bytes(model)
    np.save(tmp_path / "sample.npy", x[:5])
    reg = cli("model", "register", "m", str(tmp_path / "m.onnx"), "--sample-input",
              str(tmp_path / "sample.npy"), env=th.hub.env())  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    dep = cli("deploy", "m", "1", "--devices", DEVICE, env=th.hub.env())
    assert dep.returncode == 0, dep.stderr
    return token_file


def start_agent(
    th: TelemetryHub, tmp_path: Path, token_file: Path, rate: float, name: str = "agent"
) -> tuple[str, Path, Process]:
    port = free_port()
    state = tmp_path / "state"
    env = {**os.environ, "MODELFLEET_SIM_CLOCK": f"{time.time():.3f}:{rate}"}
    proc = start(
        name,
        modelfleet_cmd(
            "agent",
            "run",
            "--hub",
            th.url,
            "--device-id",
            DEVICE,
            "--token-file",
            str(token_file),
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--poll-interval",
            "0.5",
            "--trust-root",
            str(th.hub.home / "trust-root.json"),
            "--telemetry-window-s",
            "60",
        ),
        tmp_path,
        env,
    )
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/v2/health/live").status_code == 200), proc.output()
    return url, state, proc


X = np.random.default_rng(0).standard_normal((1, 10)).astype(np.float32)
BODY = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32",
                    "data": X.ravel().tolist()}]}  # fmt: skip


def serving_v1(url: str) -> bool:
    r = httpx.post(f"{url}/v2/models/m/infer", json=BODY, timeout=10)
    return r.status_code == 200 and r.json()["model_version"] == "1"


def buffer_state(state: Path) -> tuple[int, int, set[int]]:
    """(appended_total, evicted_total, seqs still waiting) read from the agent's buffer file."""
    db = sqlite3.connect(state / "telemetry.sqlite3")
    try:
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        ev = db.execute("SELECT value FROM meta WHERE key = 'evicted_total'").fetchone()
        left = {int(r[0]) for r in db.execute("SELECT seq FROM records")}
        return (int(seq[0]) if seq else 0), (int(ev[0]) if ev else 0), left
    finally:
        db.close()


def status(state: Path) -> dict[str, object]:
    r = cli("agent", "status", "--state-dir", str(state), "--json")
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return data


def assert_exactly_once(th: TelemetryHub, state: Path) -> tuple[int, int]:
    """Every appended record is stored exactly once or still waits; (appended, stored)."""
    appended, evicted, left = buffer_state(state)
    stored = th.stored()
    seqs = [s for d, _b, s in stored if d == DEVICE]
    assert len(seqs) == len(set(seqs)), "a record was stored twice"
    assert len({b for d, b, _s in stored if d == DEVICE}) == 1  # one buffer, one identity space
    assert evicted == 0
    assert not set(seqs) & left, "a record acknowledged by the hub was kept"
    assert set(seqs) | left == set(range(1, appended + 1)), "a record was lost"
    return appended, len(seqs)


def worker_cmd(th: TelemetryHub, state: Path, token_file: Path, *extra: str) -> list[str]:
    """The lean process running the agent's real forwarder over the agent's buffer file."""
    return [sys.executable, "-m", "tests.telemetry.forward_worker",
            "--buffer", str(state / "telemetry.sqlite3"), "--hub", th.url,
            "--device-id", DEVICE, "--token-file", str(token_file), *extra]  # fmt: skip


class Client(threading.Thread):
    """Keeps sending requests; every answer must be a 200."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.answers: dict[int, int] = {}

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                try:
                    code = http.post(f"{self.url}/v2/models/m/infer", json=BODY).status_code
                except httpx.HTTPError:
                    code = -1
                self.answers[code] = self.answers.get(code, 0) + 1
                time.sleep(0.002)


def test_a_72h_hub_outage_loses_no_window_and_doubles_none(
    telemetry_hub: TelemetryHub, tmp_path: Path
) -> None:
    th = telemetry_hub
    token_file = enroll_and_deploy(th, tmp_path)
    url, state, agent = start_agent(th, tmp_path, token_file, RATE)
    assert wait_for(lambda: serving_v1(url), 60), agent.output()
    client = Client(url)
    client.start()
    assert wait_for(lambda: len(th.stored()) > 0, 30), agent.output()

    th.down()
    time.sleep(OUTAGE_S / RATE)  # 72 h of the agent's clock
    during = status(state)["telemetry"]
    assert isinstance(during, dict)
    assert during["records"] > 4000 and during["last_error"]  # buffered, and it says why
    th.up()

    assert wait_for(lambda: status(state)["telemetry"]["records"] < 20, 60), agent.output()  # type: ignore[index]
    client.stop.set()
    client.join(15)
    agent.popen.send_signal(signal.SIGINT)
    agent.popen.wait(30)

    assert set(client.answers) == {200}, client.answers  # served throughout
    assert client.answers[200] > 1000
    assert_exactly_once(th, state)  # already: each record stored once or still buffered
    # what the agent closed since (and at shutdown) goes out through its forwarder too
    drain = start("drain", worker_cmd(th, state, token_file, "--drain"), tmp_path)
    assert drain.popen.wait(240) == 0, drain.output()
    appended, stored = assert_exactly_once(th, state)
    assert stored == appended
    stopped = status(state)["telemetry"]  # a stopped agent's status reads the buffer file
    assert isinstance(stopped, dict) and stopped["appended_total"] == appended
    assert stopped["evicted_total"] == 0
    shown = cli("agent", "status", "--state-dir", str(state))
    assert "Telemetry buffer" in shown.stdout, shown.stdout + shown.stderr

    # the outage's windows arrived, each with its own device time
    windows = [w for w in th.windows() if w["model"] == "m" and w["role"] == "production"]
    closes = sorted(datetime.fromisoformat(str(w["closed_at"])).timestamp() for w in windows)
    span_h = (closes[-1] - closes[0]) / 3600
    assert span_h >= 72, span_h
    assert len(windows) >= 72 * 60, len(windows)  # one per minute of device time, at least
    served = sum(int(w["requests"]["ok"]) for w in windows)  # type: ignore[index]
    assert served >= client.answers[200] * 0.99  # counted (minus the last partial windows)
    print(f"outage 72 h in {OUTAGE_S / RATE:.0f} s: requests {client.answers[200]} all 200; "
          f"appended {appended}, stored {stored}, windows of m {len(windows)} over "
          f"{span_h:.1f} h, evicted 0")  # fmt: skip


AGENT_KILLS = 5
WORKER_KILLS = 45


def test_kill_9_during_forwarding_50_times_loses_nothing_and_doubles_nothing(
    telemetry_hub: TelemetryHub, tmp_path: Path
) -> None:
    th = telemetry_hub
    token_file = enroll_and_deploy(th, tmp_path)
    rng = random.Random(7)
    pending_at_kill = 0
    for i in range(AGENT_KILLS):  # the real `agent run`, killed while it forwards
        url, state, agent = start_agent(th, tmp_path, token_file, 1200.0, f"agent-{i}")
        assert wait_for(lambda: serving_v1(url), 60), agent.output()  # noqa: B023
        time.sleep(rng.uniform(0.05, 0.6))
        agent.popen.kill()
        agent.popen.wait(10)
        pending_at_kill += bool(buffer_state(state)[2])
    worker = worker_cmd(th, state, token_file)
    for i in range(WORKER_KILLS):  # the agent's real forwarder over its buffer file
        proc = start(f"worker-{i}", [*worker, "--burst", str(rng.randrange(1500, 4000))], tmp_path)
        assert wait_for(lambda: "started" in proc.output(), 20), proc.output()  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.15))
        proc.popen.kill()
        proc.popen.wait(10)
        pending_at_kill += bool(buffer_state(state)[2])
    drain = start("drain", [*worker, "--drain"], tmp_path)
    assert drain.popen.wait(240) == 0, drain.output()

    appended, stored = assert_exactly_once(th, state)
    assert appended == stored and appended > 10_000
    assert pending_at_kill >= 40  # most kills hit a buffer with records in flight
    print(f"kills: {AGENT_KILLS} agent + {WORKER_KILLS} worker; appended {appended}, "
          f"stored {stored}; kills with records pending {pending_at_kill}; duplicates "
          f"re-sent since the last ingest restart {th.duplicates()}")  # fmt: skip
