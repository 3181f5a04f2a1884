"""Bandwidth budgets (issue 11): the device's fetcher and the site mirror's upstream pulls are
paced by a token bucket on an injected clock; unlimited never sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from modelfleet.delivery.http_fetcher import (
    DownloadCancelledError,
    DownloadDeadlineError,
    DownloadSettings,
    HttpFetcher,
)
from modelfleet.delivery.mirror import MirrorConfig, SiteMirror
from modelfleet.delivery.ratelimit import TokenBucket
from modelfleet.errors import ConfigError
from tests.delivery._fake_hub import FakeHub, artefact

KIB = 1024
PIECE = 16 * KIB
BODY = bytes(range(256)) * (40 * PIECE // 256)  # 640 KiB in 40 pieces


class FakeTime:
    """A monotonic clock that moves only when something sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        """Concurrent sleeps overlap: the clock moves to the latest wake-up, not the sum."""
        self.sleeps.append(seconds)
        wake = self.now + seconds
        await asyncio.sleep(0)  # let the other downloads run, as a real wait would
        self.now = max(self.now, wake)


def _fetcher(
    settings: DownloadSettings, t: FakeTime, sleep: Callable[[float], None] | None = None
) -> HttpFetcher:
    def pieces() -> Iterator[bytes]:
        for i in range(0, len(BODY), PIECE):
            yield BODY[i : i + PIECE]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=pieces())

    client = httpx.Client(transport=httpx.MockTransport(handler))
    return HttpFetcher(
        settings=settings, client=client, monotonic=t.monotonic, sleep=sleep or t.sleep
    )


def test_the_bucket_lets_a_burst_through_then_asks_for_the_debt_to_be_paid() -> None:
    bucket = TokenBucket(1000.0, burst_bytes=2000.0)
    assert bucket.reserve(2000, now=0.0) == 0.0
    assert bucket.reserve(500, now=0.0) == pytest.approx(0.5)
    assert bucket.reserve(0, now=0.5) == 0.0  # paid back
    assert bucket.reserve(1000, now=10.0) == 0.0  # refilled, but never above the burst
    assert bucket.reserve(1500, now=10.0) == pytest.approx(0.5)


def test_a_budgeted_download_is_paced_to_its_rate_and_still_whole() -> None:
    t = FakeTime()
    rate = 64 * KIB
    settings = DownloadSettings(min_rate_bytes_s=16 * KIB, max_rate_bytes_s=rate)
    with _fetcher(settings, t) as f:
        assert f.download_bytes("http://hub/targets/a", len(BODY)) == BODY
    burst = 64 * KIB  # one second's worth
    # never faster than the budget allows (burst + one piece in hand), never much slower
    assert (len(BODY) - burst - PIECE) / rate <= t.now <= (len(BODY) - burst) / rate + 1e-6
    assert max(t.sleeps) <= 1.0  # waits in slices: cancellation is seen


def test_an_unlimited_download_never_sleeps() -> None:
    t = FakeTime()
    with _fetcher(DownloadSettings(), t) as f:
        assert f.download_bytes("http://hub/targets/a", len(BODY)) == BODY
    assert t.sleeps == [] and t.now == 0.0


def test_a_budget_wait_that_would_pass_the_deadline_fails_at_once() -> None:
    t = FakeTime()
    settings = DownloadSettings(min_rate_bytes_s=16 * KIB, max_rate_bytes_s=64 * KIB, max_s=2.0)
    with _fetcher(settings, t) as f, pytest.raises(DownloadDeadlineError, match="deadline"):
        f.download_bytes("http://hub/targets/a", len(BODY))
    assert t.now <= 2.0


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"max_rate_bytes_s": 32 * KIB}, "below min_rate_bytes_s"),  # default min 64 KiB/s
        ({"max_rate_bytes_s": 10.0, "min_rate_bytes_s": 1.0}, "max_rate_bytes_s"),
        ({"max_rate_bytes_s": float("inf")}, "max_rate_bytes_s"),
    ],
    ids=["below-min-rate", "too-small", "infinite"],
)
def test_a_budget_inconsistent_with_the_deadline_is_refused(
    kwargs: dict[str, float], text: str
) -> None:
    with pytest.raises(ConfigError, match=text):
        DownloadSettings(**kwargs)


# -- the site mirror: one WAN budget for all its upstream downloads -------------------------


def test_two_concurrent_mirror_downloads_share_one_site_budget(tmp_path: Path) -> None:
    models = [bytes([i]) * (256 * KIB) for i in (1, 2)]
    targets = [artefact(m) for m in models]
    hub = FakeHub(files=dict(zip(targets, models, strict=True)))
    t = FakeTime()
    rate = 128 * KIB
    mirror = SiteMirror(
        MirrorConfig(
            hub_url="http://hub.test",
            cache_dir=tmp_path / "cache",
            token="mirror",
            max_rate_bytes_s=rate,
        ),
        transport=hub.transport(),
        monotonic=t.monotonic,
        sleep=t.asleep,
        drain=False,
    )

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=mirror.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mirror") as c:
            answers = await asyncio.gather(
                *(c.get("/" + p, headers={"Authorization": "Bearer mirror"}) for p in targets)
            )
        await mirror.aclose()
        return list(answers)

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.content for a in answers] == models
    total = sum(len(m) for m in models)
    burst = 128 * KIB
    # together, not each: two downloads at the full rate each would take half as long
    assert t.now >= (total - burst - 2 * 64 * KIB) / rate
    assert t.now <= (total - burst) / rate + 1e-6


def test_a_bad_mirror_budget_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_rate_bytes_s"):
        MirrorConfig(hub_url="http://hub", cache_dir=tmp_path, max_rate_bytes_s=0.0)


def test_a_download_waiting_on_its_budget_is_still_cancelled_within_a_second() -> None:
    t = FakeTime()
    cancel = threading.Event()

    def sleep_then_cancel(seconds: float) -> None:
        t.sleep(seconds)
        cancel.set()  # a newer desired state arrives during the first wait

    settings = DownloadSettings(min_rate_bytes_s=1024.0, max_rate_bytes_s=1024.0)
    f = _fetcher(settings, t, sleep_then_cancel)
    with f, f.cancelled_by(cancel), pytest.raises(DownloadCancelledError):
        f.download_bytes("http://hub/targets/a", len(BODY))
    assert t.now <= 1.0
