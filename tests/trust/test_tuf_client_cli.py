"""``modelfleet tuf-client`` as a real process against a TUF repository on loopback (issue 10).

The repository is made with python-tuf's Metadata API (consistent snapshots, hash-prefixed
target files) in a temporary folder and served by a plain static HTTP server, the way the
tuf-conformance suite drives a client (CLIENT-CLI.md).
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Key,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

ROLES = ("root", "timestamp", "snapshot", "targets")
PAYLOAD = b"model bytes for the tuf-client test\n" * 64


@dataclass
class Served:
    """A repository folder on loopback and the requests the server saw."""

    root: Path
    url: str
    requests: list[str]

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.url}/targets/"


def _write_repository(folder: Path, payload: bytes) -> None:
    """root v1, targets v1 with ``models/m/1/model.onnx``, snapshot, timestamp."""
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    signers = {r: CryptoSigner.generate_ed25519() for r in ROLES}
    root = Root(expires=expires, consistent_snapshot=True)
    for name, signer in signers.items():
        key: Key = signer.public_key
        root.add_key(key, name)
    sha = hashlib.sha256(payload).hexdigest()
    target = TargetFile(len(payload), {"sha256": sha}, "models/m/1/model.onnx")
    targets = Targets(expires=expires, targets={target.path: target})
    snapshot = Snapshot(expires=expires, meta={"targets.json": MetaFile(1)})
    timestamp = Timestamp(expires=expires, snapshot_meta=MetaFile(1))
    md_dir = folder / "metadata"
    md_dir.mkdir(parents=True)
    out: dict[str, Any] = {
        "1.root.json": root,
        "1.targets.json": targets,
        "1.snapshot.json": snapshot,
        "timestamp.json": timestamp,
    }
    for filename, signed in out.items():
        md = Metadata(signed)
        md.sign(signers[signed.type])
        md.to_file(str(md_dir / filename))
    (folder / "initial_root.json").write_bytes((md_dir / "1.root.json").read_bytes())
    target_file = folder / "targets" / "models" / "m" / "1" / f"{sha}.model.onnx"
    target_file.parent.mkdir(parents=True)
    target_file.write_bytes(payload)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    repo = tmp_path / "repo"
    _write_repository(repo, PAYLOAD)
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(repo)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(repo, f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()


def tuf_client(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``modelfleet tuf-client ARGS`` as its own process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("MODELFLEET_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "modelfleet", "tuf-client", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _assert_clean_failure(result: subprocess.CompletedProcess[str], code: int = 1) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: "), result.stderr


def _init(served: Served, md: Path) -> None:
    result = tuf_client("--metadata-dir", md, "init", served.root / "initial_root.json")
    assert result.returncode == 0, result.stderr


def _download(served: Served, md: Path, targets: Path) -> subprocess.CompletedProcess[str]:
    return tuf_client(
        "--metadata-dir",
        md,
        "--metadata-url",
        served.metadata_url,
        "--target-name",
        "models/m/1/model.onnx",
        "--target-base-url",
        served.targets_url,
        "--target-dir",
        targets,
        "download",
    )


def test_init_refresh_download_store_verified_files_under_plain_names(
    served: Served, tmp_path: Path
) -> None:
    md, targets = tmp_path / "md", tmp_path / "targets"
    init = tuf_client("--metadata-dir", md, "init", served.root / "initial_root.json")
    assert init.returncode == 0, init.stderr
    assert served.requests == []  # init makes no request
    refresh = tuf_client("--metadata-dir", md, "--metadata-url", served.metadata_url, "refresh")
    assert refresh.returncode == 0, refresh.stderr
    assert sorted(p.name for p in md.glob("*.json")) == [
        "root.json",
        "snapshot.json",
        "targets.json",
        "timestamp.json",
    ]
    first = _download(served, md, targets)
    assert first.returncode == 0, first.stderr
    [stored] = list(targets.iterdir())
    assert stored.read_bytes() == PAYLOAD
    fetched = [r for r in served.requests if "/targets/" in r]
    assert len(fetched) == 1
    again = _download(served, md, targets)  # cached: verified on disk, not fetched again
    assert again.returncode == 0, again.stderr
    assert [r for r in served.requests if "/targets/" in r] == fetched


def test_tampered_target_is_refused_and_nothing_is_stored(served: Served, tmp_path: Path) -> None:
    md, targets = tmp_path / "md", tmp_path / "targets"
    [blob] = (served.root / "targets").rglob("*.model.onnx")
    blob.write_bytes(PAYLOAD[:-1] + b"X")
    assert (
        tuf_client("--metadata-dir", md, "init", served.root / "initial_root.json").returncode == 0
    )
    result = _download(served, md, targets)
    _assert_clean_failure(result)
    assert "hash mismatch" in result.stderr
    assert not targets.exists() or list(targets.iterdir()) == []


def test_target_longer_than_signed_is_cut_and_refused(served: Served, tmp_path: Path) -> None:
    md, targets = tmp_path / "md", tmp_path / "targets"
    [blob] = (served.root / "targets").rglob("*.model.onnx")
    blob.write_bytes(PAYLOAD + b"extra")
    assert (
        tuf_client("--metadata-dir", md, "init", served.root / "initial_root.json").returncode == 0
    )
    result = _download(served, md, targets)
    _assert_clean_failure(result)
    assert "longer than its signed length" in result.stderr
    assert not targets.exists() or list(targets.iterdir()) == []


def test_metadata_signed_by_an_unknown_key_fails_refresh(served: Served, tmp_path: Path) -> None:
    md = tmp_path / "md"
    assert (
        tuf_client("--metadata-dir", md, "init", served.root / "initial_root.json").returncode == 0
    )
    ts_file = served.root / "metadata" / "timestamp.json"
    ts = Metadata[Timestamp].from_file(str(ts_file))
    ts.signed.version += 1
    ts.sign(CryptoSigner.generate_ed25519())  # replaces the real signature
    ts.to_file(str(ts_file))
    result = tuf_client("--metadata-dir", md, "--metadata-url", served.metadata_url, "refresh")
    _assert_clean_failure(result)
    assert "timestamp" in result.stderr


@pytest.mark.parametrize(
    ("case", "args", "code"),
    [
        ("refresh without --metadata-url", ["--metadata-dir", "{md}", "refresh"], 2),
        ("no --metadata-dir", ["init", "{root}"], 2),
        ("unknown subcommand", ["--metadata-dir", "{md}", "frobnicate"], 2),
        (
            "download without --target-name",
            [
                "--metadata-dir",
                "{md}",
                "--metadata-url",
                "{url}",
                "--target-base-url",
                "{url}",
                "--target-dir",
                "{md}",
                "download",
            ],
            2,
        ),
        ("init with a missing root file", ["--metadata-dir", "{md}", "init", "{md}/none"], 1),
        (
            "refresh before init",
            ["--metadata-dir", "{md}", "--metadata-url", "{url}", "refresh"],
            1,
        ),
    ],
)
def test_wrong_usage_is_one_line_and_nonzero(
    served: Served, tmp_path: Path, case: str, args: list[str], code: int
) -> None:
    del case
    values = {
        "md": str(tmp_path / "md"),
        "root": str(served.root / "initial_root.json"),
        "url": served.metadata_url,
    }
    result = tuf_client(*(a.format(**values) for a in args))
    _assert_clean_failure(result, code)


def test_unknown_target_fails_with_exit_code_1(served: Served, tmp_path: Path) -> None:
    md, targets = tmp_path / "md", tmp_path / "targets"
    assert (
        tuf_client("--metadata-dir", md, "init", served.root / "initial_root.json").returncode == 0
    )
    result = tuf_client(
        "--metadata-dir",
        md,
        "--metadata-url",
        served.metadata_url,
        "--target-name",
        "models/none/1/model.onnx",
        "--target-base-url",
        served.targets_url,
        "--target-dir",
        targets,
        "download",
    )
    _assert_clean_failure(result)
    assert "not in the repository" in result.stderr


def test_unreachable_repository_exits_1_not_the_cli_unreachable_code(tmp_path: Path) -> None:
    md = tmp_path / "md"
    root_dir = tmp_path / "repo"
    _write_repository(root_dir, PAYLOAD)
    assert tuf_client("--metadata-dir", md, "init", root_dir / "initial_root.json").returncode == 0
    result = tuf_client("--metadata-dir", md, "--metadata-url", "http://127.0.0.1:9/", "refresh")
    _assert_clean_failure(result)  # the spec: 1 for any failure (not modelfleet's 5)
