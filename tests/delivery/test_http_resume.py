"""HttpFetcher resumes a body cut mid-way with HTTP Range (issue 11), over real loopback HTTP."""

from __future__ import annotations

import hashlib
import logging
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
from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError

from modelfleet.agent.daemon import UpdateLoop
from modelfleet.agent.updater import Updater
from modelfleet.backoff import BackoffPolicy
from modelfleet.clock import ManualClock
from modelfleet.delivery import HttpFetcher
from modelfleet.delivery.http_fetcher import DownloadSettings
from modelfleet.errors import ConfigError
from modelfleet.packaging.build import build_manifest
from modelfleet.serving.host import ModelHost
from modelfleet.trust import DeviceTrustClient
from tests.helpers import logistic_onnx
from tests.trust._trust_support import TOKEN, make_hub, serve

SIZE = 1 << 20
ARTEFACT = random.Random(11).randbytes(SIZE)
PATH = "/targets/0123abcd.model.bin"


@dataclass
class _State:
    cuts: list[int] = field(default_factory=list)  # absolute offsets, one per request
    ignore_range: bool = False
    wrong_start: bool = False
    statuses: list[int] = field(default_factory=list)  # forced statuses, one per request
    ranges: list[str | None] = field(default_factory=list)  # Range header of each request


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        st = self.state
        header = self.headers.get("Range")
        st.ranges.append(header)
        if self.path != PATH:
            self.send_error(404)
            return
        if st.statuses:
            status = st.statuses.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        if match is not None and not st.ignore_range:
            start = int(match.group(1))
            shown = start + 1 if st.wrong_start else start
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {shown}-{SIZE - 1}/{SIZE}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(SIZE - start))
        self.end_headers()
        end = st.cuts.pop(0) if st.cuts else SIZE
        offset = start
        try:
            while offset < max(end, start):
                step = min(1 << 14, end - offset)
                self.wfile.write(ARTEFACT[offset : offset + step])
                offset += step
            self.wfile.flush()
        except OSError:
            pass
        # HTTP/1.0: the connection closes here, short of Content-Length when cut.


@pytest.fixture
def server() -> Iterator[tuple[str, _State]]:
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}{PATH}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _fetcher(
    max_resumes: int = 5, sleeps: list[float] | None = None, chunk_size: int = 1 << 16
) -> HttpFetcher:
    return HttpFetcher(
        "s3cret",
        settings=DownloadSettings(max_resumes=max_resumes, read_timeout_s=10.0),
        chunk_size=chunk_size,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        rand=random.Random(7).random,
        resume_backoff=BackoffPolicy(base_s=0.5, cap_s=4.0),
    )


def test_a_download_cut_at_every_tenth_resumes_to_the_exact_bytes(
    server: tuple[str, _State], caplog: pytest.LogCaptureFixture
) -> None:
    url, state = server
    # Ten cuts, one per attempt, each just short of the next 10 % mark.
    state.cuts = [SIZE * k // 10 - 1 for k in range(1, 11)]
    sleeps: list[float] = []
    caplog.set_level(logging.INFO, logger="modelfleet.delivery.http_fetcher")
    with _fetcher(max_resumes=10, sleeps=sleeps, chunk_size=10_000) as f:
        body = f.download_bytes(url, SIZE)
    assert body == ARTEFACT
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(ARTEFACT).hexdigest()
    assert state.ranges == [None] + [f"bytes={SIZE * k // 10 - 1}-" for k in range(1, 11)]
    resumed = [r for r in caplog.records if "resuming download" in r.getMessage()]
    assert len(resumed) == 10
    assert url in resumed[0].getMessage() and str(SIZE // 10 - 1) in resumed[0].getMessage()


def test_the_sleep_saw_bounded_jittered_backoff_delays(server: tuple[str, _State]) -> None:
    url, state = server
    state.cuts = [SIZE * k // 10 for k in range(1, 10)]
    sleeps: list[float] = []
    with _fetcher(max_resumes=9, sleeps=sleeps) as f:
        assert f.download_bytes(url, SIZE) == ARTEFACT
    policy = BackoffPolicy(base_s=0.5, cap_s=4.0)
    assert len(sleeps) == 9
    for n, delay in enumerate(sleeps, start=1):
        assert 0.05 <= delay <= policy.ceiling(n) <= 4.0
    assert len(set(sleeps)) > 1  # jittered, not a fixed schedule
    rand = random.Random(7).random
    assert sleeps == [policy.delay(n, rand) for n in range(1, 10)]


def test_a_server_ignoring_range_still_yields_the_exact_bytes(
    server: tuple[str, _State],
) -> None:
    url, state = server
    state.ignore_range = True
    state.cuts = [300_001, 700_003]
    with _fetcher() as f:
        assert f.download_bytes(url, SIZE) == ARTEFACT
    assert state.ranges == [None, "bytes=300001-", "bytes=700003-"]


def test_a_206_with_a_wrong_content_range_start_is_refused(server: tuple[str, _State]) -> None:
    url, state = server
    state.wrong_start = True
    state.cuts = [400_000]
    with _fetcher() as f, pytest.raises(DownloadError, match="Content-Range") as err:
        f.download_bytes(url, SIZE)
    assert not isinstance(err.value, DownloadHTTPError)


def test_more_cuts_than_max_resumes_is_a_download_error(server: tuple[str, _State]) -> None:
    url, state = server
    state.cuts = [100_000 * k for k in range(1, 6)]  # five cuts, three resumes allowed
    sleeps: list[float] = []
    with _fetcher(max_resumes=3, sleeps=sleeps) as f, pytest.raises(DownloadError):
        f.download_bytes(url, SIZE)
    assert len(state.ranges) == 4 and len(sleeps) == 3


def test_max_resumes_zero_does_not_resume(server: tuple[str, _State]) -> None:
    url, state = server
    state.cuts = [500_000]
    sleeps: list[float] = []
    with _fetcher(max_resumes=0, sleeps=sleeps) as f, pytest.raises(DownloadError) as err:
        f.download_bytes(url, SIZE)
    assert "interrupted" in str(err.value)
    assert state.ranges == [None] and sleeps == []


def test_an_error_status_on_resume_is_a_download_http_error(server: tuple[str, _State]) -> None:
    url, state = server
    state.cuts = [500_000]
    with _fetcher() as f:
        it = f.fetch(url)
        next(it)
        state.statuses = [503]
        with pytest.raises(DownloadHTTPError) as err:
            b"".join(it)
    assert err.value.status_code == 503


def test_a_503_up_front_is_not_retried_by_the_fetcher(server: tuple[str, _State]) -> None:
    url, state = server
    state.statuses = [503]
    with _fetcher() as f, pytest.raises(DownloadHTTPError):
        f.download_bytes(url, SIZE)
    assert state.ranges == [None]


def test_a_resumed_download_still_respects_max_length(server: tuple[str, _State]) -> None:
    url, state = server
    state.cuts = [600_000]
    with _fetcher() as f, pytest.raises(DownloadLengthMismatchError):
        f.download_bytes(url, SIZE - 1)


@pytest.mark.parametrize("bad", [-1, 101, True])
def test_max_resumes_is_bounded(bad: int) -> None:
    with pytest.raises(ConfigError):
        DownloadSettings(max_resumes=bad)


# --- fetch_from: continuing a download kept across restarts (ADR 0033 amendment) ---


def test_fetch_from_an_offset_asks_for_the_rest_only(server: tuple[str, _State]) -> None:
    url, state = server
    with HttpFetcher("s3cret") as f, f.sized(SIZE):
        start, chunks = f.fetch_from(url, 600_000)
        body = b"".join(chunks)
    assert start == 600_000 and body == ARTEFACT[600_000:]
    assert state.ranges == ["bytes=600000-"]


def test_fetch_from_with_a_wrong_content_range_starts_over(server: tuple[str, _State]) -> None:
    url, state = server
    state.wrong_start = True
    with HttpFetcher("s3cret") as f, f.sized(SIZE):
        start, chunks = f.fetch_from(url, 600_000)
        body = b"".join(chunks)
    assert start == 0 and body == ARTEFACT
    assert state.ranges == ["bytes=600000-", None]


def test_fetch_from_resumes_a_cut_body_from_the_absolute_offset(
    server: tuple[str, _State],
) -> None:
    url, state = server
    state.cuts = [800_000]
    with HttpFetcher("s3cret", sleep=lambda s: None) as f, f.sized(SIZE):
        start, chunks = f.fetch_from(url, 600_000)
        body = b"".join(chunks)
    assert start == 600_000 and body == ARTEFACT[600_000:]
    assert state.ranges == ["bytes=600000-", "bytes=800000-"]


# --- through python-tuf: the agent's update path over a link that cuts the artefact ---


class _CuttingProxy(BaseHTTPRequestHandler):
    """Relays GETs to the hub; cuts the first artefact body half-way, honours Range."""

    upstream: str
    cut_key: str
    cuts_left: list[int]
    ranges: list[str | None]

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
        if status != 200 or self.cut_key not in self.path:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        header = self.headers.get("Range")
        self.ranges.append(header)
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        start = int(match.group(1)) if match else 0
        if match:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        end = len(body)
        if self.cuts_left:
            self.cuts_left.pop(0)
            end = start + (len(body) - start) // 2
        self.wfile.write(body[start:end])
        self.wfile.flush()


def test_an_update_over_a_link_cut_mid_artefact_resumes_verifies_and_installs(
    tmp_path: Path,
) -> None:
    hub = make_hub(tmp_path / "hub")
    model, x = logistic_onnx(seed=1)
    manifest = build_manifest("m", 1, model, sample_input=x[:3]).to_json()
    hub.assign("dev-1", hub.publish("m", 1, model, manifest))
    with serve(hub) as upstream:
        ranges: list[str | None] = []
        proxy_cls = type(
            "Proxy",
            (_CuttingProxy,),
            {"upstream": upstream, "cut_key": "model.onnx", "cuts_left": [1], "ranges": ranges},
        )
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), proxy_cls)
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        sleeps: list[float] = []
        fetcher = HttpFetcher(TOKEN, sleep=sleeps.append, rand=lambda: 0.5)
        source = DeviceTrustClient(
            tmp_path / "dev" / "tuf",
            f"http://127.0.0.1:{proxy.server_address[1]}",
            TOKEN,
            hub.trust.trust_root_bundle(),
            fetcher=fetcher,
        )
        updater = Updater(
            "dev-1", tmp_path / "dev", source, ModelHost(), ManualClock(), retry=BackoffPolicy()
        )
        loop = UpdateLoop(updater, interval=1.0, rand=lambda: 0.5)
        try:
            loop.tick()
            assert loop.wait_idle(30)
            route = updater.host.route("m")
            assert route is not None and route.production.version == "1"
            assert updater.status()["update_status"] == "up to date (serial 1)"
            assert len(ranges) == 2 and ranges[0] is None
            assert ranges[1] is not None and ranges[1].startswith("bytes=")
            assert len(sleeps) == 1
        finally:
            loop.stop()
            source.close()
            fetcher.close()
            proxy.shutdown()
            proxy.server_close()
            thread.join(5)
