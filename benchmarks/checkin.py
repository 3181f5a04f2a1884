"""Device check-ins per second on one ``hub serve`` process (issue 8), SQLite or PostgreSQL.

A real ``modelfleet hub serve`` on loopback with ``--devices`` enrolled devices, each with a
model deployed; ``wrk`` (one thread, ``--connections`` connections) plays the fleet, every
request with the next device's own token. Two ways of checking in:

* ``fast`` — what the agent does now: one ``POST /api/v1/devices/{id}/report`` whose answer
  carries the TUF versions; the report is the agent's unchanged status (only its
  ``last_check`` moves), the not-modified path. One request per check-in.
* ``refresh`` — what it did before: a TUF refresh of both repositories (root probe and
  timestamp of the catalog and of the director) and the report. Five requests per check-in.
* ``ceiling`` — ``GET /api/v1/whoami`` with the same tokens: the HTTP stack and token check
  alone, the most any authenticated route could do on this machine at this moment (the
  machine is shared; compare figures of one run).

``--hub-src DIR`` runs the hub from another checkout's ``src`` (e.g. the base commit, to
measure "before"; its director is the shared one, so ``refresh`` then reads
``/tuf/director/metadata/``).

``--before-src DIR`` also starts a second hub from another checkout's ``src`` (one with
per-device director repositories, e.g. a ``git worktree`` of the previous commit) on the
same home and database, and measures the two in turns, ``--rounds`` times: on a shared
machine only figures taken in one run, side by side, compare (the ``ratio`` rows). Both
run without a rollout controller then. The before hub's devices use tokens of the
``tokens`` table (what a hub before issue 10 knows); this hub's, device credentials;
``--before-credentials`` gives the before hub the same device credentials (a before tree
from issue 10 on). Each cell also says the hub process's CPU seconds during it
(``hub_cpu_s``, from ``/proc``) and per check-in (``hub_cpu_us_per_checkin``): on a loaded
machine the steadier figure.

``python -m benchmarks.checkin [--database-url postgres] [--devices 200] [--duration 10]
[--connections 16] [--mode fast|refresh|ceiling|both] [--hub-src DIR] [--before-src DIR]
[--rounds 1] [--before-credentials]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.director import _model
from benchmarks.serving.wrk import ensure_wrk
from benchmarks.telemetry_hub import _pg_database
from modelfleet.clock import SystemClock
from modelfleet.demo import free_port, modelfleet_cmd, start
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home

RESULTS = Path("bench-results")

_LUA = """
local devices = {%(devices)s}
local tokens = {%(tokens)s}
local body = [[%(body)s]]
local mode = "%(mode)s"
local per_device = %(per_device)s
local counter = 0
local step = 0
local current = 1
local function next_device()
  counter = counter + 1
  current = (counter %% #devices) + 1
end
request = function()
  local h = {["Authorization"] = "Bearer " .. tokens[current],
             ["Content-Type"] = "application/json"}
  if mode == "ceiling" then
    next_device()
    return wrk.format("GET", "/api/v1/whoami", h)
  end
  if mode == "refresh" then
    step = step + 1
    local d = devices[current]
    local director = per_device and ("/tuf/director/devices/" .. d .. "/metadata/")
                     or "/tuf/director/metadata/"
    if step == 1 then return wrk.format("GET", "/tuf/catalog/metadata/2.root.json", h) end
    if step == 2 then return wrk.format("GET", "/tuf/catalog/metadata/timestamp.json", h) end
    if step == 3 then return wrk.format("GET", director .. "2.root.json", h) end
    if step == 4 then return wrk.format("GET", director .. "timestamp.json", h) end
    step = 0
  end
  local d = devices[current]
  next_device()
  local b = string.gsub(body, "LAST_CHECK", tostring(counter %% 7))
  return wrk.format("POST", "/api/v1/devices/" .. d .. "/report", h, b)
end
"""


def agent_report(device_id: str) -> dict[str, Any]:
    """An agent's status as it checks in: one model, a history of events, no rollbacks."""
    slot = {"version": 1, "sha256": "ab" * 32, "path": f"/var/lib/modelfleet/models/m/{'ab' * 8}"}
    return {
        "device_id": device_id,
        "applied_serial": 2,
        "desired": {"serial": 2, "assignments": []},
        "models": {"m": {"active": slot, "previous": None, "candidate": None,
                         "mode": "full", "share": 0.0}},
        "events": [
            {"at": f"2026-12-01T10:{i:02d}:00+00:00", "kind": "switch",
             "message": f"m: v{i % 3} active"}
            for i in range(20)
        ],
        "rollbacks": [],
        "refused": {},
        "rolled_back": {},
        "pending": [],
        "last_check": "2026-12-02T10:00:0LAST_CHECK+00:00",
        "last_error": "",
        "last_refusal": None,
        "update_status": "up to date (serial 2)",
        "loaded": {"m": ["1"]},
        "guard": {"m": {"verdict": "ok", "window_s": 60}},
    }  # fmt: skip


def _setup(home: Path, database_url: str | None, devices: int) -> dict[str, str]:
    init_home(home, database_url=database_url)
    service = HubService(load_hub_config(home), SystemClock())
    try:
        service.register_version("m", _model(0), actor="bench")
        tokens = {
            f"dev-{i:05d}": service.add_device(f"dev-{i:05d}", actor="bench")[1]
            for i in range(devices)
        }
        service.deploy("m", 1, "all", actor="bench")
        for d in tokens:  # each device's stored report: what it will send again
            service.record_report(d, agent_report(d))
    finally:
        service.close()
    if database_url and database_url.startswith("postgres"):
        _analyze(database_url)
    return tokens


def _analyze(database_url: str) -> None:
    """Planner statistics for the tables the set-up just filled, as autovacuum gathers them
    on a live hub within a minute or so: without them PostgreSQL plans the first check-ins
    against empty-table estimates."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


def _legacy_tokens(home: Path, tokens: dict[str, str]) -> dict[str, str]:
    """A ``tokens``-table device token per device, for a hub from before issue 10."""
    from modelfleet.hub import db
    from modelfleet.hub.auth import hash_token, new_token

    service = HubService(load_hub_config(home), SystemClock())
    legacy = {d: new_token() for d in tokens}
    try:
        with service.context.write() as s:
            s.add_all(
                db.Token(token_sha256=hash_token(t), role="device", subject=d,
                         created_at=service.clock.now(), created_by="bench", revoked=False)
                for d, t in legacy.items()
            )  # fmt: skip
    finally:
        service.close()
    return legacy


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, script: Path, duration: int, connections: int) -> tuple[float, int]:
    out = subprocess.run(
        [ensure_wrk(), "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if rate is None:
        raise RuntimeError(f"wrk said:\n{out}")
    return float(rate.group(1)), int(bad.group(1)) if bad else 0


def _start_hub(home: Path, tmp: Path, src: str, name: str, no_controller: bool) -> Any:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    extra = ["--no-controller"] if no_controller else []
    cmd = modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port), *extra)
    proc = start(name, cmd, tmp, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/v1/health").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.popen.poll() is not None:
            proc.stop()
            raise RuntimeError(proc.output())
        time.sleep(0.2)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    backend = "postgresql" if args.database_url.startswith("postgres") else "sqlite"
    database_url = _pg_database() if args.database_url == "postgres" else args.database_url
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mf-checkin-") as tmp:
        home = Path(tmp) / "hub"
        tokens = _setup(home, database_url or None, args.devices)
        token_sets = {"this": tokens, "base": tokens}
        if args.before_src:
            token_sets["before"] = (
                tokens if args.before_credentials else _legacy_tokens(home, tokens)
            )
        hubs = [("base" if args.hub_src else "this", args.hub_src)]
        if args.before_src:
            hubs.append(("before", args.before_src))
        started = []
        try:
            for name, src in hubs:
                proc, url = _start_hub(home, Path(tmp), src, f"hub-{name}", len(hubs) > 1)
                started.append((name, proc, url))
            ids = list(tokens)
            body = json.dumps(agent_report("DEVICE"))
            modes = ["ceiling", "fast", "refresh"] if args.mode == "both" else [args.mode]
            for round_no in range(args.rounds):
                for mode in modes:
                    # alternate who goes first: an order effect shows as a flipped ratio
                    turn = started if round_no % 2 == 0 else started[::-1]
                    for name, proc, url in turn:
                        lua = _LUA % {
                            "devices": ",".join(f'"{d}"' for d in ids),
                            "tokens": ",".join(f'"{token_sets[name][d]}"' for d in ids),
                            "body": body,
                            "mode": mode,
                            "per_device": "false" if args.hub_src else "true",
                        }
                        script = Path(tmp) / f"{mode}-{name}.lua"
                        script.write_text(lua)
                        _wrk(url, script, 2, args.connections)  # warm-up
                        cpu0 = _cpu_s(proc.popen.pid)
                        rate, bad = _wrk(url, script, args.duration, args.connections)
                        cpu = _cpu_s(proc.popen.pid) - cpu0
                        per = 5 if mode == "refresh" else 1
                        calls = rate / per * args.duration
                        results.append(
                            {
                                "backend": backend,
                                "mode": mode,
                                "hub": name,
                                "round": round_no,
                                "devices": args.devices,
                                "connections": args.connections,
                                "requests_per_s": round(rate),
                                "checkins_per_s": round(rate / per),
                                "non_2xx": bad,
                                "hub_cpu_s": round(cpu, 2),
                                "hub_cpu_us_per_checkin": round(cpu / calls * 1e6)
                                if calls
                                else None,
                                "load_average": round(os.getloadavg()[0], 1),
                            }
                        )
                        print(json.dumps(results[-1]), flush=True)
                    if len(started) > 1:
                        rates = {r["hub"]: r["checkins_per_s"] for r in results[-2:]}
                        this, before = rates["this"], rates["before"]
                        ratio = {"mode": mode, "round": round_no, "ratio": round(this / before, 2)}
                        print(json.dumps(ratio), flush=True)
        finally:
            for _name, proc, _url in started:
                proc.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkin", description=__doc__)
    parser.add_argument("--database-url", default="", help="'' = SQLite; 'postgres' = fresh PG db")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--mode", choices=["fast", "refresh", "ceiling", "both"], default="both")
    parser.add_argument("--hub-src", default="", help="run the hub from this src folder")
    parser.add_argument(
        "--before-src", default="", help="also run a hub from this src folder, in turns"
    )
    parser.add_argument("--rounds", type=int, default=1, help="turns of every mode (1)")
    parser.add_argument(
        "--before-credentials",
        action="store_true",
        help="the before hub's devices check in with the same device credentials",
    )
    args = parser.parse_args(argv)
    results = run(args)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"checkin-{results[0]['backend']}-{stamp}.json").write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
