"""Release roles (issue 10, ADR 0027): a threshold of release keys lists a package version.

Each test checks both ends: what the hub's trust store accepts, and what python-tuf's
ngclient on a device accepts over loopback HTTP.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import Metadata, MetaFile, Signature, Targets

from modelfleet.errors import (
    ArtefactVerificationError,
    InvalidInputError,
    MetadataVerificationError,
)
from modelfleet.hashing import sha256_bytes
from modelfleet.rollout.desired_state import ArtefactRef
from modelfleet.trust import DeviceTrustClient
from modelfleet.trust.release import (
    build_release_bytes,
    check_release_bytes,
    release_role_name,
    sign_release,
    verify_release_signature,
)
from tests.trust._trust_support import Hub

CUSTOM = {"model": "iris", "version": 3, "opset": 17, "runtime": "onnxruntime"}


def _signers(n: int) -> list[CryptoSigner]:
    return [CryptoSigner(Ed25519PrivateKey.generate()) for _ in range(n)]


def _keys(signers: list[CryptoSigner]) -> list[Key]:
    return [s.public_key for s in signers]


def _package(hub: Hub, name: str = "iris", version: int = 3) -> tuple[ArtefactRef, bytes]:
    """Store a package's bytes (not listed anywhere) and build its release bytes."""
    model, manifest = f"model {name} {version}".encode() * 40, b'{"manifest": true}'
    hub.store.put_bytes(model)
    hub.store.put_bytes(manifest)
    ref = ArtefactRef(
        name, version, sha256_bytes(model), len(model), sha256_bytes(manifest), len(manifest)
    )
    expires = hub.clock.now().replace(microsecond=0) + timedelta(days=30)
    signed = build_release_bytes(
        name,
        version,
        (ref.length, ref.sha256, CUSTOM),
        (len(manifest), ref.manifest_sha256),
        expires,
    )
    return ref, signed


def _file(signed: bytes, signers: list[CryptoSigner]) -> bytes:
    """The role file the hub stores once these approvers have signed."""
    md = Metadata[Targets].from_bytes(b'{"signed": ' + signed + b', "signatures": []}')
    for s in signers:
        sig = sign_release(s, signed)
        md.signatures[sig.keyid] = sig
    return md.to_bytes()


def _install(client: DeviceTrustClient, hub: Hub, ref: ArtefactRef, dest: Path) -> Path:
    hub.assign("dev-1", ref)
    client.fetch_desired_state("dev-1")
    return client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest)


def test_one_release_signature_is_not_enough_and_two_are(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    approvers = _signers(3)
    ref, signed = _package(hub)
    with pytest.raises(InvalidInputError, match="below its signature threshold"):
        hub.trust.delegate_release("iris", 3, _keys(approvers), 2, _file(signed, approvers[:1]))
    assert hub.trust.delegated_releases() == []
    assert hub.trust.delegate_release("iris", 3, _keys(approvers), 2, _file(signed, approvers[1:]))
    assert hub.trust.delegated_releases() == [release_role_name("iris", 3)]
    assert _install(client, hub, ref, tmp_path / "m").read_bytes().startswith(b"model iris 3")
    # Idempotent: the same approval again signs nothing.
    before = hub.trust.versions("catalog")
    assert not hub.trust.delegate_release("iris", 3, _keys(approvers), 2, _file(signed, approvers))
    assert hub.trust.versions("catalog") == before


def test_a_version_below_threshold_is_not_in_the_catalog_for_the_device(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    ref, _ = _package(hub)  # never approved: the director names it anyway
    with pytest.raises(ArtefactVerificationError, match="not in the catalog"):
        _install(client, hub, ref, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_device_refuses_a_release_role_served_below_its_threshold(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    """A compromised hub serving the role with one signature of two: ngclient refuses."""
    approvers = _signers(2)
    ref, signed = _package(hub)
    hub.trust.delegate_release("iris", 3, _keys(approvers), 2, _file(signed, approvers))
    weak = _file(signed, approvers[:1])
    catalog = hub.trust.repository("catalog")
    role = release_role_name("iris", 3)
    (catalog.metadata_dir / f"1.{role}.json").write_bytes(weak)
    catalog._snapshot.signed.meta[f"{role}.json"] = MetaFile(
        1, len(weak), {"sha256": sha256_bytes(weak)}
    )
    catalog._commit(snapshot=True)
    with pytest.raises(MetadataVerificationError, match="signature"):
        _install(client, hub, ref, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_device_refuses_a_snapshot_mixing_versions_of_a_release_role(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    """The snapshot names version 1 of the role; the file served is another version."""
    approvers = _signers(1)
    ref, signed = _package(hub)
    hub.trust.delegate_release("iris", 3, _keys(approvers), 1, _file(signed, approvers))
    md = Metadata[Targets].from_bytes(_file(signed, approvers))
    md.signed.version = 2
    md.signatures.clear()
    md.sign(approvers[0])
    role = release_role_name("iris", 3)
    catalog = hub.trust.repository("catalog")
    other = md.to_bytes()
    (catalog.metadata_dir / f"1.{role}.json").write_bytes(other)
    catalog._snapshot.signed.meta[f"{role}.json"] = MetaFile(1)  # no hash: version check only
    catalog._commit(snapshot=True)
    with pytest.raises(MetadataVerificationError, match="version"):
        _install(client, hub, ref, tmp_path / "m")


def test_revoked_release_is_not_in_the_catalog_at_the_next_refresh(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    approvers = _signers(1)
    ref, signed = _package(hub)
    hub.trust.delegate_release("iris", 3, _keys(approvers), 1, _file(signed, approvers))
    _install(client, hub, ref, tmp_path / "m")
    hub.trust.revoke_package("iris", 3)
    assert hub.trust.delegated_releases() == []
    client.begin_cycle()
    with pytest.raises(ArtefactVerificationError, match="not in the catalog"):
        client.fetch_package_file(ref.model_path, ref.sha256, ref.length, tmp_path / "m2")
    # The role's file stays listed in the snapshot (clients refuse one that drops it).
    catalog = hub.trust.repository("catalog")
    assert f"{release_role_name('iris', 3)}.json" in catalog._snapshot.signed.meta


def test_a_signature_by_an_unknown_key_does_not_count(hub: Hub) -> None:
    approvers, stranger = _signers(2), _signers(1)
    _, signed = _package(hub)
    with pytest.raises(InvalidInputError, match="below"):
        hub.trust.delegate_release(
            "iris", 3, _keys(approvers), 2, _file(signed, [approvers[0], *stranger])
        )


def test_reopened_store_verifies_and_serves_the_release_role(hub: Hub) -> None:
    from modelfleet.trust import HubTrust

    approvers = _signers(1)
    ref, signed = _package(hub)
    hub.trust.delegate_release("iris", 3, _keys(approvers), 1, _file(signed, approvers))
    again = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    assert again.target_digest("catalog", f"models/iris/3/{ref.sha256}.model.onnx") == ref.sha256
    assert again.metadata_path("catalog", f"1.{release_role_name('iris', 3)}.json") is not None


def test_approver_check_refuses_bytes_naming_another_package(hub: Hub) -> None:
    _, signed = _package(hub, "iris", 3)
    assert sorted(check_release_bytes(signed, "iris", 3).targets) == [
        "models/iris/3/manifest.json",
        "models/iris/3/model.onnx",
    ]
    with pytest.raises(InvalidInputError, match="not iris version 4"):
        check_release_bytes(signed, "iris", 4)
    with pytest.raises(InvalidInputError):
        check_release_bytes(b'{"not": "targets"}', "iris", 3)


def test_posted_signature_is_verified_against_the_release_key(hub: Hub) -> None:
    a, b = _signers(2)
    _, signed = _package(hub)
    sig = sign_release(a, signed)
    verify_release_signature(a.public_key, signed, sig.keyid, sig.signature)
    with pytest.raises(InvalidInputError, match="does not verify"):
        verify_release_signature(a.public_key, signed + b" ", sig.keyid, sig.signature)
    with pytest.raises(InvalidInputError, match="does not match"):
        verify_release_signature(b.public_key, signed, sig.keyid, sig.signature)
    forged = Signature(sig.keyid, "00" * 64)
    with pytest.raises(InvalidInputError, match="does not verify"):
        verify_release_signature(a.public_key, signed, forged.keyid, forged.signature)


def test_catalog_lists_says_when_a_running_version_was_revoked(
    hub: Hub, client: DeviceTrustClient, tmp_path: Path
) -> None:
    approvers = _signers(1)
    ref, signed = _package(hub)
    hub.trust.delegate_release("iris", 3, _keys(approvers), 1, _file(signed, approvers))
    _install(client, hub, ref, tmp_path / "m")
    assert client.catalog_lists(ref.model_path, ref.sha256)
    assert not client.catalog_lists(ref.model_path, "0" * 64)
    hub.trust.revoke_package("iris", 3)
    client.begin_cycle()  # the next refresh
    assert not client.catalog_lists(ref.model_path, ref.sha256)
