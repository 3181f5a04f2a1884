"""The site mirror in process, against a fake hub that counts what it is asked."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelfleet.backoff import BackoffPolicy
from modelfleet.delivery.mirror import MirrorConfig, SiteMirror
from modelfleet.delivery.mirror_cache import immutable_digest, is_versioned_metadata, scope_of
from modelfleet.errors import ConfigError
from tests.delivery._fake_hub import FakeHub, artefact

MODEL = bytes(range(256)) * 1000  # 256 kB
TARGET = artefact(MODEL)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _no_sleep(_: float) -> None:
    return None


def make_mirror(
    tmp_path: Path, hub: FakeHub, clock: Clock | None = None, **config: Any
) -> SiteMirror:
    cfg = MirrorConfig(
        hub_url="http://hub.test",
        cache_dir=tmp_path / "cache",
        token=config.pop("token", "mirror"),
        backoff=BackoffPolicy(base_s=1.0, cap_s=4.0),
        **config,
    )
    return SiteMirror(
        cfg,
        transport=hub.transport(),
        monotonic=clock or Clock(),
        rand=lambda: 0.999,
        sleep=_no_sleep,
        drain=False,
    )


def run(mirror: SiteMirror, body: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        transport = httpx.ASGITransport(app=mirror.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mirror") as c:
            await body(c)
        await mirror.aclose()

    asyncio.run(main())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hub_with_files() -> FakeHub:
    return FakeHub(
        files={
            TARGET: MODEL,
            "trust-root.json": b'{"roots": {}}',
            "tuf/catalog/metadata/timestamp.json": b'{"v": 1}',
            "tuf/catalog/metadata/3.snapshot.json": b'{"snapshot": 3}',
            "tuf/director/devices/a/metadata/timestamp.json": b'{"device": "a"}',
            "tuf/director/devices/b/metadata/timestamp.json": b'{"device": "b"}',
        }
    )


# -- pure path rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "digest", "versioned", "scope"),
    [
        (TARGET, TARGET.split("/")[-1][:64], False, "*"),
        ("tuf/catalog/targets/models/m/1/model.onnx", None, False, "*"),
        ("tuf/catalog/metadata/timestamp.json", None, False, "*"),
        ("tuf/catalog/metadata/3.snapshot.json", None, True, "*"),
        ("tuf/director/devices/a/metadata/2.root.json", None, True, "device:a"),
        ("tuf/director/targets/devices/a/" + "0" * 64 + ".desired-state.json",
         "0" * 64, False, "device:a"),
        ("trust-root.json", None, False, "*"),
    ],
)  # fmt: skip
def test_paths_are_classified_by_what_may_be_kept_and_who_may_read_them(
    path: str, digest: str | None, versioned: bool, scope: str
) -> None:
    assert immutable_digest(path) == digest
    assert is_versioned_metadata(path) is versioned
    assert scope_of(path) == scope


@pytest.mark.parametrize(
    ("field", "value"),
    [("hub_url", "ftp://hub"), ("metadata_ttl_s", -1.0), ("attempts", 0),
     ("hub_ca", Path("/nonexistent/ca.pem"))],
)  # fmt: skip
def test_a_bad_mirror_setting_is_refused_with_its_name(
    tmp_path: Path, field: str, value: object
) -> None:
    args: dict[str, Any] = {"hub_url": "http://hub", "cache_dir": tmp_path, field: value}
    with pytest.raises(ConfigError, match=field.split("_")[0] if field != "hub_ca" else "hub-ca"):
        MirrorConfig(**args)


def test_a_file_that_is_not_a_ca_is_refused_as_hub_ca(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="no usable PEM certificate"):
        MirrorConfig(hub_url="https://hub", cache_dir=tmp_path, hub_ca=bad).ssl_verify()


# -- targets ------------------------------------------------------------------------------


def test_ten_concurrent_requests_for_one_artefact_cause_one_upstream_download(
    tmp_path: Path,
) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)

    async def body(c: httpx.AsyncClient) -> None:
        hub.release = asyncio.Event()
        tokens = ["dev-a", "dev-b"] * 5
        pending = [asyncio.create_task(c.get("/" + TARGET, headers=auth(t))) for t in tokens]
        await asyncio.sleep(0.2)  # every request is waiting on the one download
        assert mirror.status()["downloads_in_flight"] == 1
        hub.release.set()
        answers = await asyncio.gather(*pending)
        assert [r.status_code for r in answers] == [200] * 10
        assert all(r.content == MODEL for r in answers)
        later = await c.get("/" + TARGET, headers=auth("dev-a"))
        assert later.headers["x-modelfleet-mirror"] == "hit"

    run(mirror, body)
    assert hub.requests[TARGET] == 1
    assert mirror.counters["upstream_target_bytes"] == len(MODEL)


def test_a_cached_artefact_is_served_with_range(tmp_path: Path) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)

    async def body(c: httpx.AsyncClient) -> None:
        assert (await c.get("/" + TARGET, headers=auth("dev-a"))).status_code == 200
        r = await c.get("/" + TARGET, headers={**auth("dev-a"), "Range": "bytes=1000-1999"})
        assert r.status_code == 206
        assert r.content == MODEL[1000:2000]

    run(mirror, body)
    assert hub.requests[TARGET] == 1


def test_a_tampered_cached_artefact_is_not_served_and_is_fetched_again(tmp_path: Path) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)
    cached = mirror.cache.path(TARGET)

    async def body(c: httpx.AsyncClient) -> None:
        assert (await c.get("/" + TARGET, headers=auth("dev-a"))).status_code == 200
        cached.write_bytes(MODEL[:-4] + b"evil")
        r = await c.get("/" + TARGET, headers=auth("dev-a"))
        assert r.status_code == 200
        assert r.content == MODEL  # the hub's bytes again, never the altered ones

    run(mirror, body)
    assert hub.requests[TARGET] == 2
    assert cached.read_bytes() == MODEL


def test_a_tampered_cached_artefact_is_refused_while_the_hub_is_away(tmp_path: Path) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)
    cached = mirror.cache.path(TARGET)

    async def body(c: httpx.AsyncClient) -> None:
        assert (await c.get("/" + TARGET, headers=auth("dev-a"))).status_code == 200
        hub.down = True
        cached.write_bytes(b"evil" + MODEL[4:])
        r = await c.get("/" + TARGET, headers=auth("dev-a"))
        assert r.status_code == 503
        assert r.headers["retry-after"]
        assert not cached.exists()

    run(mirror, body)


def test_a_hub_serving_bytes_that_do_not_match_the_name_poisons_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = hub_with_files()
    hub.files[TARGET] = MODEL[:-1] + b"X"
    mirror = make_mirror(tmp_path, hub)

    async def body(c: httpx.AsyncClient) -> None:
        r = await c.get("/" + TARGET, headers=auth("dev-a"))
        assert r.status_code == 502

    run(mirror, body)
    assert not mirror.cache.path(TARGET).exists()
    assert not mirror.cache.partial_path(TARGET).exists()
    assert "REFUSED to cache" in caplog.text


def test_a_download_cut_mid_body_resumes_with_range_and_is_whole(tmp_path: Path) -> None:
    hub = hub_with_files()
    hub.cut_after = 100_000
    mirror = make_mirror(tmp_path, hub)

    async def body(c: httpx.AsyncClient) -> None:
        r = await c.get("/" + TARGET, headers=auth("dev-a"))
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == immutable_digest(TARGET)

    run(mirror, body)
    assert hub.requests[TARGET] == 2
    assert mirror.counters["upstream_target_bytes"] == len(MODEL)  # nothing fetched twice


def test_catalog_targets_are_fetched_with_the_mirrors_own_token(tmp_path: Path) -> None:
    hub = hub_with_files()
    seen: list[str] = []
    inner = hub.handle

    async def spy(request: httpx.Request) -> httpx.Response:
        if request.url.path.lstrip("/") == TARGET:
            seen.append(request.headers["authorization"])
        return await inner(request)

    hub.handle = spy  # type: ignore[method-assign]
    mirror = make_mirror(tmp_path, hub)
    run(mirror, lambda c: _ok(c.get("/" + TARGET, headers=auth("dev-a"))))
    assert seen == ["Bearer mirror"]


async def _ok(call: Awaitable[httpx.Response]) -> None:
    r = await call
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path",
    ["/tuf/catalog/targets/../../etc/passwd", "/tuf/catalog/targets/a%00b",
     "/tuf/catalog/targets/x/.hidden/y"],
)  # fmt: skip
def test_a_path_outside_the_site_tree_is_refused(tmp_path: Path, path: str) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)

    async def body(c: httpx.AsyncClient) -> None:
        r = await c.get(path, headers=auth("dev-a"))
        assert r.status_code in (400, 404)

    run(mirror, body)
    assert not any(p.startswith("etc") for p in hub.requests)


# -- metadata -----------------------------------------------------------------------------


def test_metadata_is_forwarded_with_the_devices_token_and_kept_for_the_ttl(
    tmp_path: Path,
) -> None:
    hub = hub_with_files()
    clock = Clock()
    mirror = make_mirror(tmp_path, hub, clock, metadata_ttl_s=2.0)
    ts = "tuf/catalog/metadata/timestamp.json"

    async def body(c: httpx.AsyncClient) -> None:
        for _ in range(3):
            r = await c.get("/" + ts, headers=auth("dev-a"))
            assert r.content == b'{"v": 1}'
        clock.now += 2.5
        hub.files[ts] = b'{"v": 2}'
        assert (await c.get("/" + ts, headers=auth("dev-b"))).content == b'{"v": 2}'
        for _ in range(3):  # a version never changes: asked once
            await c.get("/tuf/catalog/metadata/3.snapshot.json", headers=auth("dev-a"))

    run(mirror, body)
    assert hub.requests[ts] == 2
    assert hub.requests["tuf/catalog/metadata/3.snapshot.json"] == 1


def test_the_hub_unreachable_serves_cached_metadata_stale_and_404_for_the_rest(
    tmp_path: Path,
) -> None:
    hub = hub_with_files()
    clock = Clock()
    mirror = make_mirror(tmp_path, hub, clock)
    ts = "/tuf/director/devices/a/metadata/timestamp.json"

    async def body(c: httpx.AsyncClient) -> None:
        assert (await c.get(ts, headers=auth("dev-a"))).status_code == 200
        assert (await c.get("/api/v1/trust-root", headers=auth("dev-a"))).status_code == 200
        hub.down = True
        clock.now += 60
        r = await c.get(ts, headers=auth("dev-a"))
        assert (r.status_code, r.headers["x-modelfleet-mirror"]) == (200, "stale")
        assert r.content == b'{"device": "a"}'
        r = await c.get("/api/v1/trust-root", headers=auth("dev-a"))
        assert r.content == b'{"roots": {}}'
        # a newer root the mirror never saw: 404, so the TUF client stops probing
        r = await c.get("/tuf/director/devices/a/metadata/2.root.json", headers=auth("dev-a"))
        assert r.status_code == 404

    run(mirror, body)


def test_while_the_hub_is_away_an_unknown_token_gets_nothing(tmp_path: Path) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)

    async def body(c: httpx.AsyncClient) -> None:
        await c.get("/tuf/catalog/metadata/timestamp.json", headers=auth("dev-a"))
        await c.get("/" + TARGET, headers=auth("dev-a"))
        hub.down = True
        for path in ("/tuf/catalog/metadata/timestamp.json", "/" + TARGET):
            r = await c.get(path, headers=auth("stranger"))
            assert r.status_code == 503, path
        assert (await c.get("/" + TARGET)).status_code == 401

    run(mirror, body)


def test_a_device_never_reads_another_devices_director_files_from_the_cache(
    tmp_path: Path,
) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)
    ts_a = "/tuf/director/devices/a/metadata/timestamp.json"

    async def body(c: httpx.AsyncClient) -> None:
        assert (await c.get(ts_a, headers=auth("dev-a"))).status_code == 200
        assert (await c.get(ts_a, headers=auth("dev-b"))).status_code == 403
        hub.down = True
        r = await c.get(ts_a, headers=auth("dev-b"))
        assert r.status_code == 503
        assert b"device" not in r.content.replace(b"device_id", b"")

    run(mirror, body)


def test_a_revoked_token_is_forgotten_and_not_served_from_the_cache(tmp_path: Path) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)

    async def body(c: httpx.AsyncClient) -> None:
        assert (await c.get("/" + TARGET, headers=auth("dev-a"))).status_code == 200
        del hub.files["tuf/catalog/metadata/timestamp.json"]
        hub_tokens = __import__("tests.delivery._fake_hub", fromlist=["TOKENS"]).TOKENS
        saved = hub_tokens.pop("dev-a")
        try:
            r = await c.get("/tuf/catalog/metadata/timestamp.json", headers=auth("dev-a"))
            assert r.status_code == 401
            hub.down = True
            assert (await c.get("/" + TARGET, headers=auth("dev-a"))).status_code == 503
        finally:
            hub_tokens["dev-a"] = saved

    run(mirror, body)


def test_the_token_memo_survives_a_restart_so_the_cache_serves_offline(tmp_path: Path) -> None:
    hub = hub_with_files()
    run(make_mirror(tmp_path, hub), lambda c: _ok(c.get("/" + TARGET, headers=auth("dev-a"))))
    hub.down = True
    again = make_mirror(tmp_path, hub)
    run(again, lambda c: _ok(c.get("/" + TARGET, headers=auth("dev-a"))))
    memo = (tmp_path / "cache" / ".mirror" / "tokens.json").read_bytes()
    assert b"dev-a" not in memo  # only the tokens' hashes are kept
    assert (tmp_path / "cache" / ".mirror" / "tokens.json").stat().st_mode & 0o077 == 0


# -- relay --------------------------------------------------------------------------------


def batch(device: str, seqs: list[int]) -> bytes:
    return orjson.dumps(
        {
            "format": 1,
            "device_id": device,
            "buffer_id": "buf-1",
            "sent_at": "2026-12-03T12:00:00+00:00",
            "records": [
                {"seq": s, "kind": "event", "device_id": device, "event": "started",
                 "at": "2026-12-03T12:00:00+00:00"}
                for s in seqs
            ],
        }
    )  # fmt: skip


def test_telemetry_is_buffered_durably_answered_as_the_hub_and_drained_later(
    tmp_path: Path,
) -> None:
    hub = hub_with_files()
    clock = Clock()
    mirror = make_mirror(tmp_path, hub, clock)
    url = "/api/v1/devices/a/telemetry"

    async def body(c: httpx.AsyncClient) -> None:
        first = await c.post(url, content=batch("a", [1, 2]), headers=auth("dev-a"))
        assert first.status_code == 200 and first.json()["acked_through"] == 2
        assert first.headers["x-modelfleet-mirror"] == "forwarded"  # unknown token: the hub
        hub.down = True
        clock.now += 1
        for seqs in ([3, 4], [5]):
            r = await c.post(url, content=batch("a", seqs), headers=auth("dev-a"))
            assert r.status_code == 200, r.text
            assert r.json() | {"relay": None} == {
                "stored": len(seqs), "duplicates": 0, "acked_through": seqs[-1],
                "status": "recorded", "relay": None,
            }  # fmt: skip
        assert await mirror.drain_once() == 0  # the hub is still away

    run(mirror, body)
    hub.down = False
    again = make_mirror(tmp_path, hub, clock)  # a restart loses nothing
    assert again.outbox.stats()["pending"] == 2

    async def drain(c: httpx.AsyncClient) -> None:
        del c
        assert await again.drain_once() == 2

    run(again, drain)
    posted = [b for p, _, b in hub.bodies if p.endswith("/telemetry")]
    assert [[r["seq"] for r in orjson.loads(b)["records"]] for b in posted] == [
        [1, 2], [3, 4], [5],
    ]  # fmt: skip
    assert all(a == "Bearer dev-a" for p, a, _ in hub.bodies)


def test_an_invalid_telemetry_batch_is_refused_and_nothing_is_buffered(tmp_path: Path) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub)

    async def body(c: httpx.AsyncClient) -> None:
        await c.get("/tuf/director/devices/a/metadata/timestamp.json", headers=auth("dev-a"))
        for bad in (b"not json", batch("b", [1]), b'{"format": 1}'):
            r = await c.post("/api/v1/devices/a/telemetry", content=bad, headers=auth("dev-a"))
            assert r.status_code == 400, bad
        assert mirror.outbox.stats()["pending"] == 0

    run(mirror, body)


def test_a_check_in_while_the_hub_is_down_is_answered_503_with_retry_after(
    tmp_path: Path,
) -> None:
    hub = hub_with_files()
    clock = Clock()
    mirror = make_mirror(tmp_path, hub, clock)
    url = "/api/v1/devices/a/report"

    async def body(c: httpx.AsyncClient) -> None:
        ok = await c.post(url, content=b"{}", headers=auth("dev-a"))
        assert ok.status_code == 200 and ok.json() == {"applied_rollbacks": []}
        hub.down = True
        r = await c.post(url, content=b"{}", headers=auth("dev-a"))
        assert r.status_code == 503
        assert 1 <= int(r.headers["retry-after"]) <= 4
        assert "unreachable" in r.json()["error"]
        asked = hub.requests["api/v1/devices/a/report"]
        await c.post(url, content=b"{}", headers=auth("dev-a"))
        assert hub.requests["api/v1/devices/a/report"] == asked  # left alone meanwhile
        clock.now += 10
        hub.down = False
        assert (await c.post(url, content=b"{}", headers=auth("dev-a"))).status_code == 200

    run(mirror, body)


def test_a_batch_the_hub_refuses_for_good_is_dropped_and_counted_not_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = hub_with_files()
    clock = Clock()
    mirror = make_mirror(tmp_path, hub, clock)
    url = "/api/v1/devices/a/telemetry"

    async def body(c: httpx.AsyncClient) -> None:
        await c.get("/tuf/director/devices/a/metadata/timestamp.json", headers=auth("dev-a"))
        assert (await c.post(url, content=batch("a", [7]), headers=auth("dev-a"))).is_success
        hub.status_override["api/v1/devices/a/telemetry"] = 413
        assert await mirror.drain_once() == 1
        assert await mirror.drain_once() == 0
        stats = mirror.outbox.stats()
        assert (stats["pending"], stats["dropped"]) == (0, 1)

    run(mirror, body)
    assert "dropped: the hub refused it (HTTP 413" in caplog.text


def test_a_full_outbox_answers_503_and_the_device_keeps_its_batch(tmp_path: Path) -> None:
    hub = hub_with_files()
    mirror = make_mirror(tmp_path, hub, outbox_max_bytes=1 << 16)
    big = batch("a", list(range(1, 400)))
    assert len(big) > (1 << 15)

    async def body(c: httpx.AsyncClient) -> None:
        await c.get("/tuf/director/devices/a/metadata/timestamp.json", headers=auth("dev-a"))
        hub.down = True
        codes = [
            (
                await c.post("/api/v1/devices/a/telemetry", content=big, headers=auth("dev-a"))
            ).status_code
            for _ in range(3)
        ]
        assert codes[0] == 200 and codes[-1] == 503
        assert mirror.outbox.stats()["pending"] == codes.count(200)

    run(mirror, body)


def test_the_next_root_probe_of_many_devices_reaches_the_hub_once_per_ttl(tmp_path: Path) -> None:
    hub = hub_with_files()
    clock = Clock()
    mirror = make_mirror(tmp_path, hub, clock, metadata_ttl_s=2.0)
    probe = "tuf/catalog/metadata/2.root.json"

    async def body(c: httpx.AsyncClient) -> None:
        for token in ["dev-a", "dev-b"] * 3:
            assert (await c.get("/" + probe, headers=auth(token))).status_code == 404
        clock.now += 3
        hub.files[probe] = b'{"root": 2}'
        assert (await c.get("/" + probe, headers=auth("dev-a"))).content == b'{"root": 2}'

    run(mirror, body)
    assert hub.requests[probe] == 3  # once per token first seen, then once after the TTL
