"""Return bundles at the hub (issue 11, ADR 0029): real agent state folders in, every
record stored exactly once, the version report recorded as of the bundle's time, and each
bad input refused before anything is stored."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from modelfleet.agent.return_report import collect_device
from modelfleet.clock import ManualClock
from modelfleet.delivery.return_bundle import (
    Envelope,
    make_envelope,
    pack_bundle,
    unpack_bundle,
)
from modelfleet.errors import (
    ConflictError,
    InvalidInputError,
    ModelfleetError,
    NotFoundError,
    TrustError,
)
from modelfleet.hub import db
from modelfleet.hub.bundle_ingest import DeviceKeys, ReturnIngest
from modelfleet.hub.service import HubService
from tests.delivery._return_site import T0, SiteDevice, enrol, make_device

SITE = "plant-7"
MADE = T0 + timedelta(hours=1)


@pytest.fixture
def hub(service: HubService, clock: ManualClock) -> HubService:
    clock.advance((T0 - clock.now()).total_seconds() + 2 * 3600)  # the hub reads it later
    return service


def _bundle(devices: list[SiteDevice], site: str = SITE, at: Any = MADE) -> bytes:
    return pack_bundle([collect_device(d.state_dir, site, at).envelope for d in devices], site, at)


def _counts(svc: HubService) -> dict[str, int]:
    with svc.context.read() as s:
        return {
            "records": int(s.scalar(select(func.count()).select_from(db.TelemetryRecord)) or 0),
            "samples": int(s.scalar(select(func.count()).select_from(db.ReviewSample)) or 0),
            "reports": int(s.scalar(select(func.count()).select_from(db.DeviceReport)) or 0),
            "bundles": int(s.scalar(select(func.count()).select_from(db.ReturnBundle)) or 0),
            "audit": int(s.scalar(select(func.count()).select_from(db.AuditEntry)) or 0),
        }


def test_round_trip_stores_every_record_and_the_report_as_of_the_bundle(
    hub: HubService, tmp_path: Path
) -> None:
    devices = [make_device(tmp_path, f"edge-{i}", windows=4, samples=2) for i in range(3)]
    for d in devices:
        enrol(hub, d)
    answer = ReturnIngest(hub).ingest(_bundle(devices), "admin:test")
    assert answer["status"] == "ingested"
    assert answer["stored"] == 3 * (4 + 1 + 2) and answer["duplicates"] == 0
    assert [d["report"] for d in answer["devices"]] == ["recorded"] * 3
    assert _counts(hub)["samples"] == 6
    view = hub.get_device("edge-1")
    assert datetime.fromisoformat(view["last_seen"].replace("Z", "+00:00")) == MADE
    assert view["report"]["models"]["iris"]["active"]["version"] == 1
    assert view["telemetry"]["highest_seq"] == 7
    windows = hub.device_windows("edge-1", 50)
    assert sorted(w["seq"] for w in windows) == list(range(1, 8))


def test_ingesting_the_same_file_twice_changes_nothing(hub: HubService, tmp_path: Path) -> None:
    devices = [make_device(tmp_path, f"edge-{i}") for i in range(2)]
    for d in devices:
        enrol(hub, d)
    data = _bundle(devices)
    first = ReturnIngest(hub).ingest(data, "admin:test")
    before = _counts(hub)
    second = ReturnIngest(hub).ingest(data, "admin:test")
    assert second["status"] == "already_ingested"
    assert second["stored"] == first["stored"] and second["digest"] == first["digest"]
    assert _counts(hub) == before


def test_a_later_bundle_of_the_same_records_stores_only_the_new_ones(
    hub: HubService, tmp_path: Path
) -> None:
    d = make_device(tmp_path, "edge-1", windows=3, samples=1)
    enrol(hub, d)
    ReturnIngest(hub).ingest(_bundle([d]), "admin:test")
    before = _counts(hub)
    again = ReturnIngest(hub).ingest(_bundle([d], at=MADE + timedelta(minutes=5)), "admin:test")
    assert again["status"] == "ingested" and again["stored"] == 0
    assert again["duplicates"] == 3 + 1 + 1
    after = _counts(hub)
    assert after["records"] == before["records"] and after["samples"] == before["samples"]


def test_an_older_bundle_never_moves_the_device_state_back(hub: HubService, tmp_path: Path) -> None:
    d = make_device(tmp_path, "edge-1")
    enrol(hub, d)
    hub.record_report("edge-1", {"device_id": "edge-1", "applied_serial": 9, "models": {}})
    seen = hub.get_device("edge-1")["last_seen"]
    answer = ReturnIngest(hub).ingest(_bundle([d]), "admin:test")
    assert answer["devices"][0]["report"] == "older"
    view = hub.get_device("edge-1")
    assert view["last_seen"] == seen and view["report"]["applied_serial"] == 9
    assert answer["stored"] > 0  # its telemetry still counts


def _refused(hub: HubService, data: bytes, error: type[ModelfleetError], words: str) -> None:
    before = _counts(hub)
    with pytest.raises(error, match=words):
        ReturnIngest(hub).ingest(data, "admin:test")
    assert _counts(hub) == before


def _resign(data: bytes, change: Callable[[dict[str, Any]], None], key: Any = None) -> bytes:
    """The bundle with envelope 0's payload changed, re-signed with ``key`` (None: the
    old signature is kept)."""
    bundle = unpack_bundle(data)
    env = bundle.envelopes[0]
    payload = orjson.loads(env.payload)
    change(payload)
    if key is None:
        new = Envelope(orjson.dumps(payload), env.keyid, env.signature)
    else:
        public = key.public_key().public_bytes_raw()
        new = make_envelope(payload, key.sign, public)
        new = Envelope(new.payload, env.keyid, new.signature)  # claims the device's key id
    return pack_bundle([new, *bundle.envelopes[1:]], bundle.site, bundle.created_at)


def test_unknown_device_is_refused_and_nothing_is_stored(hub: HubService, tmp_path: Path) -> None:
    known, stranger = make_device(tmp_path, "edge-1"), make_device(tmp_path, "edge-x")
    enrol(hub, known)
    _refused(hub, _bundle([known, stranger]), NotFoundError, "unknown device")


def test_device_without_a_registered_key_is_refused(hub: HubService, tmp_path: Path) -> None:
    d = make_device(tmp_path, "edge-1")
    hub.add_device("edge-1", SITE, [], actor="admin:admin")
    _refused(hub, _bundle([d]), TrustError, "no registered key")


def test_tampered_payload_is_refused(hub: HubService, tmp_path: Path) -> None:
    d, other = make_device(tmp_path, "edge-1"), make_device(tmp_path, "edge-2")
    enrol(hub, d)
    enrol(hub, other)

    def more_requests(p: dict[str, Any]) -> None:
        p["telemetry"]["records"][0]["requests"]["ok"] += 1000

    _refused(hub, _resign(_bundle([other, d]), more_requests), TrustError, "does not verify")


def test_flipped_byte_in_the_payload_is_refused(hub: HubService, tmp_path: Path) -> None:
    d = make_device(tmp_path, "edge-1")
    enrol(hub, d)
    bundle = unpack_bundle(_bundle([d]))
    env = bundle.envelopes[0]
    i = env.payload.index(b'"applied_serial":3') + len(b'"applied_serial":')
    flipped = env.payload[:i] + b"4" + env.payload[i + 1 :]
    data = pack_bundle([Envelope(flipped, env.keyid, env.signature)], SITE, MADE)
    _refused(hub, data, TrustError, "does not verify")


def test_envelope_signed_with_another_key_is_refused(hub: HubService, tmp_path: Path) -> None:
    d = make_device(tmp_path, "edge-1")
    enrol(hub, d)
    data = _resign(_bundle([d]), lambda p: None, key=Ed25519PrivateKey.generate())
    _refused(hub, data, TrustError, "does not verify")


def test_envelope_naming_another_key_id_is_refused(hub: HubService, tmp_path: Path) -> None:
    d = make_device(tmp_path, "edge-1")
    enrol(hub, d)
    key = Ed25519PrivateKey.generate()
    env = make_envelope({"device_id": "edge-1", "site": SITE, "created_at": MADE.isoformat(),
                         "report": None, "telemetry": None}, key.sign,
                        key.public_key().public_bytes_raw())  # fmt: skip
    _refused(hub, pack_bundle([env], SITE, MADE), TrustError, "not the device's registered key")


def test_bundle_for_another_site_is_refused(hub: HubService, tmp_path: Path) -> None:
    d = make_device(tmp_path, "edge-1")
    enrol(hub, d, site="plant-9")
    _refused(hub, _bundle([d]), InvalidInputError, "enrolled at site 'plant-9'")


def test_malformed_record_refuses_the_whole_bundle(hub: HubService, tmp_path: Path) -> None:
    devices = [make_device(tmp_path, "edge-1"), make_device(tmp_path, "edge-2")]
    for d in devices:
        enrol(hub, d)
    bundle = unpack_bundle(_bundle(devices))
    payload = orjson.loads(bundle.envelopes[1].payload)
    payload["telemetry"]["records"][0]["role"] = "boss"
    env = make_envelope(payload, devices[1].key.sign, devices[1].key.public_bytes)
    data = pack_bundle([bundle.envelopes[0], env], SITE, MADE)
    _refused(hub, data, InvalidInputError, "role")


@pytest.mark.parametrize(
    ("name", "mangle", "words"),
    [
        ("truncated", lambda b: b[: len(b) // 2], "truncated or corrupt"),
        ("cut by one byte", lambda b: b[:-1], "truncated or corrupt"),
        ("corrupt", lambda b: b[:20] + bytes(x ^ 0x5A for x in b[20:40]) + b[40:], "corrupt"),
        ("not zstd", lambda b: b"PK\x03\x04 a zip file", "not zstd-compressed"),
        ("empty", lambda b: b"", "not zstd-compressed"),
        ("not JSON", lambda b: zstandard.compress(b"\x00garbage"), "not JSON"),
        (
            "another format",
            lambda b: zstandard.compress(b'{"format": "modelfleet.media/v1"}'),
            "not a return bundle",
        ),
        (
            "newer version",
            lambda b: zstandard.compress(b'{"format": "modelfleet.return/v2"}'),
            "this modelfleet reads modelfleet.return/v1",
        ),
    ],
)
def test_bad_files_are_refused_and_nothing_is_stored(
    hub: HubService, tmp_path: Path, name: str, mangle: Callable[[bytes], bytes], words: str
) -> None:
    d = make_device(tmp_path, "edge-1")
    enrol(hub, d)
    _refused(hub, mangle(_bundle([d])), InvalidInputError, words)


def test_oversized_bundle_is_refused_before_it_is_read(hub: HubService, tmp_path: Path) -> None:
    d = make_device(tmp_path, "edge-1", windows=50)
    enrol(hub, d)
    before = _counts(hub)
    with pytest.raises(InvalidInputError, match="over the limit"):
        ReturnIngest(hub).ingest(_bundle([d]), "admin:test", max_bytes=4096)
    assert _counts(hub) == before


def test_a_zstd_bomb_without_a_declared_size_stops_at_the_limit(hub: HubService) -> None:
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    bomb = cctx.compress(b'{"format": "modelfleet.return/v1", "x": "' + b"a" * 100_000 + b'"}')
    _refused_limit = pytest.raises(InvalidInputError, match="more than the limit")
    with _refused_limit:
        ReturnIngest(hub).ingest(bomb, "admin:test", max_bytes=10_000)


def test_device_keys_first_same_and_replaced(hub: HubService) -> None:
    hub.add_device("edge-1", SITE, [], actor="admin:admin")
    keys = DeviceKeys(hub.context)
    a = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    b = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert keys.register("edge-1", a, "device:edge-1")["status"] == "registered"
    assert keys.register("edge-1", a, "device:edge-1")["status"] == "unchanged"
    with pytest.raises(ConflictError, match="already has key"):
        keys.register("edge-1", b, "device:edge-1")
    assert keys.register("edge-1", b, "admin:admin", replace=True)["status"] == "replaced"
    assert keys.get("edge-1")["public_key"] == b.hex()
    with pytest.raises(NotFoundError):
        keys.register("nobody", a, "admin:admin")
