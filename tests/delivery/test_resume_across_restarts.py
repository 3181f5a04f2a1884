"""A download cut short is kept and continued by the next agent run (issue 11, ADR 0033
amendment), over real loopback HTTP: the whole artefact's hash still decides."""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet.delivery import HttpFetcher
from modelfleet.delivery.http_fetcher import DownloadSettings
from modelfleet.errors import CorruptDeliveryError, TransportError
from modelfleet.rollout.desired_state import ArtefactRef
from modelfleet.trust import DeviceTrustClient
from modelfleet.trust._ngclient import prune_partials
from tests.delivery.test_http_resume import SIZE
from tests.trust._trust_support import TOKEN, Hub, make_hub, serve

MODEL = random.Random(33).randbytes(1 << 20)


@dataclass
class _Link:
    """What the proxy in front of the hub does to the model's body."""

    cut_at: list[int] = field(default_factory=list)  # absolute offsets, one per request
    ignore_range: bool = False
    refuse_range: bool = False  # answer 416 to a Range request
    ranges: list[str | None] = field(default_factory=list)
    served: int = 0  # body bytes sent for the model


class _Proxy(BaseHTTPRequestHandler):
    upstream: str
    link: _Link

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        headers = {"Authorization": self.headers.get("Authorization", "")}
        request = urllib.request.Request(self.upstream + self.path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as upstream:
                status, body = upstream.status, upstream.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        if status != 200 or body != MODEL:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        link = self.link
        header = self.headers.get("Range")
        link.ranges.append(header)
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        if match and link.refuse_range:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(match.group(1)) if match and not link.ignore_range else 0
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        end = link.cut_at.pop(0) if link.cut_at else len(body)
        try:
            self.wfile.write(body[start:end])
            link.served += max(0, end - start)
            self.wfile.flush()
        except OSError:
            pass
        # HTTP/1.0: the connection closes here, short of Content-Length when cut.


@dataclass
class _Site:
    hub: Hub
    url: str
    link: _Link
    ref: ArtefactRef
    cache: Path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[_Site]:
    hub = make_hub(tmp_path / "hub")
    ref = hub.publish("m", 1, MODEL)
    link = _Link()
    with serve(hub) as upstream:
        proxy = ThreadingHTTPServer(
            ("127.0.0.1", 0), type("P", (_Proxy,), {"upstream": upstream, "link": link})
        )
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{proxy.server_address[1]}"
            yield _Site(hub, url, link, ref, tmp_path / "dev" / "tuf")
        finally:
            proxy.shutdown()
            proxy.server_close()
            thread.join(5)


def _fetch(site: _Site, dest: Path, max_resumes: int = 0) -> Path:
    """One agent run: a new client and fetcher over the same cache folder."""
    fetcher = HttpFetcher(
        TOKEN, settings=DownloadSettings(max_resumes=max_resumes), sleep=lambda s: None
    )
    client = DeviceTrustClient(
        site.cache, site.url, TOKEN, site.hub.trust.trust_root_bundle(), fetcher=fetcher
    )
    try:
        return client.fetch_package_file(
            site.ref.model_path, site.ref.sha256, site.ref.length, dest
        )
    finally:
        client.close()
        fetcher.close()


def _partials(site: _Site) -> list[Path]:
    folder = site.cache / "catalog" / "partials"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _cut_at_60(site: _Site, dest: Path) -> Path:
    """A first run whose link drops at 60 % with no resumes left: the partial is kept."""
    cut = SIZE * 6 // 10
    site.link.cut_at = [cut]
    with pytest.raises(TransportError):
        _fetch(site, dest)
    assert not dest.exists()
    (partial,) = _partials(site)
    assert partial.name == f"{site.ref.sha256}.{site.ref.length}.partial"
    assert partial.stat().st_size == cut
    return partial


def test_a_restarted_agent_continues_a_download_cut_at_60_percent(
    site: _Site, tmp_path: Path
) -> None:
    dest = tmp_path / "staging" / "model.onnx"
    _cut_at_60(site, dest)
    site.link.served = 0
    assert _fetch(site, dest) == dest  # a new client and fetcher: a restart
    assert site.link.ranges == [None, f"bytes={SIZE * 6 // 10}-"]
    assert site.link.served == SIZE - SIZE * 6 // 10  # only the remaining 40 %
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == site.ref.sha256
    assert _partials(site) == []  # consumed


def test_a_tampered_partial_is_refused_deleted_and_the_retry_starts_from_zero(
    site: _Site, tmp_path: Path
) -> None:
    dest = tmp_path / "staging" / "model.onnx"
    partial = _cut_at_60(site, dest)
    with open(partial, "r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptDeliveryError, match="hash mismatch"):
        _fetch(site, dest)
    assert not dest.exists() and _partials(site) == []
    assert _fetch(site, dest) == dest
    assert site.link.ranges == [None, f"bytes={SIZE * 6 // 10}-", None]
    assert dest.read_bytes() == MODEL


def test_a_server_answering_200_to_range_starts_over_and_is_still_right(
    site: _Site, tmp_path: Path
) -> None:
    dest = tmp_path / "staging" / "model.onnx"
    _cut_at_60(site, dest)
    site.link.ignore_range = True
    site.link.served = 0
    assert _fetch(site, dest) == dest
    assert site.link.ranges[-1] == f"bytes={SIZE * 6 // 10}-"
    assert site.link.served == SIZE
    assert dest.read_bytes() == MODEL and _partials(site) == []


def test_a_416_to_the_range_starts_over_without_range(site: _Site, tmp_path: Path) -> None:
    dest = tmp_path / "staging" / "model.onnx"
    _cut_at_60(site, dest)
    site.link.refuse_range = True
    assert _fetch(site, dest) == dest
    assert site.link.ranges == [None, f"bytes={SIZE * 6 // 10}-", None]
    assert dest.read_bytes() == MODEL


def test_a_partial_longer_than_the_signed_length_is_deleted(site: _Site, tmp_path: Path) -> None:
    dest = tmp_path / "staging" / "model.onnx"
    partial = _cut_at_60(site, dest)
    partial.write_bytes(MODEL + b"extra")
    assert _fetch(site, dest) == dest
    assert site.link.ranges == [None, None]  # from 0, no Range
    assert dest.read_bytes() == MODEL and _partials(site) == []


def test_a_partial_cut_again_on_the_restart_keeps_growing(site: _Site, tmp_path: Path) -> None:
    dest = tmp_path / "staging" / "model.onnx"
    _cut_at_60(site, dest)
    site.link.cut_at = [SIZE * 8 // 10]
    with pytest.raises(TransportError):
        _fetch(site, dest)
    (partial,) = _partials(site)
    assert partial.stat().st_size == SIZE * 8 // 10
    assert _fetch(site, dest) == dest
    assert site.link.ranges[-1] == f"bytes={SIZE * 8 // 10}-"
    assert dest.read_bytes() == MODEL


def test_prune_partials_drops_old_ones_and_keeps_the_newest_few(tmp_path: Path) -> None:
    folder = tmp_path / "partials"
    folder.mkdir()
    now = 1_000_000_000.0
    files = []
    for n in range(6):
        p = folder / f"{n:064x}.10.partial"
        p.write_bytes(b"x")
        os.utime(p, (now - n * 3600, now - n * 3600))  # n hours old
        files.append(p)
    stale = folder / f"{9:064x}.10.partial"
    stale.write_bytes(b"x")
    os.utime(stale, (now - 8 * 86400, now - 8 * 86400))
    (folder / "other.txt").write_bytes(b"not ours")
    removed = prune_partials(folder, keep=[files[5]], now=now, max_files=3)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [files[0].name, files[1].name, files[5].name, "other.txt"]
    )
    assert stale in removed and files[2] in removed


def test_partials_of_artefacts_no_longer_wanted_are_collected(site: _Site, tmp_path: Path) -> None:
    dest = tmp_path / "staging" / "model.onnx"
    partial = _cut_at_60(site, dest)
    client = DeviceTrustClient(site.cache, site.url, TOKEN, site.hub.trust.trust_root_bundle())
    try:
        assert client.prune_partials([site.ref.sha256]) == []  # still wanted: kept
        assert partial.exists()
        assert client.prune_partials([]) == [partial]  # nothing pending any more
        assert _partials(site) == []
    finally:
        client.close()


class _PlainFetcher(FetcherInterface):
    """A fetcher that cannot start at an offset (as FolderFetcher): it wraps an HttpFetcher."""

    def __init__(self) -> None:
        self.inner = HttpFetcher(TOKEN, settings=DownloadSettings(max_resumes=0))

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self.inner.fetch(url)


def test_a_fetcher_without_offsets_rewrites_the_kept_partial_from_zero(
    site: _Site, tmp_path: Path
) -> None:
    dest = tmp_path / "staging" / "model.onnx"
    _cut_at_60(site, dest)
    plain = _PlainFetcher()
    client = DeviceTrustClient(
        site.cache, site.url, TOKEN, site.hub.trust.trust_root_bundle(), fetcher=plain
    )
    try:
        client.fetch_package_file(site.ref.model_path, site.ref.sha256, site.ref.length, dest)
    finally:
        client.close()
        plain.inner.close()
    assert site.link.ranges == [None, None]
    assert dest.read_bytes() == MODEL and _partials(site) == []
