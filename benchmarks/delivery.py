"""Delivery on thin links (issue 11): resumed-download overhead and hub egress with a mirror.

``python -m benchmarks.run delivery [--devices N]`` (or ``python -m benchmarks.delivery
[--size BYTES] [--repeats N] [--devices N] [--workers N] [--no-docs]``).

* **resume**: a ``--size`` (256 MiB) file of random bytes is served from a temp folder by a
  real loopback HTTP server (``http.server``, HTTP/1.0, ``sendfile``, honours
  ``Range: bytes=N-`` with a 206) that can close the connection at given offsets (a cut
  link). Timed, interleaved, median of ``--repeats`` (3): a plain ``httpx`` streamed GET
  hashed with ``hashlib.sha256`` (the bar); :meth:`HttpFetcher.fetch` consumed and hashed
  with no cut; the same with the body cut once at 50 % and resumed; cut at every 10 % (9
  resumes). The fetcher's ``sleep`` is a no-op, so no backoff wait is in the figure: what
  is timed is the transfer and the resumes themselves. The server counts the body bytes it
  sent and the GETs it answered.
* **egress**: a real ``hub serve`` (SQLite, ``--access-log``) with one ~1 MiB model deployed
  to ``--devices`` (100) devices of one site, behind a TCP proxy that counts every byte the
  hub sends (headers included). Each device runs one TUF update cycle as the agent does
  (:class:`DeviceTrustClient`: director metadata and desired state, catalog metadata, then
  the model file), ``--workers`` (10) at a time, with fresh caches: first straight at the
  hub, then through a real ``modelfleet site serve`` mirror (cold cache, default metadata
  TTL 2 s). Reported: hub egress bytes of each, their ratio, and the artefact GETs the hub
  answered (its access log).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from benchmarks._docs import DOCS, write_section
from modelfleet.delivery.http_fetcher import DownloadSettings, HttpFetcher
from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.trust import DeviceTrustClient

BEGIN = "<!-- delivery:begin -->"
END = "<!-- delivery:end -->"
SECTION = "## Delivery on thin links (issue 11)"
RESULTS = Path("bench-results")
BLOCK = 1 << 20
MIB = 1 << 20
PATH = "/targets/blob.bin"
VARIANTS = ("httpx", "fetcher", "cut-50", "cut-10x9")


# --- resume: a loopback file server that can cut the link ------------------------------------


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, file: Path) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.file = file
        self.size = file.stat().st_size
        self.lock = threading.Condition()
        self.active = 0  # GETs whose handler has not yet counted what it sent
        self.cuts: list[int] = []  # absolute offsets, one per GET, where the link is cut
        self.sent = 0  # body bytes sent
        self.gets = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{PATH}"

    def reset(self, cuts: list[int]) -> None:
        with self.lock:
            self.cuts, self.sent, self.gets = list(cuts), 0, 0

    def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until every GET's handler has counted its bytes.

        The client can read a response's last byte before the handler thread adds
        what ``sendfile`` returned, so figures are read only after this.
        """
        with self.lock:
            if not self.lock.wait_for(lambda: self.active == 0, timeout_s):
                raise RuntimeError(f"{self.active} GET handlers still running after {timeout_s} s")


class _RangeHandler(BaseHTTPRequestHandler):
    server: _FileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        if self.path != PATH:
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        begin = int(match.group(1)) if match else 0
        with srv.lock:
            srv.gets += 1
            srv.active += 1
            end = srv.cuts.pop(0) if srv.cuts else srv.size
        if match:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {begin}-{srv.size - 1}/{srv.size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(srv.size - begin))
        self.end_headers()
        sent = 0
        with open(srv.file, "rb") as f, contextlib.suppress(OSError):  # the client hung up
            sent = self.connection.sendfile(f, begin, max(0, end - begin))
        with srv.lock:
            srv.sent += sent
            srv.active -= 1
            srv.lock.notify_all()
        # HTTP/1.0: the connection closes here, short of Content-Length when cut.


def _make_file(path: Path, size: int) -> str:
    """``size`` random bytes; returns their sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            piece = os.urandom(min(BLOCK, left))
            f.write(piece)
            h.update(piece)
            left -= len(piece)
    return h.hexdigest()


def _plain(client: httpx.Client, url: str) -> str:
    h = hashlib.sha256()
    with client.stream("GET", url) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            h.update(chunk)
    return h.hexdigest()


def _fetcher(fetcher: HttpFetcher, url: str) -> str:
    h = hashlib.sha256()
    for chunk in fetcher.fetch(url):
        h.update(chunk)
    return h.hexdigest()


def _cuts(variant: str, size: int) -> list[int]:
    if variant == "cut-50":
        return [size // 2]
    if variant == "cut-10x9":
        return [size * k // 10 for k in range(1, 10)]
    return []


def run_resume(size: int, repeats: int, workdir: Path | None = None) -> dict[str, Any]:
    """Time the four variants (interleaved); medians of ``repeats``."""
    with tempfile.TemporaryDirectory(prefix="mf-delivery-", dir=workdir) as tmp:
        blob = Path(tmp) / "blob.bin"
        sha = _make_file(blob, size)
        server = _FileServer(blob)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        sleeps: list[float] = []
        fetcher = HttpFetcher(
            settings=DownloadSettings(max_resumes=10, read_timeout_s=30.0),
            sleep=sleeps.append,  # no backoff wait: the figure is the transfer's
        )
        client = httpx.Client(timeout=30.0)
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        try:
            for _ in range(repeats):  # interleaved, so load on the machine hits all alike
                for variant in VARIANTS:
                    server.reset(_cuts(variant, size))
                    sleeps.clear()
                    began = time.perf_counter()
                    if variant == "httpx":
                        digest = _plain(client, server.url)
                    else:
                        digest = _fetcher(fetcher, server.url)
                    took = time.perf_counter() - began
                    server.settle()
                    if digest != sha:
                        raise RuntimeError(f"{variant}: got sha256 {digest}, want {sha}")
                    runs[variant].append(
                        {"s": took, "sent": server.sent, "gets": server.gets,
                         "resumes": len(sleeps)}
                    )  # fmt: skip
        finally:
            client.close()
            fetcher.close()
            server.shutdown()
            server.server_close()
            thread.join(5)
    med = {v: statistics.median(r["s"] for r in rs) for v, rs in runs.items()}
    return {
        "size_bytes": size,
        "repeats": repeats,
        "runs": runs,
        "median_s": med,
        "ratio": {v: med[v] / med["httpx"] for v in VARIANTS},
        "sent_bytes": {v: max(r["sent"] for r in rs) for v, rs in runs.items()},
        "gets": {v: max(r["gets"] for r in rs) for v, rs in runs.items()},
        "resumes": {v: max(r["resumes"] for r in rs) for v, rs in runs.items()},
    }


# --- egress: a real hub behind a byte-counting proxy, with and without a site mirror ----------


class _CountingProxy:
    """A TCP relay to ``127.0.0.1:upstream`` counting the bytes the upstream sends."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self.down = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self._upstream))
        except OSError:
            client.close()
            return
        ahead = threading.Thread(target=self._pump, args=(client, up, False), daemon=True)
        ahead.start()
        self._pump(up, client, True)
        ahead.join(60)
        up.close()
        client.close()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:  # counted before it is forwarded: a reader that has the bytes sees them
                    with self._lock:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._sock.close()


def _wait_http(url: str, proc: Process, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} did not come up:\n{proc.output()[-3000:]}")
        time.sleep(0.2)


def _setup_hub(home: Path, devices: int) -> dict[str, str]:
    """A hub home with one ~1 MiB model deployed to ``devices`` devices of one site."""
    from tests.helpers import slow_logistic_onnx

    from modelfleet.clock import SystemClock
    from modelfleet.hub.config import load_hub_config
    from modelfleet.hub.service import HubService, init_home

    init_home(home)
    service = HubService(load_hub_config(home), SystemClock())
    try:
        service.register_version("m", slow_logistic_onnx(0, size=512), actor="bench")
        tokens = {
            f"dev-{i:03d}": service.add_device(f"dev-{i:03d}", site="plant-a", actor="bench")[1]
            for i in range(devices)
        }
        service.deploy("m", 1, "all", actor="bench")
    finally:
        service.close()
    return tokens


def _update(root: Path, base: str, device: str, token: str, trust_root: bytes) -> int:
    """One device TUF cycle as the agent does it; returns the artefact's length."""
    client = DeviceTrustClient(root / "tuf" / device, base, token, trust_root)
    try:
        raw = client.fetch_desired_state(device)
        if raw is None:
            raise RuntimeError(f"{device}: no desired state")
        assignment = DesiredState.from_json(raw).assignment("m")
        if assignment is None:
            raise RuntimeError(f"{device}: nothing assigned")
        ref = assignment.production
        dest = root / "got" / device / "model.onnx"
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest)
        got = dest.stat().st_size
        shutil.rmtree(dest.parent)
        return got
    finally:
        client.close()


def _fleet(
    root: Path, base: str, tokens: dict[str, str], trust_root: bytes, workers: int
) -> tuple[float, int]:
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(lambda d: _update(root, base, d, tokens[d], trust_root), tokens))
    return time.perf_counter() - began, sizes[0]


def _kind(line: str) -> str:
    """What a GET in the hub's access log asked for."""
    for needle, kind in (
        ("/tuf/director/devices/", "director metadata"),
        ("/tuf/director/targets/", "desired state"),
        ("/tuf/catalog/metadata/", "catalog metadata"),
        ("/tuf/catalog/targets/", "catalog targets"),
    ):
        if needle in line:
            return kind
    return "api"


def _hub_gets(hub: Process) -> list[str]:
    """The GET lines of the hub's access log so far."""
    return [ln for ln in hub.output().splitlines() if '"GET /' in ln]


def _phase(lines: list[str], seconds: float, hub_bytes: int) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for ln in lines:
        kinds[_kind(ln)] = kinds.get(_kind(ln), 0) + 1
    artefact = sum("/tuf/catalog/targets/" in ln and ".model.onnx" in ln for ln in lines)
    return {"hub_bytes": hub_bytes, "seconds": seconds, "hub_gets": len(lines),
            "artefact_gets": artefact, "gets_by_kind": kinds}  # fmt: skip


def run_egress(devices: int, workers: int, workdir: Path | None = None) -> dict[str, Any]:
    """Hub egress for ``devices`` device cycles, direct and through one site mirror."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    procs: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="mf-egress-", dir=workdir) as tmp_s:
        tmp = Path(tmp_s)
        home = tmp / "hub"
        tokens = _setup_hub(home, devices)
        trust_root = (home / "trust-root.json").read_bytes()
        port = free_port()
        hub = start("hub", modelfleet_cmd("hub", "serve", "--home", str(home), "--port",
                                          str(port), "--access-log"), tmp, env=env)  # fmt: skip
        procs.append(hub)
        proxy = _CountingProxy(port)
        try:
            _wait_http(f"http://127.0.0.1:{port}/api/v1/health", hub)
            out: dict[str, Any] = {"devices": devices, "workers": workers}
            seen = len(_hub_gets(hub))
            before = proxy.down
            took, length = _fleet(tmp / "direct", proxy.url, tokens, trust_root, workers)
            time.sleep(0.5)  # the hub's access log has caught up
            lines = _hub_gets(hub)
            out["artefact_bytes"] = length
            out["direct"] = _phase(lines[seen:], took, proxy.down - before)

            mport = free_port()
            mirror = start("mirror", modelfleet_cmd(
                "site", "serve", "--hub", proxy.url, "--cache", str(tmp / "mirror-cache"),
                "--token-file", str(home / "admin.token"), "--port", str(mport),
            ), tmp, env=env)  # fmt: skip
            procs.append(mirror)
            mirror_url = f"http://127.0.0.1:{mport}"
            _wait_http(f"{mirror_url}/-/mirror/status", mirror)
            seen = len(_hub_gets(hub))
            before = proxy.down
            took, _ = _fleet(tmp / "mirrored", mirror_url, tokens, trust_root, workers)
            time.sleep(0.5)
            out["mirror"] = _phase(_hub_gets(hub)[seen:], took, proxy.down - before)
            status = httpx.get(f"{mirror_url}/-/mirror/status", timeout=5).json()
            out["mirror"]["mirror_counters"] = status["counters"]
        finally:
            for p in reversed(procs):
                p.stop()
            proxy.close()
    out["ratio"] = out["direct"]["hub_bytes"] / out["mirror"]["hub_bytes"]
    return out


# --- report -------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def _kb(n: float) -> str:
    return f"{n / 1e3:,.1f} kB"


def render(result: dict[str, Any]) -> str:
    res = result["resume"]
    size = res["size_bytes"]
    med, ratio = res["median_s"], res["ratio"]
    names = {
        "httpx": "plain `httpx` streamed GET + hashlib (the bar)",
        "fetcher": "`HttpFetcher.fetch`, no cut",
        "cut-50": "`HttpFetcher.fetch`, cut once at 50 % (1 resume)",
        "cut-10x9": "`HttpFetcher.fetch`, cut at every 10 % (9 resumes)",
    }
    per_resume_ms = (med["cut-10x9"] - med["fetcher"]) / 9 * 1000
    lines = [
        f"`python -m benchmarks.run delivery` — measured {result['when']} on {result['machine']}.",
        "",
        f"**Resumed downloads**: a {size / MIB:,.0f} MiB file over loopback HTTP, median of "
        f"{res['repeats']}, each body hashed with SHA-256.",
        "",
        "| path | median | rate | × httpx | GETs | bytes sent / file size |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        lines.append(
            f"| {names[v]} | {med[v]:.2f} s | {size / MIB / med[v]:,.0f} MiB/s | "
            f"{ratio[v]:.2f}× | {res['gets'][v]} | {res['sent_bytes'][v] / size:.4f} |"
        )
    eg = result.get("egress")
    if eg:
        d, m = eg["direct"], eg["mirror"]
        lines += [
            "",
            f"**Hub egress for a {eg['devices']}-device site** (one {eg['artefact_bytes']:,} B "
            f"model; one TUF update cycle per device, {eg['workers']} at a time, fresh caches):",
            "",
            "| devices fetch | hub egress | per device | hub GETs | artefact GETs at the hub "
            "| wall time |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in (("straight from the hub", d), ("through one site mirror", m)):
            lines.append(
                f"| {name} | {_mb(row['hub_bytes'])} | {_kb(row['hub_bytes'] / eg['devices'])} "
                f"| {row['hub_gets']} | {row['artefact_gets']} | {row['seconds']:.1f} s |"
            )
        kinds = sorted(set(d["gets_by_kind"]) | set(m["gets_by_kind"]))
        lines += [
            "",
            f"With the mirror the hub sends **{eg['ratio']:.1f}× less**. Hub GETs by kind "
            "(direct / mirror): "
            + ", ".join(
                f"{k} {d['gets_by_kind'].get(k, 0)} / {m['gets_by_kind'].get(k, 0)}" for k in kinds
            )
            + ".",
        ]
    lines += [
        "",
        "Resumes: a real `http.server` (HTTP/1.0, `sendfile`, `Range: bytes=N-` answered with "
        "206) closes the connection at the cut offsets; `HttpFetcher` re-issues the GET from "
        "the bytes it holds. Backoff waits are injected as no-ops, so the rows are transfer "
        "plus resume cost only; on a real link each resume also waits its jittered backoff "
        "(0.5 s base). Bytes sent / file size = 1 means a resume fetched only what was "
        "missing, never the whole file again. In this run the fetcher without a cut took "
        f"{ratio['fetcher']:.2f}× plain httpx (what it adds per piece the socket delivers: "
        "deadline and cancellation checks, re-chunking into 64 KiB pieces) and each resume "
        f"added {per_resume_ms:+.1f} ms (9 resumes against no cut). Both ends share the "
        "machine's CPUs, so the server's work is in every row alike; differences of a few "
        "per cent are within run-to-run noise on this shared machine.",
        "",
        "Egress: a real `hub serve` (SQLite) behind a TCP relay counting every byte the hub "
        "sends (headers included); the devices run `DeviceTrustClient` cycles as the agent "
        "does (director metadata and desired state, catalog metadata, the model file), first "
        "straight at the hub, then through a real `modelfleet site serve` with a cold cache "
        "(default metadata TTL 2 s). GETs are counted in the hub's access log. What the "
        "mirror still asks the hub for is each device's own director metadata and desired "
        "state (signed per device, forwarded with the device's token, ADR 0031) and the "
        "shared catalog metadata only when its cache has none or it is older than the TTL "
        "(`timestamp.json`, the probe for a next root version; devices asking at the same "
        "moment on a cold cache each miss); the model file is fetched once and served from "
        "the mirror's cache to every device.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delivery")
    parser.add_argument("--size", type=int, default=256 * MIB, help="resume: bytes (256 MiB)")
    parser.add_argument("--repeats", type=int, default=3, help="resume: runs per path (3)")
    parser.add_argument("--devices", type=int, default=100, help="egress: devices (100)")
    parser.add_argument("--workers", type=int, default=10, help="egress: devices at once (10)")
    parser.add_argument("--workdir", type=Path, default=None, help="temp folders' parent")
    parser.add_argument("--skip-egress", action="store_true", help="only the resume part")
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)
    if args.size < 10 or args.repeats < 1 or args.devices < 1 or args.workers < 1:
        parser.error("--size >= 10, --repeats, --devices and --workers >= 1")
    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "resume": run_resume(args.size, args.repeats, args.workdir),
    }
    if not args.skip_egress:
        result["egress"] = run_egress(args.devices, args.workers, args.workdir)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "delivery.json").write_text(json.dumps(result, indent=2))
    text = render(result)
    print(text)
    if not args.no_docs:
        write_section(SECTION, BEGIN, END, text, DOCS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
