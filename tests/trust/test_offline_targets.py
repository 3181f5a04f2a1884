"""An offline catalog targets key and a snapshot signed with the timestamp key (issue 10,
ADR 0043): every catalog change waits, staged, for the targets ceremony; only the
director's and the timestamp's keys stay online. Each test checks what the hub's trust
store accepts and what python-tuf's ngclient on a device accepts over loopback HTTP."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from modelfleet.errors import (
    ArtefactVerificationError,
    ConfigError,
    ConflictError,
    MetadataVerificationError,
)
from modelfleet.trust import DeviceTrustClient, HubTrust
from modelfleet.trust._key_files import read_private_key
from modelfleet.trust.key_admin import KeyAdmin
from modelfleet.trust.key_registry import OFFLINE, KeyRegistry, KeyState
from modelfleet.trust.staged_targets import sign_targets
from tests.trust._trust_support import TOKEN, Hub, serve
from tests.trust.test_release_roles import _file, _keys, _package, _signers


def _admin(hub: Hub) -> KeyAdmin:
    return KeyAdmin(hub.home / "keys", hub.trust, hub.clock, trust_root_file=hub.home / "tr.json")


def _reopen(hub: Hub) -> None:
    """The hub restarted: signers come from the registry (offline keys sign nothing)."""
    hub.trust.close()
    hub.trust = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)


def _targets_offline(hub: Hub, tmp_path: Path) -> Path:
    """Rotate the catalog's targets key to a new key written off the hub; return its file."""
    out = tmp_path / "offline-targets.pem"
    change = _admin(hub).rotate("targets", out=out)
    assert not change.pending and "catalog/targets" in change.written
    _reopen(hub)
    assert hub.trust.catalog_targets_offline()
    return out


def _sign_offline(data: bytes, key_file: Path) -> bytes:
    return sign_targets(data, CryptoSigner(read_private_key(key_file, None)))


def _targets_version(hub: Hub) -> int:
    return hub.trust.repository("catalog").version("targets")


def test_a_new_version_waits_for_the_targets_ceremony_then_installs(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    key_file = _targets_offline(hub, tmp_path)
    (record,) = KeyRegistry.load(hub.home / "keys").active("targets")
    assert record.location == OFFLINE and record.file is None
    # The published targets was signed by the new key while it was still in hand.
    published = _targets_version(hub)
    current = Metadata.from_file(str(hub.home / "tuf" / "catalog" / f"{published}.targets.json"))
    assert set(current.signatures) == {record.keyid}

    ref = hub.publish("iris", 1)
    assert _targets_version(hub) == published  # nothing signed: staged
    staged = hub.trust.staged_catalog_targets()
    assert staged is not None and staged["version"] == published + 1
    assert staged["added"] == ["models/iris/1/manifest.json", "models/iris/1/model.onnx"]
    assert not hub.trust.catalog_lists("iris", 1)
    hub.assign("dev-1", ref)
    client.fetch_desired_state("dev-1")
    with pytest.raises(ArtefactVerificationError, match="not in the catalog"):
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "a")

    # The ceremony: export, sign on the offline machine, apply.
    exported = hub.trust.export_catalog_targets()
    assert json.loads(exported)["signatures"] == []
    written = hub.trust.apply_catalog_targets(_sign_offline(exported, key_file))
    assert written == ["catalog/targets", "catalog/snapshot", "catalog/timestamp"]
    assert _targets_version(hub) == published + 1
    assert hub.trust.staged_catalog_targets() is None
    assert hub.trust.catalog_lists("iris", 1)
    client.begin_cycle()
    client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "b")


def test_apply_refuses_a_stale_an_edited_an_unknown_key_and_an_expired_file(
    hub: Hub, tmp_path: Path
) -> None:
    key_file = _targets_offline(hub, tmp_path)
    published = _targets_version(hub)
    hub.publish("iris", 1)
    stale = _sign_offline(hub.trust.export_catalog_targets(), key_file)
    hub.publish("iris", 2)  # the catalog changed after the export
    with pytest.raises(ConflictError, match="changed after it was exported"):
        hub.trust.apply_catalog_targets(stale)

    exported = hub.trust.export_catalog_targets()
    stranger = CryptoSigner.generate_ed25519()
    with pytest.raises(MetadataVerificationError, match="0 of the 1 signatures"):
        hub.trust.apply_catalog_targets(sign_targets(exported, stranger))

    edited = json.loads(_sign_offline(exported, key_file))
    edited["signed"]["targets"].pop("models/iris/2/model.onnx")
    with pytest.raises(ConflictError, match="edited"):
        hub.trust.apply_catalog_targets(json.dumps(edited).encode())

    late = _sign_offline(exported, key_file)
    hub.clock.advance(timedelta(days=366).total_seconds())
    with pytest.raises(MetadataVerificationError, match="expired"):
        hub.trust.apply_catalog_targets(late)
    assert _targets_version(hub) == published  # every refusal changed nothing
    assert hub.trust.staged_catalog_targets() is not None


def test_revocation_and_a_release_role_are_staged_and_published_together(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref1 = hub.publish("iris", 1)  # listed while the targets key is online
    key_file = _targets_offline(hub, tmp_path)
    approvers = _signers(2)
    ref3, signed = _package(hub)
    assert hub.trust.delegate_release("iris", 3, _keys(approvers), 2, _file(signed, approvers))
    assert not hub.trust.delegate_release("iris", 3, _keys(approvers), 2, _file(signed, approvers))
    hub.trust.revoke_package("iris", 1)
    staged = hub.trust.staged_catalog_targets()
    assert staged is not None
    assert staged["delegated"] == ["release.iris.v3"]
    assert staged["removed"] == ["models/iris/1/manifest.json", "models/iris/1/model.onnx"]
    assert hub.trust.catalog_lists("iris", 1) and not hub.trust.catalog_lists("iris", 3)

    hub.trust.apply_catalog_targets(_sign_offline(hub.trust.export_catalog_targets(), key_file))
    assert hub.trust.delegated_releases() == ["release.iris.v3"]
    assert not client.catalog_lists(ref1.model_path, ref1.sha256)
    hub.assign("dev-1", ref3)
    client.fetch_desired_state("dev-1")
    client.fetch_package_file(ref3.model_path, ref3.sha256, ref3.length, tmp_path / "m")


def test_upkeep_stages_a_renewal_of_the_offline_targets_and_renews_the_rest(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = _targets_offline(hub, tmp_path)
    published = _targets_version(hub)
    hub.clock.advance(timedelta(days=300).total_seconds())
    with caplog.at_level(logging.WARNING):
        done = hub.trust.refresh_expiring()
    assert "catalog/targets" not in done and "catalog/timestamp" in done
    assert "key is offline" in caplog.text
    staged = hub.trust.staged_catalog_targets()
    assert staged is not None and staged["added"] == staged["removed"] == []
    assert hub.trust.refresh_expiring() == []  # staged once, not every round
    hub.trust.apply_catalog_targets(_sign_offline(hub.trust.export_catalog_targets(), key_file))
    assert _targets_version(hub) == published + 1
    left = hub.trust.repository("catalog").expires("targets") - hub.clock.now()
    assert left > timedelta(days=364)


def test_snapshot_signed_with_the_timestamp_key_and_rotated_with_it(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref = hub.publish("iris", 1)
    hub.assign("dev-1", ref)
    client.fetch_desired_state("dev-1")
    admin = _admin(hub)
    (snapshot_key,) = KeyRegistry.load(hub.home / "keys").active("snapshot")
    change = admin.sign_snapshot_with_timestamp_key()
    assert change.written == ["catalog/root", "catalog/snapshot", "catalog/timestamp"]
    registry = KeyRegistry.load(hub.home / "keys")
    assert registry.active("snapshot") == []
    assert registry.get(snapshot_key.keyid).state is KeyState.RETIRED
    assert not (hub.home / "keys" / (snapshot_key.file or "-")).exists()
    (ts,) = registry.active("timestamp")
    root = hub.trust.roots()["catalog"]
    assert root.roles["snapshot"].keyids == root.roles["timestamp"].keyids == [ts.keyid]
    _reopen(hub)  # the registry has no snapshot key: the timestamp key signs it
    ref2 = hub.publish("iris", 2)
    client.begin_cycle()
    client.fetch_package_file(ref2.model_path, ref2.sha256, ref2.length, tmp_path / "a")

    rotated = admin.rotate("timestamp")  # one key for both roles: both move
    root = hub.trust.roots()["catalog"]
    assert root.roles["snapshot"].keyids == root.roles["timestamp"].keyids == rotated.added
    _reopen(hub)
    ref3 = hub.publish("iris", 3)
    client.begin_cycle()
    client.fetch_package_file(ref3.model_path, ref3.sha256, ref3.length, tmp_path / "b")

    own = _admin(hub).rotate("snapshot")  # its own key again
    root = hub.trust.roots()["catalog"]
    assert root.roles["snapshot"].keyids == own.added
    assert root.roles["timestamp"].keyids == rotated.added
    (ts,) = KeyRegistry.load(hub.home / "keys").active("timestamp")
    assert ts.keyid == rotated.added[0]


def test_only_the_director_and_timestamp_keys_online_a_device_follows(
    hub: Hub, tmp_path: Path
) -> None:
    """Root, targets and release keys offline, snapshot on the timestamp key: the hub
    publishes through the ceremony, renews what expires online, and a device installs."""
    admin = _admin(hub)
    targets_file = tmp_path / "targets.pem"
    admin.rotate("targets", out=targets_file)
    admin.sign_snapshot_with_timestamp_key()
    admin.rotate("root", out=tmp_path / "root.pem")
    _reopen(hub)
    registry = KeyRegistry.load(hub.home / "keys")
    online = {r.role for r in registry.records() if r.state is KeyState.ACTIVE and r.file}
    assert online == {"director", "timestamp"}
    with serve(hub) as url:
        client = DeviceTrustClient(tmp_path / "dev", url, TOKEN, hub.trust.trust_root_bundle())
        try:
            ref = hub.publish("iris", 1)
            data = _sign_offline(hub.trust.export_catalog_targets(), targets_file)
            hub.trust.apply_catalog_targets(data)
            hub.assign("dev-1", ref)
            client.fetch_desired_state("dev-1")
            client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "m")
            hub.clock.advance(timedelta(days=2).total_seconds())  # timestamp lives 1 day
            assert "catalog/timestamp" in hub.trust.refresh_expiring()
            client.begin_cycle()
            assert client.catalog_lists(ref.model_path, ref.sha256)
        finally:
            client.close()


def test_making_targets_offline_with_an_offline_root_goes_in_steps(
    hub: Hub, tmp_path: Path
) -> None:
    registry = KeyRegistry.load(hub.home / "keys")
    (root,) = registry.active("root")
    assert root.file is not None
    shutil.move(hub.home / "keys" / root.file, tmp_path / "root.pem")
    registry.put(replace(root, location=OFFLINE))
    registry.save()
    _reopen(hub)
    admin = _admin(hub)
    with pytest.raises(ConflictError, match="in steps"):
        admin.rotate("targets", out=tmp_path / "t.pem")
    assert not admin.pending_file.exists()
    after = KeyRegistry.load(hub.home / "keys")
    assert after.pending() == [] and [r.keyid for r in after.active("targets")] == [
        r.keyid for r in registry.active("targets")
    ]
    assert hub.trust.versions("catalog")[0] == 1


def test_retiring_the_online_targets_key_needs_the_offline_signature_first(
    hub: Hub, tmp_path: Path
) -> None:
    admin = _admin(hub)
    (online,) = KeyRegistry.load(hub.home / "keys").active("targets")
    out = tmp_path / "t.pem"
    added = admin.create("targets", out=out).added
    _reopen(hub)
    assert not hub.trust.catalog_targets_offline()  # the online key still signs
    hub.publish("iris", 1)
    # Taken out of the hub before the offline key has signed anything: refused.
    registry = KeyRegistry.load(hub.home / "keys")
    assert online.file is not None
    shutil.move(hub.home / "keys" / online.file, tmp_path / "old-online.pem")
    registry.put(replace(online, location=OFFLINE))
    registry.save()
    _reopen(hub)
    with pytest.raises(ConfigError, match="have not signed the current targets"):
        _admin(hub).retire(online.keyid)
    # Signed by the offline key in a ceremony, the retirement goes through.
    hub.publish("iris", 2)
    hub.trust.apply_catalog_targets(_sign_offline(hub.trust.export_catalog_targets(), out))
    change = _admin(hub).retire(online.keyid)
    assert change.retired == [online.keyid]
    root = hub.trust.roots()["catalog"]
    assert root.roles["targets"].keyids == added


def test_an_online_targets_key_again_signs_what_was_staged(hub: Hub, tmp_path: Path) -> None:
    _targets_offline(hub, tmp_path)
    hub.publish("iris", 1)
    staged = hub.trust.staged_catalog_targets()
    assert staged is not None
    _admin(hub).rotate("targets")  # back to a key on the hub
    _reopen(hub)
    assert not hub.trust.catalog_targets_offline()
    assert hub.trust.staged_catalog_targets() is None
    assert hub.trust.catalog_lists("iris", 1)
    md = Metadata[Targets].from_file(
        str(hub.home / "tuf" / "catalog" / f"{_targets_version(hub)}.targets.json")
    )
    assert "models/iris/1/model.onnx" in md.signed.targets


def test_a_corrupt_staged_file_is_set_aside_and_the_hub_keeps_serving(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _targets_offline(hub, tmp_path)
    hub.publish("iris", 1)
    staged = hub.home / "tuf" / "catalog.staged-targets.json"
    staged.write_bytes(b"{not json")
    with caplog.at_level(logging.ERROR):
        _reopen(hub)
    assert "is corrupt" in caplog.text
    assert (hub.home / "tuf" / "catalog.staged-targets.json.corrupt").is_file()
    assert hub.trust.staged_catalog_targets() is None
    assert hub.trust.metadata_path("catalog", "timestamp.json") is not None
    hub.publish("iris", 1)  # re-staged from what the caller says should be listed
    staged_now = hub.trust.staged_catalog_targets()
    assert staged_now is not None and "models/iris/1/model.onnx" in staged_now["added"]
