"""Verify and install a 1 GiB package, relative to hashing it with hashlib (issue 10).

``python -m benchmarks.run verify-install [--size BYTES] [--repeats N]`` (or
``python -m benchmarks.verify_install``).

A generated file (default 1 GiB) is published in a real signed catalog
(:class:`~modelfleet.trust.HubTrust`); the agent's :class:`DeviceTrustClient` then fetches it
the way ``agent/install.py`` does, ``fetch_package_file`` into a slot's staging folder (TUF
verification of length and sha256, written beside the destination, fsynced, renamed into
place) followed by :meth:`SlotStore.commit`. The transport is a fetcher reading the
repository's files from local disk (a site mirror / removable-medium read), so what is timed
is verification and installation, not a network. The bar is ``hashlib.sha256`` over the
same file in the same run (read in 1 MiB blocks). For comparison the run also times
python-tuf's stock ``Updater.download_target`` path that the agent used before (temporary
file, read back to hash, copied to the destination, then fsync and rename).

Median of ``--repeats`` (3) runs each. The smoke test that ``install_version`` runs after
this depends on the model, not its size, and is not included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from benchmarks._docs import DOCS, write_section
from modelfleet.agent.slots import SlotStore
from modelfleet.catalog.artefacts import FileArtefactStore
from modelfleet.clock import ManualClock
from modelfleet.trust import DeviceTrustClient, HubTrust, generate_keys

BEGIN = "<!-- verify-install:begin -->"
END = "<!-- verify-install:end -->"
SECTION = "## Verify and install a 1 GiB package (issue 10)"
RESULTS = Path("bench-results")
HUB = "http://hub.invalid"
BLOCK = 1 << 20
GOAL = 1.3


class _LocalFetcher(FetcherInterface):
    """Serves the hub's TUF URLs from its files on this disk (a mirror / medium read)."""

    def __init__(self, trust: HubTrust, store: FileArtefactStore) -> None:
        self._trust = trust
        self._store = store

    def _fetch(self, url: str) -> Iterator[bytes]:
        repo, kind, rest = url.removeprefix(f"{HUB}/tuf/").split("/", 2)
        path: Path | None = None
        if kind == "metadata":
            path = self._trust.metadata_path(repo, rest)
        elif kind == "targets":
            digest = self._trust.target_digest(repo, rest)
            path = self._store.path(digest) if digest else None
        if path is None or not path.is_file():
            raise DownloadHTTPError(f"GET {url}: 404", 404)
        return _read(path)


def _read(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            yield chunk


def _make_file(path: Path, size: int) -> str:
    """``size`` bytes of incompressible data (a random MiB repeated); returns its sha256."""
    block = os.urandom(BLOCK)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            piece = block[: min(BLOCK, left)]
            f.write(piece)
            h.update(piece)
            left -= len(piece)
    return h.hexdigest()


def _hashlib(path: Path) -> float:
    start = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
    h.hexdigest()
    return time.perf_counter() - start


def _disk(source: Path, dest: Path) -> float:
    """The disk's floor: copy the file as an install writes it (1 MiB writes, an
    ``fdatasync`` every 32 MiB and at the end), with no hashing and no verification."""
    start = time.perf_counter()
    with open(source, "rb") as f, open(dest, "wb") as out:
        unsynced = 0
        while chunk := f.read(BLOCK):
            out.write(chunk)
            unsynced += len(chunk)
            if unsynced >= 32 << 20:
                out.flush()
                os.fdatasync(out.fileno())
                unsynced = 0
        out.flush()
        os.fsync(out.fileno())
    took = time.perf_counter() - start
    dest.unlink()
    return took


def _agent(
    cache: Path, bundle: bytes, fetcher: FetcherInterface, slots: SlotStore, ref: tuple[str, int]
) -> float:
    sha, length = ref
    client = DeviceTrustClient(cache, HUB, "", bundle, fetcher=fetcher)
    client.refresh_catalog()  # metadata first: what is timed is the artefact
    start = time.perf_counter()
    staging = slots.staging_dir()
    client.fetch_package_file("models/big/1/model.onnx", sha, length, staging / "model.onnx")
    slots.commit(staging, "big", sha)
    took = time.perf_counter() - start
    shutil.rmtree(slots.version_dir("big", sha))
    shutil.rmtree(cache)
    return took


def _stock(cache: Path, bundle: bytes, fetcher: FetcherInterface, dest_dir: Path) -> float:
    """python-tuf's own download_target + fsync + rename (the agent's path before)."""
    client = DeviceTrustClient(cache, HUB, "", bundle, fetcher=fetcher)
    client.refresh_catalog()
    updater = client._catalog  # the verified catalog view this cycle
    assert updater is not None
    start = time.perf_counter()
    info = updater.get_targetinfo("models/big/1/model.onnx")
    assert info is not None
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp, dest = dest_dir / ".model.onnx.partial", dest_dir / "model.onnx"
    updater.download_target(info, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    took = time.perf_counter() - start
    shutil.rmtree(dest_dir)
    shutil.rmtree(cache)
    return took


def run(size: int, repeats: int, workdir: Path | None = None) -> dict[str, object]:
    """Time hashlib, the agent's path and the stock path; medians of ``repeats``."""
    with tempfile.TemporaryDirectory(prefix="mf-verify-", dir=workdir) as tmp_s:
        tmp = Path(tmp_s)
        blob = tmp / "model.bin"
        sha = _make_file(blob, size)
        clock = ManualClock(datetime.now(UTC))
        generate_keys(tmp / "keys")
        trust = HubTrust.init(tmp / "tuf", tmp / "keys", clock)
        store = FileArtefactStore(tmp / "artefacts")
        with open(blob, "rb") as f:
            digest, length = store.put_stream(iter(lambda: f.read(BLOCK), b""))
        blob.unlink()
        assert digest == sha
        manifest = b'{"model": "big"}'
        store.put_bytes(manifest)
        trust.publish_package(
            "big", 1, sha, length, hashlib.sha256(manifest).hexdigest(), len(manifest), {}
        )
        bundle = trust.trust_root_bundle()
        fetcher = _LocalFetcher(trust, store)
        slots = SlotStore(tmp / "slots")
        source = store.path(sha)
        times: dict[str, list[float]] = {"hashlib": [], "disk": [], "agent": [], "stock": []}
        for _ in range(repeats):  # interleaved, so load on the machine hits all alike
            times["hashlib"].append(_hashlib(source))
            times["disk"].append(_disk(source, tmp / "disk-floor.bin"))
            times["agent"].append(_agent(tmp / "cache", bundle, fetcher, slots, (sha, length)))
            times["stock"].append(_stock(tmp / "cache", bundle, fetcher, tmp / "stock"))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size_bytes": size,
        "repeats": repeats,
        "seconds": times,
        "median_s": med,
        "ratio_agent": med["agent"] / med["hashlib"],
        "ratio_disk": med["disk"] / med["hashlib"],
        "agent_over_disk": med["agent"] / med["disk"],
        "ratio_stock": med["stock"] / med["hashlib"],
        "goal": GOAL,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
    }


def _mib_s(size: int, seconds: float) -> str:
    return f"{size / (1 << 20) / seconds:,.0f} MiB/s"


def render(result: dict[str, object]) -> str:
    size = int(result["size_bytes"])  # type: ignore[call-overload]
    med: dict[str, float] = result["median_s"]  # type: ignore[assignment]
    rows = [
        ("hashlib SHA-256 of the file (the bar)", med["hashlib"], 1.0),
        ("disk floor: write + fdatasync, no hashing", med["disk"], result["ratio_disk"]),
        ("agent: fetch_package_file + slot commit", med["agent"], result["ratio_agent"]),
        ("before: ngclient download_target + fsync + rename", med["stock"], result["ratio_stock"]),
    ]
    lines = [
        f"`python -m benchmarks.run verify-install` — {size / (1 << 30):.2f} GiB, median of "
        f"{result['repeats']}, {result['machine']}, load average {result['loadavg']}. "
        f"Goal: agent ≤ {GOAL}× hashlib; agent ÷ disk floor: {result['agent_over_disk']:.2f}.",
        "",
        "| path | median | rate | × hashlib |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds, ratio in rows:
        lines.append(f"| {name} | {seconds:.2f} s | {_mib_s(size, seconds)} | {ratio:.2f}× |")
    lines += [
        "",
        "The agent's path verifies in one pass (`trust/_ngclient.py: download_target`): each "
        "chunk is hashed as it is written to the `.partial` file beside the destination, which "
        "is fsynced and renamed only when length and hash match (ADR 0024). python-tuf's own "
        "`download_target` makes three passes (write a temporary file, read it back to hash, "
        "copy it to the destination). The writes and the syncs to disk run on a thread of "
        "their own (`trust/_file_writer.py`), overlapping the hashing; the bytes are synced "
        "every 32 MiB. What stays above hashlib is writing the file durably, which an install "
        "needs and hashing does not: the *disk floor* row copies the same bytes the same way "
        "with no hashing at all, so no install can be faster than it on this machine. "
        "Transport: the repository's files on local disk (a mirror or medium read); smoke "
        "tests not included. The figures move with load (under load 8–10 hashlib measured "
        "149 MiB/s and the agent 1.21×; with SHA-NI on a quiet machine hashlib reads 1.5 GiB/s "
        "and the disk is the limit), so compare rows of one run only.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.verify_install")
    parser.add_argument("--size", type=int, default=1 << 30, help="bytes (1 GiB)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path (3)")
    parser.add_argument("--workdir", type=Path, default=None, help="temp folder's parent")
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)
    if args.size < 1 or args.repeats < 1:
        parser.error("--size >= 1 and --repeats >= 1")
    result = run(args.size, args.repeats, args.workdir)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify_install.json").write_text(json.dumps(result, indent=2))
    text = render(result)
    print(text)
    if not args.no_docs:
        write_section(SECTION, BEGIN, END, text, DOCS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
