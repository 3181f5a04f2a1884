"""Removable-media bundles (issue 11): export and import MB/s against plain ``zstd``.

``python -m benchmarks.run bundle [--bundle-mib N]`` (or ``python -m benchmarks.bundle
[--bundle-mib N] [--repeats N] [--kinds random,float32] [--workdir DIR] [--no-docs]``).

A hub like the media-bundle tests' (``tests/trust/_trust_support.py``: real TUF
repositories on disk, a real :class:`FileArtefactStore`, a loopback HTTP server) runs in a
child process, so its own memory (the test server holds a body it sends) is not in the
exporter's peak RSS. It lists one model of ``--bundle-mib`` MiB (1024) assigned to three
devices of one site: ``random`` bytes (incompressible, the honest worst case) and
``float32`` weights (normal, sigma 0.02; somewhat compressible). Per run, timed:

* **export**: :func:`fill_site_tree` for the three devices (each device's TUF cycle, the
  artefact downloaded once over loopback and recorded, reused from the tree by the other
  two and verified by all three) — "record" — then :func:`write_bundle` (tar + zstd level
  3, one thread, fsync) — "write";
* **plain zstd**: ``tar -cf - -C tree . | zstd -3 -T1`` on the same tree (then ``sync`` of
  the file, as ``write_bundle`` fsyncs), ``zstd -d`` to ``/dev/null``, and
  ``zstd -d | tar -xf -`` into an empty folder;
* **import**: :func:`read_bundle` alone (container checks, unpack into staging), then the
  full :func:`import_bundle` (read + TUF verification of every device + replay check +
  commit) into an empty site folder.

Rates are MB/s (10^6 bytes) of tree bytes. Median of ``--repeats`` (3), interleaved. The
exporter's peak RSS (``ru_maxrss``) is read right after the first export; each kind runs
in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks._docs import DOCS, write_section
from modelfleet.delivery.bundle_export import fill_site_tree, write_trust_root
from modelfleet.delivery.bundle_import import import_bundle
from modelfleet.delivery.http_fetcher import HttpFetcher
from modelfleet.delivery.media_bundle import MediaManifest, read_bundle, write_bundle
from modelfleet.trust import DeviceTrustClient

BEGIN = "<!-- bundle:begin -->"
END = "<!-- bundle:end -->"
SECTION = "## Removable-media bundles (issue 11): export and import against zstd"
RESULTS = Path("bench-results")
MIB = 1 << 20
DEVICES = ("dev-1", "dev-2", "dev-3")
SITE = "plant-a"
KINDS = ("random", "float32")
STEPS = ("record", "write", "zstd-c", "zstd-d", "zstd-dx", "read", "import")


def _chunks(kind: str, size: int) -> Iterator[bytes]:
    """``size`` bytes of the artefact, 1 MiB at a time."""
    if kind == "random":
        left = size
        while left > 0:
            piece = os.urandom(min(MIB, left))
            left -= len(piece)
            yield piece
        return
    import numpy as np

    rng = np.random.default_rng(11)
    left = size
    while left > 0:
        n = min(MIB, left)
        floats = (rng.standard_normal((n + 3) // 4, dtype=np.float32) * 0.02).tobytes()
        left -= n
        yield floats[:n]


def _hub_child(home: Path, kind: str, size: int, conn: Connection) -> None:
    """Build the hub, publish the artefact, assign it, serve until told to stop."""
    import logging

    from tests.trust._trust_support import make_hub, serve

    from modelfleet.hashing import sha256_bytes

    logging.getLogger("modelfleet").setLevel(logging.ERROR)  # unencrypted test keys

    hub = make_hub(home)
    digest, length = hub.store.put_stream(_chunks(kind, size))
    manifest = b'{"model": "big", "version": 1}'
    hub.store.put_bytes(manifest)
    hub.trust.publish_package(
        "big", 1, digest, length, sha256_bytes(manifest), len(manifest),
        {"model": "big", "version": 1, "opset": 17, "runtime": "onnxruntime"},
    )  # fmt: skip
    from modelfleet.rollout.desired_state import ArtefactRef

    ref = ArtefactRef("big", 1, digest, length, sha256_bytes(manifest), len(manifest))
    for d in DEVICES:
        hub.assign(d, ref)
    with serve(hub) as url:
        conn.send({"url": url, "trust_root": hub.trust.trust_root_bundle(), "length": length})
        conn.recv()  # stop


def _client(cache: Path, url: str, anchor: bytes, fetcher: Any) -> DeviceTrustClient:
    from tests.trust._trust_support import TOKEN

    return DeviceTrustClient(cache, url, TOKEN, anchor, fetcher)


def _timed(fn: Any) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _sh(cmd: str) -> None:
    subprocess.run(["bash", "-c", f"set -euo pipefail; {cmd}"], check=True)


def _tree_bytes(tree: Path) -> tuple[int, int]:
    files = [p for p in tree.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def _one_run(
    tmp: Path, url: str, anchor: bytes, runs: dict[str, list[float]], out: dict[str, Any],
    *, first: bool,
) -> None:  # fmt: skip
    """One timed pass of every step; removes what it made."""
    from tests.trust._trust_support import TOKEN

    tree, work, bundle = tmp / "tree", tmp / "work", tmp / "site.mfb"
    plain, x, staging, dest = tmp / "plain.tar.zst", tmp / "x", tmp / "staging", tmp / "site"

    def record() -> None:
        fill_site_tree(DEVICES, tree, work, url, HttpFetcher(TOKEN),
                       lambda c, f: _client(c, url, anchor, f))  # fmt: skip
        write_trust_root(tree, anchor)

    runs["record"].append(_timed(record))
    manifest = MediaManifest(SITE, url, "2026-12-04T00:00:00Z", DEVICES)
    runs["write"].append(_timed(lambda: write_bundle(tree, manifest, bundle)))
    if first:
        out["export_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["tree_bytes"], out["tree_files"] = _tree_bytes(tree)
        out["bundle_bytes"] = bundle.stat().st_size
    if shutil.which("zstd") is not None and shutil.which("tar") is not None:
        runs["zstd-c"].append(_timed(lambda: _sh(
            f"tar -cf - -C '{tree}' . | zstd -3 -T1 -q -f -o '{plain}'; sync '{plain}'"
        )))  # fmt: skip
        out["plain_bytes"] = plain.stat().st_size
        runs["zstd-d"].append(_timed(lambda: _sh(f"zstd -d -q -c '{plain}' > /dev/null")))
        x.mkdir()
        runs["zstd-dx"].append(_timed(lambda: _sh(f"zstd -d -q -c '{plain}' | tar -xf - -C '{x}'")))
        shutil.rmtree(x)
        plain.unlink()
    shutil.rmtree(tree)
    shutil.rmtree(work, ignore_errors=True)
    runs["read"].append(_timed(lambda: read_bundle(bundle, staging)))
    shutil.rmtree(staging)
    result: list[Any] = []
    runs["import"].append(_timed(lambda: result.append(import_bundle(
        bundle, dest, site=SITE, verifier=_client, trust_root=anchor
    ))))  # fmt: skip
    if set(result[0].devices) != set(DEVICES) or result[0].unchanged:
        raise RuntimeError(f"import did not load every device: {result[0]}")
    out["import_bytes_written"] = result[0].bytes_written
    shutil.rmtree(dest)
    bundle.unlink()


def run_kind(kind: str, size: int, repeats: int, workdir: Path | None = None) -> dict[str, Any]:
    """All steps for one artefact kind; medians of ``repeats`` runs."""
    with tempfile.TemporaryDirectory(prefix="mf-bundle-", dir=workdir) as tmp_s:
        tmp = Path(tmp_s)
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_hub_child, args=(tmp / "hub", kind, size, child), daemon=True)
        proc.start()
        try:
            if not parent.poll(600):
                raise RuntimeError("the hub child did not come up")
            info = parent.recv()
            url, anchor = info["url"], info["trust_root"]
            runs: dict[str, list[float]] = {s: [] for s in STEPS}
            out: dict[str, Any] = {"kind": kind, "artefact_bytes": info["length"]}
            out["baseline_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            for r in range(repeats):
                _one_run(tmp, url, anchor, runs, out, first=r == 0)
        finally:
            parent.send("stop")
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    out["repeats"] = repeats
    out["runs"] = {s: v for s, v in runs.items() if v}
    out["median_s"] = {s: statistics.median(v) for s, v in runs.items() if v}
    return out


def _fresh(kind: str, size: int, repeats: int, workdir: Path | None) -> dict[str, Any]:
    """:func:`run_kind` in a fresh interpreter, so its ``ru_maxrss`` is its own."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
        return pool.submit(run_kind, kind, size, repeats, workdir).result()


# --- report -------------------------------------------------------------------------------


def _rate(n: int, s: float) -> str:
    return f"{n / 1e6 / s:,.0f} MB/s" if n / 1e6 / s >= 10 else f"{n / 1e6 / s:.2f} MB/s"


def _times(runs: list[float]) -> str:
    return " / ".join(f"{s:.2f}" for s in runs)


def render(result: dict[str, Any]) -> str:
    mib = round(result["size_bytes"] / MIB, 3)
    lines = [
        f"`python -m benchmarks.run bundle --bundle-mib {mib:g}` — measured {result['when']} "
        f"on {result['machine']}, zstd CLI {result['zstd_version']}.",
        "",
    ]
    for res in result["kinds"]:
        med, tb = res["median_s"], res["tree_bytes"]
        rise = (res["export_peak_rss_bytes"] - res["baseline_rss_bytes"]) / res["artefact_bytes"]
        export_s = med["record"] + med["write"]
        names = [
            ("export: `fill_site_tree` (3 devices' TUF cycles, recorded)", "record"),
            ("export: `write_bundle` (tar + zstd -3, 1 thread, fsync)", "write"),
            ("plain `tar -c \\| zstd -3 -T1` (+ `sync`)", "zstd-c"),
            ("plain `zstd -d` to /dev/null", "zstd-d"),
            ("plain `zstd -d \\| tar -x`", "zstd-dx"),
            ("import: `read_bundle` (container checks, unpack)", "read"),
            ("import: `import_bundle` (read + TUF verify + replay + commit)", "import"),
        ]
        n = res["repeats"]
        lines += [
            f"**{res['kind']}** artefact ({res['artefact_bytes']:,} B): tree {tb:,} B in "
            f"{res['tree_files']} files; bundle {res['bundle_bytes']:,} B "
            f"({res['bundle_bytes'] / tb:.4f} of the tree)"
            + (
                f", plain `tar | zstd -3` {res['plain_bytes']:,} B ({res['plain_bytes'] / tb:.4f})"
                if "plain_bytes" in res
                else ""
            )
            + f". Median of {n} run{'s' if n > 1 else ''}; "
            f"exporter peak RSS {res['export_peak_rss_bytes'] / MIB:,.0f} MiB "
            f"({res['baseline_rss_bytes'] / MIB:,.0f} MiB before the export; the rise is "
            f"{rise:.2f}× the artefact).",
            "",
            "| step | median | rate (tree bytes) | runs (s) |",
            "|---|---:|---:|---:|",
        ]
        for label, key in names:
            if key in med:
                lines.append(
                    f"| {label} | {med[key]:.2f} s | {_rate(tb, med[key])} "
                    f"| {_times(res['runs'][key])} |"
                )
        lines.append(
            f"| **export total** (record + write) | {export_s:.2f} s | {_rate(tb, export_s)} | |"
        )
        if "zstd-c" in med:
            lines += [
                "",
                f"Against plain zstd: `write_bundle` {med['write'] / med['zstd-c']:.2f}× the "
                f"time of `tar | zstd -3`, the whole export {export_s / med['zstd-c']:.2f}×; "
                f"`read_bundle` {med['read'] / med['zstd-dx']:.2f}× `zstd -d | tar -x`, "
                f"`import_bundle` {med['import'] / med['zstd-dx']:.2f}×.",
            ]
        lines.append("")
    return "\n".join(lines)


def _zstd_version() -> str:
    try:
        out = subprocess.run(["zstd", "-V"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "absent"
    return out.split(" v", 1)[-1].split(",")[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bundle")
    parser.add_argument("--bundle-mib", type=float, default=1024, help="artefact MiB (1024)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per kind (3)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="random,float32")
    parser.add_argument("--workdir", type=Path, default=None, help="temp folders' parent")
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    size = int(args.bundle_mib * MIB)
    if size < 1024 or args.repeats < 1 or not kinds or set(kinds) - set(KINDS):
        parser.error("--bundle-mib >= 1/1024, --repeats >= 1, --kinds from random,float32")
    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "zstd_version": _zstd_version(),
        "size_bytes": size,
        "kinds": [_fresh(k, size, args.repeats, args.workdir) for k in kinds],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bundle.json").write_text(json.dumps(result, indent=2))
    text = render(result)
    print(text)
    if not args.no_docs:
        write_section(SECTION, BEGIN, END, text + _EXPLAIN, DOCS)
    return 0


_EXPLAIN = """
What is measured: the hub is the media-bundle tests' in-process one (real TUF repositories
and artefact store, a loopback HTTP server), run in a child process; its model is one
artefact of the stated size assigned to three devices of one site, so the tree holds the
artefact once plus each device's director metadata and the catalog metadata. "record" is
`fill_site_tree`: each device's TUF cycle against the hub (the artefact downloaded once and
recorded into the tree, reused from the tree by the other two devices, and hash-verified
into scratch by all three, as `modelfleet bundle export` does). "write" is `write_bundle`
(pax tar, one zstd frame level 3 with checksum, one thread, per-file SHA-256 for the index,
fsync). The plain rows run the zstd CLI on the same tree in the same run: `tar -c | zstd
-3 -T1` then `sync` of the file (as `write_bundle` fsyncs), `zstd -d` alone, and `zstd -d |
tar -x`. "read" is `read_bundle` alone (container checks, per-file SHA-256 against the
index, unpack into staging); "import" is the whole `import_bundle`: the read, then every
device's TUF verification from the staged tree (the artefact re-hashed), the replay check
and the commit (fsync per file, rename). All on one disk with a warm page cache; rates are
of tree bytes, 10^6 bytes per MB. The machine's CPUs are shared with other work, so the
spread of the runs is shown beside each median. The exporter's peak RSS is `ru_maxrss` of
the exporting process after its first export (the hub is in another process):
`RecordingFetcher` holds each body in memory until it is complete, then copies it to write
it, so the peak rises by about twice the artefact — to be fixed by spooling recorded bodies
to disk.
"""


if __name__ == "__main__":
    raise SystemExit(main())
