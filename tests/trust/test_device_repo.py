"""Per-device director roles (issue 8): signed under the shared root, versions one above,
re-signed before expiry; and the check-in fast path's freshness rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from modelfleet.errors import InvalidInputError
from modelfleet.trust import ExpiryPolicy, SiteExpiry
from modelfleet.trust.client import DeviceTrustClient
from modelfleet.trust.device_repo import DEVICE_FIELD, DeviceRoles, due_roles
from modelfleet.trust.freshness import HeldVersions, stale_repositories
from tests.trust._trust_support import Hub, make_hub

NOW = datetime(2026, 6, 1, tzinfo=UTC)
LIFETIMES = ExpiryPolicy().lifetimes("director")


def test_per_device_roles_verify_under_the_shared_director_root(hub: Hub) -> None:
    out = hub.trust.device_signer.sign_change("cam-1", (120, "ab" * 32), DeviceRoles(), NOW)
    root = Metadata[Root].from_bytes(hub.trust.director_root()[1]).signed
    for role, data in (
        ("targets", out.targets),
        ("snapshot", out.snapshot),
        ("timestamp", out.timestamp),
    ):
        assert data is not None
        md = Metadata.from_bytes(data)
        root.verify_delegate(role, md.signed_bytes, md.signatures)
    targets = Metadata[Targets].from_bytes(out.targets or b"").signed
    assert list(targets.targets) == ["devices/cam-1/desired-state.json"]
    assert targets.unrecognized_fields[DEVICE_FIELD] == "cam-1"
    assert out.size < 2048


def test_each_change_signs_one_version_above_the_previous(hub: Hub) -> None:
    signer = hub.trust.device_signer
    first = signer.sign_change("cam-1", (1, "a" * 64), DeviceRoles(), NOW)
    second = signer.sign_change("cam-1", None, first.roles, NOW + timedelta(seconds=1))
    assert (first.roles.targets, first.roles.snapshot, first.roles.timestamp) == (1, 1, 1)
    assert (second.roles.targets, second.roles.snapshot, second.roles.timestamp) == (2, 2, 2)
    snap = Metadata[Snapshot].from_bytes(second.snapshot or b"").signed
    ts = Metadata[Timestamp].from_bytes(second.timestamp).signed
    assert snap.meta["targets.json"].version == 2 and ts.snapshot_meta.version == 2
    assert Metadata[Targets].from_bytes(second.targets or b"").signed.targets == {}


@pytest.mark.parametrize(
    ("name", "age", "expected"),
    [
        ("fresh", timedelta(0), ()),
        ("timestamp within its margin", timedelta(hours=17), ("timestamp",)),
        ("targets within its margin", timedelta(days=5), ("targets", "snapshot", "timestamp")),
        ("all past their margins", timedelta(days=21), ("targets", "snapshot", "timestamp")),
    ],
)
def test_due_roles(hub: Hub, name: str, age: timedelta, expected: tuple[str, ...]) -> None:
    out = hub.trust.device_signer.sign_change("cam-1", (1, "a" * 64), DeviceRoles(), NOW)
    assert due_roles(out.roles, NOW + age, LIFETIMES, 1 / 3) == expected, name


def test_never_signed_roles_are_due() -> None:
    assert due_roles(DeviceRoles(), NOW, LIFETIMES, 1 / 3) == ("targets", "snapshot", "timestamp")


def test_an_expiring_timestamp_alone_is_resigned_alone(hub: Hub) -> None:
    signer = hub.trust.device_signer
    out = signer.sign_change("cam-1", (1, "a" * 64), DeviceRoles(), NOW)
    assert signer.sign_expiring(out.roles, NOW) is None
    at = signer.resign_at(out.roles)
    assert at == NOW + LIFETIMES["timestamp"] * (2 / 3)
    again = signer.sign_expiring(out.roles, NOW + timedelta(hours=17))
    assert again is not None and again.targets is None and again.snapshot is None
    assert again.roles.timestamp == 2 and again.roles.targets == 1
    with pytest.raises(InvalidInputError, match="targets is due"):
        signer.sign_expiring(out.roles, NOW + timedelta(days=6))


def _held(root: int, ts: int, left: timedelta = timedelta(hours=20)) -> HeldVersions:
    return HeldVersions(root, ts, NOW + left)


@pytest.mark.parametrize(
    ("name", "held", "answer", "stale"),
    [
        (
            "both current",
            {"catalog": _held(1, 5), "director": _held(1, 9)},
            {"catalog": {"root": 1, "timestamp": 5}, "director": {"root": 1, "timestamp": 9}},
            set(),
        ),
        (
            "director changed",
            {"catalog": _held(1, 5), "director": _held(1, 9)},
            {"catalog": {"root": 1, "timestamp": 5}, "director": {"root": 1, "timestamp": 10}},
            {"director"},
        ),
        (
            "catalog root rotated",
            {"catalog": _held(1, 5), "director": _held(1, 9)},
            {"catalog": {"root": 2, "timestamp": 5}, "director": {"root": 1, "timestamp": 9}},
            {"catalog"},
        ),
        (
            "held timestamp close to expiry",
            {"catalog": _held(1, 5), "director": _held(1, 9, timedelta(hours=2))},
            {"catalog": {"root": 1, "timestamp": 5}, "director": {"root": 1, "timestamp": 9}},
            {"director"},
        ),
        (
            "nothing held yet",
            {"catalog": None, "director": _held(1, 9)},
            {"catalog": {"root": 1, "timestamp": 5}, "director": {"root": 1, "timestamp": 9}},
            {"catalog"},
        ),
        (
            "no answer (older hub)",
            {"catalog": _held(1, 5), "director": _held(1, 9)},
            None,
            {"catalog", "director"},
        ),
        (
            "malformed answer",
            {"catalog": _held(1, 5), "director": _held(1, 9)},
            {"catalog": {"root": "1", "timestamp": 5}, "director": {"root": True, "timestamp": 9}},
            {"catalog", "director"},
        ),
    ],
)
def test_stale_repositories(
    name: str, held: dict[str, HeldVersions | None], answer: object, stale: set[str]
) -> None:
    assert stale_repositories(held, answer, NOW) == stale, name


def _answer(hub: Hub, device_id: str) -> dict[str, dict[str, int]]:
    """What the hub's check-in answer would say now."""
    catalog = hub.trust.repository("catalog")
    return {
        "catalog": {"root": catalog.version("root"), "timestamp": catalog.version("timestamp")},
        "director": {"root": 1, "timestamp": hub.roles[device_id].timestamp},
    }


def test_the_client_says_nothing_is_stale_after_a_refresh_and_sees_a_change(
    hub: Hub, client: DeviceTrustClient
) -> None:
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    assert client.stale("dev-1", _answer(hub, "dev-1")) == {"catalog", "director"}  # cold
    client.fetch_desired_state("dev-1")
    client.refresh_catalog()
    assert client.stale("dev-1", _answer(hub, "dev-1")) == set()
    hub.assign("dev-1", ref)  # a new serial: the device's own timestamp moves
    assert client.stale("dev-1", _answer(hub, "dev-1")) == {"director"}
    hub.publish("iris", 2)
    assert client.stale("dev-1", _answer(hub, "dev-1")) == {"catalog", "director"}


def test_a_large_stage_is_signed_by_worker_processes_with_the_same_key(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelfleet.trust import _sign_pool
    from modelfleet.trust.device_repo import DeviceRepoSigner
    from modelfleet.trust.keys import key_file, load_signers

    monkeypatch.setattr(_sign_pool, "PARALLEL_MIN", 4)
    local = hub.trust.device_signer
    pooled = DeviceRepoSigner(
        load_signers(hub.home / "keys")["director"],
        local.lifetimes,
        local.refresh_margin,
        key_path=key_file(hub.home / "keys", "director"),
        workers=2,
    )
    try:
        items = [(f"cam-{i}", (10 + i, f"{i:064x}"), DeviceRoles()) for i in range(9)]
        out = pooled.sign_changes(items, NOW)
        assert pooled._pool is not None and pooled._pool._pool is not None  # it did start
    finally:
        pooled.close()
    root = Metadata[Root].from_bytes(hub.trust.director_root()[1]).signed
    assert len(out) == 9
    for (device_id, _, _), signed in zip(items, out, strict=True):
        targets = Metadata[Targets].from_bytes(signed.targets or b"")
        root.verify_delegate("targets", targets.signed_bytes, targets.signatures)
        assert targets.signed.unrecognized_fields[DEVICE_FIELD] == device_id


# -- the template path (issue 8: signing a stage's desired states for 10,000 devices) ----


@pytest.mark.parametrize(
    ("name", "device_id", "target", "previous"),
    [
        ("first signing", "cam-1", (460, "ab" * 32), DeviceRoles()),
        ("decommissioned", "cam-1", None, DeviceRoles(3, 4, 9)),
        ("large versions", "plant_a.line-1.cam-7", (0, "0f" * 32), DeviceRoles(99, 10**12, 77)),
        ("long id", "d" * 128, (10**10, "9" * 64), DeviceRoles(1, 1, 1)),
    ],
)
def test_templated_roles_are_the_bytes_the_metadata_api_signs(
    hub: Hub,
    name: str,
    device_id: str,
    target: tuple[int, str] | None,
    previous: DeviceRoles,
) -> None:
    """The fast path writes canonical JSON itself: python-tuf must compute the same signed
    bytes from what it parses, and the Metadata API path (taken for a naive time) must
    produce the same metadata and, Ed25519 being deterministic, the same signatures."""
    import orjson
    from tuf.api.serialization.json import CanonicalJSONSerializer

    signer = hub.trust.device_signer
    fast = signer.sign_change(device_id, target, previous, NOW)
    slow = signer.sign_change(device_id, target, previous, NOW.replace(tzinfo=None))
    root = Metadata[Root].from_bytes(hub.trust.director_root()[1]).signed
    for role, a, b in (
        ("targets", fast.targets, slow.targets),
        ("snapshot", fast.snapshot, slow.snapshot),
        ("timestamp", fast.timestamp, slow.timestamp),
    ):
        assert a is not None and b is not None, name
        assert orjson.loads(a) == orjson.loads(b), (name, role)
        md = Metadata.from_bytes(a)
        signed_part = a[a.index(b'"signed":') + len(b'"signed":') : -1]
        assert signed_part == CanonicalJSONSerializer().serialize(md.signed), (name, role)
        root.verify_delegate(role, md.signed_bytes, md.signatures)
    assert fast.roles.timestamp == slow.roles.timestamp == previous.timestamp + 1


def test_signing_with_the_raw_ed25519_key_gives_the_signers_bytes(hub: Hub) -> None:
    """The director's Ed25519 key signs directly (issue 8): byte for byte what the
    securesystemslib signer's own ``sign`` gives, for every role."""
    from securesystemslib.signer import Signature, Signer

    from modelfleet.trust.device_repo import DeviceRepoSigner

    fast = hub.trust.device_signer
    assert fast._ed25519 is not None  # the fast path is the one taken

    class Wrapped(Signer):  # no private key to find: signs through the signer's API
        def __init__(self, inner: Signer) -> None:
            self._inner = inner

        @property
        def public_key(self) -> Any:
            return self._inner.public_key

        def sign(self, payload: bytes) -> Signature:
            return self._inner.sign(payload)

        @classmethod
        def from_priv_key_uri(cls, *args: object, **kwargs: object) -> Signer:
            raise NotImplementedError

    slow = DeviceRepoSigner(Wrapped(fast._signer), fast.lifetimes, fast.refresh_margin)
    assert slow._ed25519 is None
    for target in ((460, "a" * 64), None):
        a = fast.sign_change("cam-1", target, DeviceRoles(), NOW)
        b = slow.sign_change("cam-1", target, DeviceRoles(), NOW)
        assert (a.targets, a.snapshot, a.timestamp) == (b.targets, b.snapshot, b.timestamp)


def test_an_id_needing_escapes_takes_the_metadata_api_path(hub: Hub) -> None:
    out = hub.trust.device_signer.sign_change('cam"1\\x', (1, "a" * 64), DeviceRoles(), NOW)
    targets = Metadata[Targets].from_bytes(out.targets or b"").signed
    assert targets.unrecognized_fields[DEVICE_FIELD] == 'cam"1\\x'


def test_a_failed_pool_batch_is_signed_in_process(hub: Hub) -> None:
    """A pending pool batch whose workers died still yields signed roles (slower)."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from modelfleet.trust._sign_pool import PendingSigning

    broken: Future[list[object]] = Future()
    broken.set_exception(BrokenProcessPool("worker died"))
    items = [(f"cam-{i}", (1, "a" * 64), DeviceRoles()) for i in range(3)]
    parts = [broken]
    pending = PendingSigning(None, hub.trust.device_signer, items, NOW, parts=parts)  # type: ignore[arg-type]
    listed = [Metadata[Targets].from_bytes(o.targets or b"").signed for o in pending.result()]
    assert [t.unrecognized_fields[DEVICE_FIELD] for t in listed] == ["cam-0", "cam-1", "cam-2"]


# -- issue 11: per-site lifetimes (ADR 0037) -------------------------------------------


def _media_hub(tmp_path: Path) -> Hub:
    policy = ExpiryPolicy(sites={"quarry": SiteExpiry(timestamp=timedelta(days=60))})
    return make_hub(tmp_path / "hub", NOW, policy)


def test_a_sites_signer_signs_with_its_lifetimes_and_the_same_key(tmp_path: Path) -> None:
    hub = _media_hub(tmp_path)
    base = hub.trust.device_signer
    quarry = base.for_site("quarry")
    assert base.for_site("office") is base and base.for_site("") is base
    assert base.for_site("quarry") is quarry and quarry.keyid == base.keyid
    out = quarry.sign_change("cam-q", (1, "a" * 64), DeviceRoles(), NOW)
    assert Metadata.from_bytes(out.timestamp).signed.expires == NOW + timedelta(days=60)
    online = base.sign_change("cam-o", (1, "a" * 64), DeviceRoles(), NOW)
    assert Metadata.from_bytes(online.timestamp).signed.expires == NOW + timedelta(days=1)
    # re-signing is due by the site's margin, not the global one
    assert quarry.sign_expiring(out.roles, NOW + timedelta(days=39)) is None
    assert base.sign_expiring(online.roles, NOW + timedelta(hours=17)) is not None
    assert quarry.resign_at(out.roles) == NOW + timedelta(days=40)


def test_a_signing_worker_signs_a_sites_batch_with_that_sites_lifetimes(tmp_path: Path) -> None:
    from modelfleet.trust import _sign_pool
    from modelfleet.trust.keys import online_key_path

    hub = _media_hub(tmp_path)
    path = online_key_path(tmp_path / "hub" / "keys", "director")
    assert path is not None
    _sign_pool._init(str(path), LIFETIMES, 1 / 3, None)  # what each worker runs at start
    try:
        quarry = hub.trust.device_signer.for_site("quarry").lifetimes
        items = [("cam-q", (1, "a" * 64), DeviceRoles())]
        (site,) = _sign_pool._sign_slice(items, NOW, quarry)
        (plain,) = _sign_pool._sign_slice(items, NOW)
    finally:
        _sign_pool._worker.clear()
    assert site.roles.timestamp_expires == NOW + timedelta(days=60)
    assert plain.roles.timestamp_expires == NOW + timedelta(days=1)
