"""The per-device director at fleet scale (issue 8, ADR 0014): metadata bytes a device
downloads per change, and the wall time to stage and sign a stage's desired states.

In process, on a real :class:`~modelfleet.hub.service.HubService` (SQLite in a temporary
home, or a fresh PostgreSQL database with ``--database-url postgres``). For each fleet size
the devices and their assignments are inserted in bulk and signed once (the "initial"
figure: every device's first repository); then a stage of ``--stage`` devices (10,000 or
the whole fleet when smaller) is moved to version 2 exactly as a rollout stage does it:
``Director.stage`` inside one write transaction, ``Director.publish`` after the commit.

Bytes per device per change = the device's timestamp + snapshot + targets after the change
(what python-tuf downloads on a refresh; the root only on rotation), plus the desired state
itself, shown apart. The old single director targets (one entry per device) is computed
for comparison.

``python -m benchmarks.director [--sizes 1000,10000,100000] [--stage 10000]
[--database-url postgres] [--signing-workers N]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from benchmarks.telemetry_hub import _pg_database
from modelfleet.clock import SystemClock
from modelfleet.hub import db
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home

RESULTS = Path("bench-results")
_BULK = 5000


def _model(seed: int) -> bytes:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from modelfleet.packaging.sklearn import sklearn_to_onnx

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    return sklearn_to_onnx(LogisticRegression().fit(x, y), x)


def _old_director_targets_bytes(n: int) -> int:
    """Size of the single director targets of issues 2-7 listing ``n`` devices."""
    from tuf.api.metadata import Metadata, TargetFile, Targets

    targets = {
        f"devices/device-{i:06d}/desired-state.json": TargetFile(
            700, {"sha256": f"{i:064x}"}, f"devices/device-{i:06d}/desired-state.json"
        )
        for i in range(min(n, 1000))
    }
    one_k = len(Metadata(Targets(targets=targets)).to_bytes())
    return round(one_k * n / min(n, 1000))


def _workers_cpu(pool: Any) -> float:
    """CPU seconds used so far by the signing processes (Linux /proc; 0 where unknown)."""
    executor = getattr(pool, "_pool", None) if pool is not None else None
    total = 0.0
    for pid in getattr(executor, "_processes", None) or {}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_size(n: int, stage: int, database_url: str, workers: int | None = None) -> dict[str, Any]:
    """One fleet size: bulk set-up, initial signing, one stage's change; the figures."""
    with tempfile.TemporaryDirectory(prefix="mf-dirbench-") as tmp:
        home = Path(tmp) / "hub"
        url = _pg_database() if database_url == "postgres" else (database_url or None)
        init_home(home, database_url=url)
        service = HubService(load_hub_config(home), SystemClock())
        pool = service.trust.device_signer._pool
        if workers is not None and pool is not None:
            pool.workers = workers  # 1: sign in the hub process only
        try:
            for seed in (0, 1):
                service.register_version("m", _model(seed), actor="bench")
            ids = [f"device-{i:06d}" for i in range(n)]
            now = datetime.now(UTC)
            with service.context.write() as s:
                mv = s.scalar(select(db.ModelVersion).where(db.ModelVersion.version == 1))
                assert mv is not None
                mv.published = True
                for k in range(0, n, _BULK):
                    chunk = ids[k : k + _BULK]
                    s.execute(
                        insert(db.Device),
                        [{"id": d, "site": "plant", "tags": [], "created_at": now} for d in chunk],
                    )
                    s.execute(
                        insert(db.Assignment),
                        [
                            {
                                "device_id": d, "model": "m", "production_version": 1,
                                "mode": "full", "share": 0.0, "slo": {}, "rollout_id": "",
                                "updated_at": now,
                            }
                            for d in chunk
                        ],
                    )  # fmt: skip
            t0 = time.perf_counter()
            with service.context.write() as s:
                service.director.stage(s, ids)
            t_stage0 = time.perf_counter() - t0
            service.director.publish()
            t_initial = time.perf_counter() - t0
            moved = ids[: min(stage, n)]
            c0 = time.process_time()
            w0 = _workers_cpu(pool)
            t0 = time.perf_counter()
            with service.context.write() as s:
                for k in range(0, len(moved), _BULK):
                    s.execute(
                        update(db.Assignment)
                        .where(db.Assignment.device_id.in_(moved[k : k + _BULK]))
                        .values(production_version=2, previous_version=1)
                    )
                s.execute(
                    update(db.ModelVersion)
                    .where(db.ModelVersion.version == 2)
                    .values(published=True)
                )
                service.director.stage(s, moved)
            t_stage = time.perf_counter() - t0
            service.director.publish()
            t_change = time.perf_counter() - t0
            c_change = time.process_time() - c0
            w_change = _workers_cpu(pool) - w0
            with service.context.read() as s:
                rows = s.execute(
                    select(
                        db.DirectorDevice.timestamp_json,
                        db.DirectorDevice.snapshot_json,
                        db.DirectorDevice.targets_json,
                        db.DirectorDevice.listed,
                    ).where(db.DirectorDevice.device_id.in_(moved[:1000]))
                ).all()
            meta = [len(r[0]) + len(r[1]) + len(r[2]) for r in rows]
            desired = [len(r[3]) for r in rows]
        finally:
            service.close()
    return {
        "devices": n,
        "stage_devices": len(moved),
        "metadata_bytes_per_device": round(statistics.mean(meta)),
        "metadata_bytes_max": max(meta),
        "desired_state_bytes": round(statistics.mean(desired)),
        "old_single_targets_bytes": _old_director_targets_bytes(n),
        "initial_sign_s": round(t_initial, 2),
        "initial_stage_s": round(t_stage0, 2),
        "stage_s": round(t_stage, 3),
        "publish_s": round(t_change - t_stage, 3),
        "stage_and_publish_s": round(t_change, 3),
        "stage_and_publish_cpu_s": round(c_change, 3),
        "signing_workers_cpu_s": round(w_change, 3),
        "load_average": os.getloadavg()[0],
        "signing_workers": pool.workers if pool is not None else 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.director", description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--stage", type=int, default=10_000)
    parser.add_argument("--database-url", default="", help="'' = SQLite; 'postgres' = fresh PG db")
    parser.add_argument(
        "--signing-workers", type=int, default=None, help="signing processes (default: CPUs)"
    )
    args = parser.parse_args(argv)
    backend = "postgresql" if args.database_url.startswith("postgres") else "sqlite"
    results = []
    for n in (int(v) for v in args.sizes.split(",") if v.strip()):
        result = {
            "backend": backend,
            **run_size(n, args.stage, args.database_url, args.signing_workers),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"director-{backend}-{stamp}.json").write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MODELFLEET_LOG_LEVEL", "WARNING")
    sys.exit(main())
