"""Telemetry on the device (issue 7): buffer appends, bytes written per day, serving impact.

``python -m benchmarks.run telemetry [--no-docs]`` (or ``python -m benchmarks.telemetry_device``).

* ``append``: realistic closed windows (200 requests each: latency, compute, queue and
  confidence histograms filled, as :class:`~modelfleet.telemetry.windows.WindowRecorder`
  closes them) appended to a real :class:`~modelfleet.telemetry.buffer.TelemetryBuffer`
  file, in the transactions the closer makes (one per close of 6 series) and in bulk.
* ``bytes_per_day``: one simulated day at the default rate (a 60 s window for 3 models ×
  2 roles), hub up (every close is forwarded and acknowledged: append + ack transactions)
  and hub down (appends only): bytes the process handed to ``write()`` (``wchar`` of
  ``/proc/self/io``: database, WAL and checkpoints) and the files' size at the end.
* ``serving``: the real agent app (``build_agent_app``, real ONNX model, the recorder in the
  fan-out) called as an ASGI callable in a closed loop on one event loop, idle (empty
  buffer) vs while the real forwarder drains a buffer of 3,000 windows (as after an outage)
  to a loopback ingest sink in another process, competing with the event loop for the
  interpreter the whole phase. Throughput and p99 per phase, phases alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks._docs import write_section

BEGIN = "<!-- telemetry-device:begin -->"
END = "<!-- telemetry-device:end -->"
SECTION = "## Telemetry on the device (issue 7)"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def realistic_windows(n: int, device_id: str = "edge-1") -> list[dict[str, Any]]:
    """``n`` windows closed by the real recorder after 200 requests each."""
    from modelfleet.telemetry.windows import WindowRecorder

    rng = random.Random(0)
    out: list[dict[str, Any]] = []
    rec = WindowRecorder(device_id, T0)
    i = 0
    while len(out) < n:
        for _ in range(200):
            c = rng.lognormvariate(-7, 0.8)
            q = rng.lognormvariate(-9, 1.0)
            outcome = "ok" if rng.random() > 0.01 else "client_error"
            rec.on_request("model-a", "7", "production", outcome, c, q, rng.random(), "10.0.0.1")
        i += 1
        out.extend(rec.close(T0 + timedelta(seconds=60 * i)))
    for w in out:
        w["rollout_id"] = "rollout-2026-03-01-a"
    return out[:n]


def _wchar() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def bench_append(directory: Path, windows: int) -> dict[str, Any]:
    import orjson

    from modelfleet.telemetry.buffer import TelemetryBuffer

    pool = realistic_windows(60)
    sizes = [len(orjson.dumps({"seq": 1, **w})) for w in pool]
    out: dict[str, Any] = {"record_bytes_mean": statistics.fmean(sizes)}
    for batch in (6, 100):
        path = directory / f"append-{batch}.sqlite3"
        buf = TelemetryBuffer(path, max_bytes=1024**3)
        records = [pool[i % len(pool)] for i in range(batch)]
        n = windows // batch
        start = time.perf_counter()
        for _ in range(n):
            buf.append(records)
        elapsed = time.perf_counter() - start
        buf.close()
        out[f"batch_{batch}"] = {
            "windows": n * batch,
            "windows_per_s": n * batch / elapsed,
            "append_us_p50": elapsed / n * 1e6,
            "file_bytes": _file_bytes(path),
        }
    return out


def bench_bytes_per_day(directory: Path, models: int = 3, roles: int = 2) -> dict[str, Any]:
    from modelfleet.telemetry.buffer import TelemetryBuffer

    series = models * roles
    pool = realistic_windows(series * 4)
    out: dict[str, Any] = {"series": series, "windows_per_day": 1440 * series}
    for mode in ("hub_up", "hub_down"):
        path = directory / f"day-{mode}.sqlite3"
        buf = TelemetryBuffer(path)
        before = _wchar()
        for minute in range(1440):
            records = pool[(minute % 4) * series : (minute % 4 + 1) * series]
            seqs = buf.append(records)
            if mode == "hub_up":
                buf.pending(1000, 1 << 20)
                buf.ack(seqs)
        written = _wchar() - before
        size = _file_bytes(path)
        buf.close()
        out[mode] = {
            "written_bytes_per_day": written,
            "file_bytes_end_of_day": size,
            "payload_bytes_per_day": buf.stats().bytes if mode == "hub_down" else None,
        }
    return out


class _Sink(BaseHTTPRequestHandler):
    """The loopback ingest stand-in: reads the batch, answers acked_through."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        doc = json.loads(body)
        seqs = [r["seq"] for r in doc["records"]]
        answer = json.dumps(
            {"stored": len(seqs), "duplicates": 0, "acked_through": max(seqs), "status": "ok"}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def _serve_sink(port_file: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def bench_serving(
    directory: Path, seconds: float, rounds: int, duty: float | None = None, preload: int = 15_000
) -> dict[str, Any]:
    import numpy as np

    from benchmarks.serving.inproc import _agent_parts, _AsgiCall
    from benchmarks.serving.model import make_model
    from modelfleet.agent.app import build_agent_app
    from modelfleet.agent.hub_link import HttpHubLink
    from modelfleet.agent.telemetry import routed_versions
    from modelfleet.clock import SystemClock
    from modelfleet.telemetry.buffer import TelemetryBuffer
    from modelfleet.telemetry.device import DeviceTelemetry

    bench = make_model(directory)
    host, metrics, _app = _agent_parts(bench.path)
    port_file = directory / f"sink-{duty}.port"
    sink = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from benchmarks.telemetry_device import _serve_sink; _serve_sink({str(port_file)!r})",
        ],
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        link = HttpHubLink(f"http://127.0.0.1:{port_file.read_text()}", "t", attempts=1)
        buf = TelemetryBuffer(directory / f"serving-{duty}.sqlite3", max_bytes=1024**3)
        hub_up = threading.Event()

        def send(batch: Any) -> dict[str, Any]:
            hub_up.wait()  # idle phases: the send waits (no CPU), as on a slow link
            return link.send_telemetry("edge-1", batch)

        telemetry = DeviceTelemetry(
            "edge-1",
            buf,
            send,
            SystemClock(),
            window_s=60.0,
            routed=lambda: list(routed_versions(host)),
            forwarder_max_duty=duty,
        )
        app = build_agent_app(host, metrics=metrics, observers=[telemetry.recorder])
        call = _AsgiCall(app, bench.body)
        pool = realistic_windows(1000)

        async def closed_loop(duration: float) -> list[float]:
            lat: list[float] = []
            end = time.perf_counter() + duration
            while time.perf_counter() < end:
                t = time.perf_counter()
                await call()
                lat.append(time.perf_counter() - t)
            return lat

        def phase(draining: bool) -> dict[str, float]:
            before = telemetry.forwarder.forwarded_total
            if draining:
                while buf.stats().records < preload:  # a backlog, as after an outage (untimed)
                    buf.append(pool)
                telemetry.forwarder.wake()  # as the closer does after an append
                before = telemetry.forwarder.forwarded_total
                hub_up.set()
            else:
                hub_up.clear()
                time.sleep(0.05)
            lat = asyncio.run(closed_loop(seconds))
            forwarded = telemetry.forwarder.forwarded_total - before
            arr = np.array(lat)
            return {
                "requests_per_s": len(lat) / seconds,
                "p50_us": float(np.percentile(arr, 50) * 1e6),
                "p99_us": float(np.percentile(arr, 99) * 1e6),
                "forwarded_per_s": forwarded / seconds,
            }

        asyncio.run(closed_loop(1.0))  # warm-up
        telemetry.forwarder.start()
        runs: dict[str, list[dict[str, float]]] = {"idle": [], "draining": []}
        for _ in range(rounds):
            runs["idle"].append(phase(False))
            runs["draining"].append(phase(True))
        assert set(call.statuses) == {200}, set(call.statuses)
        still_waiting = buf.stats().records
        hub_up.set()
        telemetry.forwarder.stop()
        buf.close()
    finally:
        sink.terminate()
        sink.wait(10)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def paired(key: str) -> float:  # adjacent phases see the same background load
        return statistics.median(
            d[key] / i[key] for i, d in zip(runs["idle"], runs["draining"], strict=True)
        )

    summary: dict[str, Any] = {
        name: {k: median(name, k) for k in runs[name][0]} for name in ("idle", "draining")
    }
    # the forwarder sends in bursts, some phases none: its rate is the mean over them all
    summary["draining"]["forwarded_per_s"] = statistics.fmean(
        r["forwarded_per_s"] for r in runs["draining"]
    )
    summary["throughput_ratio"] = paired("requests_per_s")
    summary["p99_ratio"] = paired("p99_us")
    summary["still_waiting"] = still_waiting
    summary["runs"] = runs
    return summary


def render(result: dict[str, Any]) -> str:
    a = result["append"]
    d = result["bytes_per_day"]
    s = result["serving"]
    f = result["serving_flat_out"]
    up = d["hub_up"]
    down = d["hub_down"]
    mib = 1024 * 1024

    def goal(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        f"Measured {result['when']} on {result['machine']} (Python {result['python']}), "
        f"SQLite {result['sqlite']}. Reproduce: `{result['command']}`.",
        "",
        "| measure | result | goal |",
        "|---|---|---|",
        f"| buffer append, one transaction per close (6 windows) | "
        f"{a['batch_6']['windows_per_s']:,.0f} windows/s "
        f"({a['batch_6']['append_us_p50']:.0f} µs a close) | ≥ 20,000 windows/s: "
        f"{goal(a['batch_6']['windows_per_s'] >= 20_000)} |",
        f"| buffer append, 100 windows a transaction | "
        f"{a['batch_100']['windows_per_s']:,.0f} windows/s | |",
        f"| encoded window (busy, 4 histograms) | {a['record_bytes_mean']:,.0f} B; "
        f"file {a['batch_6']['file_bytes'] / a['batch_6']['windows']:,.0f} B a window | |",
        f"| written per device per day, 3 models × 2 roles, 60 s, hub up | "
        f"{up['written_bytes_per_day'] / mib:.1f} MiB/day "
        f"(file {up['file_bytes_end_of_day'] / mib:.1f} MiB) | "
        f"far below a consumer SSD's budget (a 600 TBW drive over 5 years: ~330 GB/day) |",
        f"| written per day, same, hub down (buffering) | "
        f"{down['written_bytes_per_day'] / mib:.1f} MiB/day; buffer grows "
        f"{down['payload_bytes_per_day'] / mib:.1f} MiB/day (72 h: "
        f"{3 * down['payload_bytes_per_day'] / mib:.1f} MiB < 64 MiB default) | |",
        f"| inference, idle | {s['idle']['requests_per_s']:,.0f} req/s, "
        f"p99 {s['idle']['p99_us']:.0f} µs | |",
        f"| inference while draining ({s['draining']['forwarded_per_s']:,.0f} records/s sent) | "
        f"{s['draining']['requests_per_s']:,.0f} req/s, p99 {s['draining']['p99_us']:.0f} µs "
        f"(throughput ×{s['throughput_ratio']:.3f}, p99 ×{s['p99_ratio']:.3f}) | within 5 %: "
        f"{goal(s['throughput_ratio'] >= 0.95 and s['p99_ratio'] <= 1.05)} |",
        f"| same, forwarder flat out (no duty cycle: "
        f"{f['draining']['forwarded_per_s']:,.0f} records/s sent) | "
        f"throughput ×{f['throughput_ratio']:.3f}, p99 ×{f['p99_ratio']:.3f} | "
        f"why there is a duty cycle |",
        "",
        "Serving: the real agent app and ONNX model called as an ASGI callable in a closed "
        "loop (the recorder in the fan-out), in alternated idle/draining phases; ratios are "
        "the medians of adjacent pairs (they see the same background load). Draining: the "
        "real forwarder sends a backlog of 15,000 windows (topped up before each phase, as "
        "after an outage) to a loopback sink in another process, batches of up to 1000 "
        "records or 1 MiB read in one SQLite step and sent as stored bytes; idle: the same "
        "agent with its send held (the forwarder waiting, no CPU). Flat out, the forwarder's "
        "Python work competes with the event loop for the interpreter and costs serving "
        "about 45 %; the default cap of 0.5 % of one CPU (after a batch that used c seconds "
        "of its thread's CPU it pauses 199 c) brings that within the goal, and a 72 h backlog "
        "of 6 series (26,000 windows) still drains in minutes at the rate shown (which also "
        "spreads a fleet's return to the hub).",
        "",
        "The box is shared (2 CPUs, other jobs running): repeated runs vary by ±30 % in "
        "absolute figures; the idle/draining phases alternate so both see the same load.",
        "",
    ]
    return "\n".join(lines)


def update_docs(section: str) -> None:
    write_section(SECTION, BEGIN, END, section, DOCS)


def rerender() -> None:
    """Rewrite the docs section from ``bench-results/telemetry_device.json``."""
    result = json.loads(Path("bench-results/telemetry_device.json").read_text())
    update_docs(render(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.telemetry_device")
    parser.add_argument("--windows", type=int, default=60_000, help="windows appended (60000)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per serving phase")
    parser.add_argument("--rounds", type=int, default=12, help="idle/draining phase pairs (12)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs")
    args = parser.parse_args(argv)
    import sqlite3

    with tempfile.TemporaryDirectory(prefix="mf-telemetry-bench-") as tmp:
        directory = Path(tmp)
        result: dict[str, Any] = {
            "when": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "command": "python -m benchmarks.run telemetry",
            "append": bench_append(directory, args.windows),
            "bytes_per_day": bench_bytes_per_day(directory),
            "serving": bench_serving(directory, args.seconds, args.rounds),
            "serving_flat_out": bench_serving(
                directory, args.seconds, max(3, args.rounds // 3), 1.0
            ),
        }
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "telemetry_device.json").write_text(json.dumps(result, indent=2))
    text = render(result)
    print(text)
    if not args.no_docs:
        update_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
