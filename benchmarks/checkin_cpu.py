"""CPU per not-modified check-in, in process, without HTTP (issue 8/10).

On a shared, loaded machine ``benchmarks/checkin.py``'s requests per second move by ±50 %
between cells; CPU seconds per call move far less. This times what the bare ASGI route
runs on its thread — token, permission, report — for a fleet whose tokens are never in
the 1 s token cache (each device polls once a minute: ``--cold``, the default) or always
are (``--warm``), on SQLite. Run it under two ``PYTHONPATH``s (a checkout before issue 10
and this one) in turns:

``python -m benchmarks.checkin_cpu [--devices 300] [--calls 3000] [--warm]``

It prints one JSON line: CPU µs and wall µs per check-in (medians of 5 passes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.checkin import agent_report
from benchmarks.director import _model
from modelfleet.clock import SystemClock
from modelfleet.hub.auth import Permission, check
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService, init_home


def _one_call(service: HubService) -> Any:
    """The route's thread-pool call: this hub's ``check_in``, or what the route did before."""
    if hasattr(service, "check_in"):
        return service.check_in

    def before(token: str, device_id: str, body: bytes) -> Any:
        check(service.authenticate(token), Permission.ADMIN, device_id=device_id)
        return service.record_report(device_id, body)

    return before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkin_cpu")
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--warm", action="store_true", help="tokens answered from the cache")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mf-checkin-cpu-") as tmp:
        home = Path(tmp) / "hub"
        init_home(home)
        service = HubService(load_hub_config(home), SystemClock())
        try:
            service.register_version("m", _model(0), actor="bench")
            tokens = {
                f"dev-{i:05d}": service.add_device(f"dev-{i:05d}", actor="bench")[1]
                for i in range(args.devices)
            }
            service.deploy("m", 1, "all", actor="bench")
            bodies = {}
            for d in tokens:
                service.record_report(d, agent_report(d))
                bodies[d] = orjson.dumps({**agent_report(d), "last_check": "again"})
            call = _one_call(service)
            cache = service.fleet._tokens._entries
            ids = list(tokens)
            cpu, wall = [], []
            for _ in range(5):
                c0, w0 = time.process_time(), time.perf_counter()
                for i in range(args.calls):
                    d = ids[i % len(ids)]
                    if not args.warm:
                        cache.clear()
                    call(tokens[d], d, bodies[d])
                cpu.append((time.process_time() - c0) / args.calls * 1e6)
                wall.append((time.perf_counter() - w0) / args.calls * 1e6)
        finally:
            service.close()
    result = {
        "hub": "this" if hasattr(service, "check_in") else "before",
        "tokens": "warm" if args.warm else "cold",
        "cpu_us_per_checkin": round(statistics.median(cpu), 1),
        "wall_us_per_checkin": round(statistics.median(wall), 1),
        "checkins_per_cpu_s": round(1e6 / statistics.median(cpu)),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
