"""Telemetry drained into a local hub (issue 7): windows per second one ``hub serve``
process stores, on SQLite and on PostgreSQL.

A real ``modelfleet hub serve`` process on loopback; a few concurrent senders, one device
each, post batches of realistic windows (four histograms with several non-zero buckets,
every counter group, a rollout id) over HTTP, as the agent's forwarder does. The batches
are encoded before the clock starts, so the figure is the hub's, not the senders'. Every
window is new (no duplicates), and the count stored is checked at the end.

``python -m benchmarks.telemetry_hub [--database-url URL] [--windows N] [--batch B]
[--senders S]``; with ``--database-url postgres`` a fresh database is made on the server
named by ``MODELFLEET_TEST_PG_URL`` (``bash scripts/with-postgres.sh`` exports it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from modelfleet.demo import free_port, modelfleet_cmd, start
from modelfleet.hub.service import init_home
from modelfleet.monitoring.histogram import LATENCY_EDGES_S, Histogram
from modelfleet.telemetry.wire import CONFIDENCE_EDGES, encode_histogram

RESULTS = Path("bench-results")


def realistic_window(seq: int, device: str, closed: datetime, rng: random.Random) -> dict[str, Any]:
    """One minute of a busy device: ~600 requests, four histograms."""
    hists = {}
    for key, edges, name, scale in (
        ("latency_s", LATENCY_EDGES_S, "latency_s.v1", 0.004),
        ("compute_s", LATENCY_EDGES_S, "latency_s.v1", 0.002),
        ("queue_s", LATENCY_EDGES_S, "latency_s.v1", 0.0005),
        ("confidence", CONFIDENCE_EDGES, "confidence.v1", 0.0),
    ):
        h = Histogram(edges)
        for _ in range(60):  # a sample is enough to spread the buckets realistically
            h.record(rng.random() if scale == 0.0 else rng.lognormvariate(0, 0.6) * scale)
        h.counts = [n * 10 for n in h.counts]
        hists[key] = encode_histogram(h, name)
    return {
        "kind": "window",
        "seq": seq,
        "device_id": device,
        "model": "detector",
        "version": "7",
        "role": "production" if seq % 10 else "candidate",
        "rollout_id": "ro-2026-03-01-a1b2c3",
        "opened_at": (closed - timedelta(seconds=60)).isoformat(),
        "closed_at": closed.isoformat(),
        "requests": {"ok": 590 + seq % 7, "client_error": 3, "server_error": seq % 2, "timeout": 0},
        **hists,
        "guard": {"breaches": 0, "rollbacks": 0},
        "shadow": {"compared": 40, "disagreed": seq % 3, "dropped": 0},
        "cascade": {"local": 580, "upstream": 12, "failed": 0},
        "refusals": 0,
        "updates": 0,
    }


def _pg_database() -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = os.environ.get("MODELFLEET_TEST_PG_URL")
    if not base:
        sys.exit("--database-url postgres needs MODELFLEET_TEST_PG_URL (scripts/with-postgres.sh)")
    name = f"modelfleet_bench_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def run(database_url: str, windows: int, batch: int, senders: int) -> dict[str, Any]:
    """Start a hub, drain ``windows`` windows into it; the measured figures."""
    backend = "postgresql" if database_url.startswith("postgres") else "sqlite"
    if database_url == "postgres":
        database_url = _pg_database()
    with tempfile.TemporaryDirectory(prefix="mf-telbench-") as tmp:
        home = Path(tmp) / "hub"
        token = init_home(home, database_url=database_url or None)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
        args = modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port))
        proc = start("hub", args, Path(tmp), env=env)
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/api/v1/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            devices = [f"bench-{i}" for i in range(senders)]
            for d in devices:
                httpx.post(f"{url}/api/v1/devices", json={"id": d, "site": "plant"},
                           headers=headers).raise_for_status()  # fmt: skip
            rng = random.Random(7)
            now = datetime.now(UTC)
            per_sender = windows // senders
            bodies: dict[str, list[bytes]] = {}
            for d in devices:
                records = [
                    realistic_window(i, d, now - timedelta(seconds=60 * (per_sender - i)), rng)
                    for i in range(1, per_sender + 1)
                ]
                bodies[d] = [
                    orjson.dumps(
                        {
                            "format": 1,
                            "device_id": d,
                            "buffer_id": "bench",
                            "sent_at": now.isoformat(),
                            "records": records[k : k + batch],
                            "buffered": 0,
                            "evicted_total": 0,
                        }
                    )
                    for k in range(0, len(records), batch)
                ]
            mean_bytes = sum(len(b) for bs in bodies.values() for b in bs) / (per_sender * senders)
            stored = [0] * senders
            errors: list[str] = []

            def send(i: int, device: str) -> None:
                with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
                    for body in bodies[device]:
                        r = http.post(f"/api/v1/devices/{device}/telemetry", content=body)
                        if r.status_code != 200:
                            errors.append(r.text[:200])
                            return
                        stored[i] += r.json()["stored"]

            threads = [threading.Thread(target=send, args=(i, d)) for i, d in enumerate(devices)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            if errors:
                raise RuntimeError(f"ingest failed: {errors[0]}")
            total = sum(stored)
            if total != per_sender * senders:
                raise RuntimeError(f"stored {total}, sent {per_sender * senders}")
        finally:
            proc.stop()
    return {
        "backend": backend,
        "windows": total,
        "batch": batch,
        "senders": senders,
        "seconds": round(elapsed, 3),
        "windows_per_s": round(total / elapsed),
        "mean_window_bytes": round(mean_bytes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.telemetry_hub", description=__doc__)
    parser.add_argument("--database-url", default="", help="'' = SQLite; 'postgres' = fresh PG db")
    parser.add_argument("--windows", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args(argv)
    result = run(args.database_url, args.windows, args.batch, args.senders)
    print(json.dumps(result))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"telemetry-hub-{result['backend']}-{stamp}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
