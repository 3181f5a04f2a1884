"""Key rotation (issue 10, ADR 0025): roots chain through rotations, devices follow, a
broken chain is refused, and an offline root key signs in a ceremony."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from modelfleet.errors import ConflictError, InvalidInputError, MetadataVerificationError
from modelfleet.trust import DeviceTrustClient, HubTrust
from modelfleet.trust._key_files import read_private_key
from modelfleet.trust.key_admin import KeyAdmin
from modelfleet.trust.key_registry import OFFLINE, KeyRegistry, KeyState
from modelfleet.trust.root_signing import parse_bundle, sign_bundle
from tests.trust._trust_support import TOKEN, Hub, serve


def _admin(hub: Hub) -> KeyAdmin:
    return KeyAdmin(hub.home / "keys", hub.trust, hub.clock, trust_root_file=hub.home / "tr.json")


def _root_version(hub: Hub, repo: str) -> int:
    return hub.trust.versions(repo)[0]


def _take_root_offline(hub: Hub, dest: Path) -> Path:
    """Move the root key file off the hub; the registry then says ``offline``."""
    registry = KeyRegistry.load(hub.home / "keys")
    (record,) = registry.active("root")
    assert record.file is not None
    moved = dest / "root-offline.pem"
    shutil.move(hub.home / "keys" / record.file, moved)
    registry.put(replace(record, location=OFFLINE))
    registry.save()
    return moved


def test_device_that_slept_through_two_root_rotations_follows(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    blob = hub.assign("dev-1", ref)
    assert client.fetch_desired_state("dev-1") == blob  # holds root version 1
    admin = _admin(hub)
    first = admin.rotate("root")
    second = admin.rotate("root")
    assert not first.pending and not second.pending
    assert _root_version(hub, "catalog") == _root_version(hub, "director") == 3
    # Each new root is signed by the key it replaces and by its own.
    for v, change in ((2, first), (3, second)):
        md = Metadata[Root].from_file(str(hub.home / "tuf" / "catalog" / f"{v}.root.json"))
        assert set(md.signatures) == {*change.added, *change.retired}
    registry = KeyRegistry.load(hub.home / "keys")
    assert [r.keyid for r in registry.active("root")] == second.added
    retired = [r for r in registry.records() if r.state is KeyState.RETIRED]
    assert {r.keyid for r in retired} == {*first.retired, *second.retired}
    assert all(not (hub.home / "keys" / (r.file or "-")).exists() for r in retired)
    # The device walks 2.root.json then 3.root.json and keeps working.
    hub.clock.advance(60)
    blob2 = hub.assign("dev-1", ref, hub.publish("digits", 1))
    assert client.fetch_desired_state("dev-1") == blob2
    client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "m")
    for repo in ("catalog", "director-device"):  # the per-device director walks the roots
        history = tmp_path / "device" / repo / "metadata" / "root_history"
        assert (history / "3.root.json").is_file()
    # trust-root.json for new devices is rewritten: it starts them at version 3.
    bundle = json.loads((hub.home / "tr.json").read_bytes())
    assert bundle == json.loads(hub.trust.trust_root_bundle())


def test_root_signed_only_by_the_new_key_is_refused_by_hub_and_device(
    hub: Hub, client: DeviceTrustClient
) -> None:
    blob = hub.assign("dev-1", hub.publish("iris", 1))
    assert client.fetch_desired_state("dev-1") == blob
    new_key = CryptoSigner.generate_ed25519()
    roots = hub.trust.next_roots(["catalog"])
    root = roots["catalog"]
    old_id = root.signed.roles["root"].keyids[0]
    root.signed.revoke_key(old_id, "root")
    root.signed.add_key(new_key.public_key, "root")
    root.sign(new_key)
    with pytest.raises(MetadataVerificationError, match="current root"):
        hub.trust.install_roots(roots)
    assert _root_version(hub, "catalog") == 1
    # Planted on the hub anyway (a compromised store): the device refuses to walk to it.
    catalog = hub.home / "tuf" / "catalog"
    (catalog / "2.root.json").write_bytes(root.to_bytes())
    client.begin_cycle()
    with pytest.raises(MetadataVerificationError):
        client.refresh_catalog()


def test_rotating_the_timestamp_key_resigns_the_catalog_with_the_new_key(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    client.fetch_desired_state("dev-1")
    client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "a")
    change = _admin(hub).rotate("timestamp")
    assert change.written == ["catalog/root", "catalog/timestamp"]
    ts = Metadata.from_file(str(hub.home / "tuf" / "catalog" / "timestamp.json"))
    assert set(ts.signatures) == set(change.added)
    # The hub reopened with the registry signs with the new key; the device follows.
    reopened = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    hub.trust = reopened
    ref2 = hub.publish("iris", 2)
    client.begin_cycle()
    client.fetch_package_file(ref2.model_path, ref2.sha256, ref2.length, tmp_path / "b")


def test_rotating_the_director_key_hands_the_new_key_to_the_per_device_signer(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    blob = hub.assign("dev-1", ref)
    assert client.fetch_desired_state("dev-1") == blob
    change = _admin(hub).rotate("director")
    (new,) = change.added
    assert change.written == [
        "director/root", "director/targets", "director/snapshot", "director/timestamp",
    ]  # fmt: skip
    assert hub.trust.device_signer.keyid == new
    # What the per-device signer signs now verifies under director root 2; the device
    # walks to it (the hub's database re-signing is tests/hub/test_director_key_rotation.py).
    hub.clock.advance(60)
    blob2 = hub.assign("dev-1", ref, hub.publish("digits", 1))
    ts = Metadata.from_bytes(hub.devices["dev-1"]["timestamp.json"])
    assert set(ts.signatures) == {new}
    assert client.fetch_desired_state("dev-1") == blob2
    history = tmp_path / "device" / "director-device" / "metadata" / "root_history"
    assert (history / "2.root.json").is_file()


def test_signing_workers_sign_with_the_rotated_director_key_not_the_retired_one(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelfleet.trust import _sign_pool
    from modelfleet.trust.device_repo import DeviceRoles

    monkeypatch.setattr(_sign_pool, "PARALLEL_MIN", 4)
    trust = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock, signing_workers=2)
    try:
        items = [(f"cam-{i}", (10 + i, f"{i:064x}"), DeviceRoles()) for i in range(8)]
        now = hub.clock.now().replace(microsecond=0)
        before = trust.device_signer.sign_changes(items, now)
        change = KeyAdmin(hub.home / "keys", trust, hub.clock).rotate("director")
        after = trust.device_signer.sign_changes(items, now)
        assert trust.device_signer._pool is not None and trust.device_signer._pool._pool
    finally:
        trust.close()
    for signed, keyids in ((before, set(change.retired)), (after, set(change.added))):
        for out in signed:
            assert set(Metadata.from_bytes(out.timestamp).signatures) == keyids


def test_offline_root_ceremony_export_sign_apply(hub: Hub, tmp_path: Path) -> None:
    with serve(hub) as url:
        client = DeviceTrustClient(tmp_path / "dev", url, TOKEN, hub.trust.trust_root_bundle())
        blob = hub.assign("dev-1", hub.publish("iris", 1))
        assert client.fetch_desired_state("dev-1") == blob
        offline_key = _take_root_offline(hub, tmp_path)
        hub.trust = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
        admin = _admin(hub)
        new_root_file = tmp_path / "new-root.pem"
        change = admin.rotate("root", out=new_root_file)
        assert change.pending
        assert change.status["catalog"]["current_signed"] == 0
        with pytest.raises(ConflictError, match="offline signatures"):
            admin.rotate("snapshot")
        # On the offline machine: sign with the old and the new root key.
        bundle = parse_bundle(admin.export_root())
        for key_path in (offline_key, new_root_file):
            sign_bundle(bundle, CryptoSigner(read_private_key(key_path, None)))
        assert all(s["ready"] for s in bundle.status().values())
        applied = admin.apply_root(bundle.to_bytes())
        assert "catalog/root" in applied.written and "director/root" in applied.written
        assert not admin.pending_file.exists()
        (active,) = KeyRegistry.load(hub.home / "keys").active("root")
        assert active.location == OFFLINE and [active.keyid] == change.added
        hub.clock.advance(60)
        blob2 = hub.assign("dev-1", hub.publish("iris", 2))
        assert client.fetch_desired_state("dev-1") == blob2
        client.close()


def test_apply_root_below_threshold_is_refused_and_nothing_changes(
    hub: Hub, tmp_path: Path
) -> None:
    _take_root_offline(hub, tmp_path)
    hub.trust = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    admin = _admin(hub)
    new_root_file = tmp_path / "new-root.pem"
    admin.rotate("root", out=new_root_file)
    bundle = parse_bundle(admin.export_root())
    sign_bundle(bundle, CryptoSigner(read_private_key(new_root_file, None)))  # new key only
    with pytest.raises(MetadataVerificationError, match="0 of the 1 signatures the current"):
        admin.apply_root(bundle.to_bytes())
    assert _root_version(hub, "catalog") == _root_version(hub, "director") == 1
    assert admin.pending_file.exists()
    discarded = admin.discard_root()
    assert discarded.retired and not admin.pending_file.exists()


def test_offline_root_is_not_resigned_by_upkeep_and_says_so(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _take_root_offline(hub, tmp_path)
    hub.trust = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    hub.clock.advance(timedelta(days=300).total_seconds())
    done = hub.trust.refresh_expiring()
    assert "catalog/root" not in done and "catalog/timestamp" in done
    assert "key is offline" in caplog.text


def test_create_adds_a_second_root_key_and_retire_takes_it_out(hub: Hub) -> None:
    admin = _admin(hub)
    created = admin.create("root")
    roots = hub.trust.roots()
    assert len(roots["catalog"].roles["root"].keyids) == 2
    retired = admin.retire(created.added[0][:12])
    assert retired.retired == created.added
    assert len(hub.trust.roots()["director"].roles["root"].keyids) == 1
    assert _root_version(hub, "catalog") == 3


@pytest.mark.parametrize(
    ("action", "error", "message"),
    [
        ("retire-last", ConflictError, "below its threshold"),
        ("retire-twice", ConflictError, "already retired"),
        ("unknown-role", Exception, "unknown key role"),
        ("offline-director", InvalidInputError, "cannot be an offline key"),
    ],
)
def test_refused_key_operations_change_nothing(
    hub: Hub, action: str, error: type[Exception], message: str
) -> None:
    admin = _admin(hub)
    registry = KeyRegistry.load(hub.home / "keys")
    (root,) = registry.active("root")
    if action == "retire-twice":
        admin.rotate("root")
    before = _root_version(hub, "catalog")
    with pytest.raises(error, match=message):
        if action in ("retire-last", "retire-twice"):
            admin.retire(root.keyid)
        elif action == "offline-director":
            admin.rotate("director", out=hub.home / "director-offline.pem")
        else:
            admin.rotate("nobody")
    assert _root_version(hub, "catalog") == before
    assert not [r for r in KeyRegistry.load(hub.home / "keys").pending()]


def test_a_running_hub_signs_with_the_keys_another_process_rotated(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    blob = hub.assign("dev-1", ref)
    assert client.fetch_desired_state("dev-1") == blob
    # `modelfleet keys` runs in its own process: its own HubTrust on the same folders.
    other = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    root = KeyAdmin(hub.home / "keys", other, hub.clock).rotate("root")
    snap = KeyAdmin(hub.home / "keys", other, hub.clock).rotate("snapshot")
    # The running hub (hub.trust, opened before) picks the new keys up at its next change.
    ref2 = hub.publish("iris", 2)
    snapshot = Metadata.from_file(
        str(
            hub.home
            / "tuf"
            / "catalog"
            / f"{hub.trust.repository('catalog').version('snapshot')}.snapshot.json"
        )
    )
    assert set(snapshot.signatures) == set(snap.added)
    hub.clock.advance(timedelta(days=300).total_seconds())
    assert "catalog/root" in hub.trust.refresh_expiring()  # with the new root key
    v = hub.trust.versions("catalog")[0]
    md = Metadata[Root].from_file(str(hub.home / "tuf" / "catalog" / f"{v}.root.json"))
    assert set(md.signatures) == set(root.added)
    client.begin_cycle()
    client.fetch_package_file(ref2.model_path, ref2.sha256, ref2.length, tmp_path / "m")


def test_encrypt_turns_legacy_key_files_into_encrypted_ones(hub: Hub) -> None:
    from modelfleet.trust import load_signers
    from modelfleet.trust._key_files import ENCRYPTED_HEADER

    admin = KeyAdmin(hub.home / "keys", hub.trust, hub.clock, passphrase=b"new passphrase")
    before = {r: s.public_key.keyid for r, s in load_signers(hub.home / "keys").items()}
    done = admin.encrypt()
    assert sorted(done) == sorted(f"{r}.pem" for r in before)
    assert all((hub.home / "keys" / f).read_bytes().startswith(ENCRYPTED_HEADER) for f in done)
    after = load_signers(hub.home / "keys", b"new passphrase")
    assert {r: s.public_key.keyid for r, s in after.items()} == before
    assert admin.encrypt() == []  # nothing left to encrypt
