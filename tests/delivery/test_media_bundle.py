"""Removable-media bundles (issue 11): export a site's tree from a hub, import it into a
site tree, and refuse every bad bundle the issue lists with nothing written.

The hub here is the trust tests' in-process one (real TUF repositories on disk served by a
loopback HTTP server); the device side verifies with the real DeviceTrustClient.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard
from pyrage import x25519

from modelfleet.delivery.bundle_export import fill_site_tree, write_trust_root
from modelfleet.delivery.bundle_import import import_bundle, timestamp_versions
from modelfleet.delivery.folder_fetcher import FolderFetcher
from modelfleet.delivery.http_fetcher import HttpFetcher
from modelfleet.delivery.media_bundle import MediaManifest, read_bundle, write_bundle
from modelfleet.errors import InvalidInputError, TrustError
from modelfleet.hashing import sha256_file
from modelfleet.rollout.desired_state import DesiredState
from modelfleet.trust import DeviceTrustClient
from tests.trust._trust_support import TOKEN, Hub, make_hub, serve

DEVICES = ("dev-1", "dev-2", "dev-3")


def _client(cache: Path, url: str, anchor: bytes, fetcher: object) -> DeviceTrustClient:
    return DeviceTrustClient(cache, url, TOKEN, anchor, fetcher)  # type: ignore[arg-type]


def _export(
    hub: Hub, tmp: Path, name: str = "site.mfb", site: str = "plant-a", **kw: object
) -> Path:
    tree = tmp / f"export-{name}"
    with serve(hub) as url:
        anchor = hub.trust.trust_root_bundle()
        fill_site_tree(
            DEVICES,
            tree,
            tmp / f"work-{name}",
            url,
            HttpFetcher(TOKEN),
            lambda cache, fetcher: _client(cache, url, anchor, fetcher),
        )
        write_trust_root(tree, anchor)
        manifest = MediaManifest(site, url, "2026-12-04T00:00:00Z", DEVICES, {"dev-1": ["ab" * 32]})
        write_bundle(tree, manifest, tmp / name, **kw)  # type: ignore[arg-type]
    return tmp / name


def _import(bundle: Path, dest: Path, hub: Hub | None, **kw: object) -> object:
    anchor = None if hub is None else hub.trust.trust_root_bundle()
    return import_bundle(
        bundle,
        dest,
        site=str(kw.pop("site", "plant-a")),
        verifier=_client,
        trust_root=anchor,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    hub = make_hub(tmp_path / "hub")
    ref = hub.publish("iris", 2)
    for d in DEVICES:
        hub.assign(d, ref)
    return hub


def _device_installs(
    dest: Path, hub_url: str, anchor: bytes, device: str, out: Path
) -> DesiredState:
    client = DeviceTrustClient(out / "tuf", hub_url, TOKEN, anchor, FolderFetcher(dest, hub_url))
    raw = client.fetch_desired_state(device)
    assert raw is not None
    state = DesiredState.from_json(raw)
    p = state.assignments[0].production
    client.fetch_package_file(p.model_path, p.sha256, p.length, out / "model.onnx")
    assert sha256_file(out / "model.onnx") == (p.sha256, p.length)
    return state


def test_export_then_import_gives_every_device_what_it_verifies(hub: Hub, tmp_path: Path) -> None:
    bundle = _export(hub, tmp_path)
    dest = tmp_path / "site"
    result = _import(bundle, dest, hub)
    assert result.site == "plant-a" and set(result.devices) == set(DEVICES)  # type: ignore[attr-defined]
    assert result.written and not result.unchanged  # type: ignore[attr-defined]
    assert not any(p.name.startswith(".import-") for p in dest.iterdir())  # staging removed
    hub_url = json.loads(_manifest_bytes(bundle))["hub_url"]
    for d in DEVICES:  # devices read only the folder, and verify everything
        _device_installs(dest, hub_url, hub.trust.trust_root_bundle(), d, tmp_path / d)
    again = _import(bundle, dest, None)  # the second time: the site's own trust root
    assert again.unchanged  # type: ignore[attr-defined]


def _manifest_bytes(bundle: Path) -> bytes:
    with (
        open(bundle, "rb") as f,
        zstandard.ZstdDecompressor().stream_reader(f) as z,
        tarfile.open(fileobj=z, mode="r|") as tar,
    ):
        member = tar.next()
        assert member is not None and member.name == "manifest.json"
        data = tar.extractfile(member)
        assert data is not None
        return data.read()


def _tree(dest: Path) -> dict[str, bytes]:
    return {
        p.relative_to(dest).as_posix(): p.read_bytes()
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("damage", ["truncate", "flip", "append"])
def test_a_truncated_or_corrupted_bundle_is_refused_and_nothing_written(
    hub: Hub, tmp_path: Path, damage: str
) -> None:
    bundle = _export(hub, tmp_path)
    data = bytearray(bundle.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        data += b"\x00" * 100
    bundle.write_bytes(bytes(data))
    dest = tmp_path / "site"
    with pytest.raises(InvalidInputError, match=r"truncated|corrupted"):
        _import(bundle, dest, hub)
    assert _tree(dest) == {}


def test_an_oversized_bundle_is_refused(hub: Hub, tmp_path: Path) -> None:
    bundle = _export(hub, tmp_path)
    with pytest.raises(InvalidInputError, match="more than 1000 bytes"):
        _import(bundle, tmp_path / "site", hub, max_bytes=1000)


def test_a_bundle_for_another_site_is_refused(hub: Hub, tmp_path: Path) -> None:
    bundle = _export(hub, tmp_path, site="plant-b")
    with pytest.raises(TrustError, match="for site 'plant-b', not 'plant-a'"):
        _import(bundle, tmp_path / "site", hub)
    assert _tree(tmp_path / "site") == {}


def test_a_bundle_signed_by_another_hub_is_refused(hub: Hub, tmp_path: Path) -> None:
    other = make_hub(tmp_path / "other")
    ref = other.publish("iris", 2)
    for d in DEVICES:
        other.assign(d, ref)
    bundle = _export(other, tmp_path)
    with pytest.raises(TrustError, match="bundle refused: device dev-1"):
        _import(bundle, tmp_path / "site", hub)  # our site trusts `hub`'s keys only
    assert _tree(tmp_path / "site") == {}


def test_an_older_bundle_is_a_replay_and_refused(hub: Hub, tmp_path: Path) -> None:
    old = _export(hub, tmp_path, name="old.mfb")
    hub.assign("dev-1", hub.publish("iris", 3))
    new = _export(hub, tmp_path, name="new.mfb")
    dest = tmp_path / "site"
    _import(new, dest, hub)
    before = _tree(dest)
    with pytest.raises(
        TrustError, match=r"replay refused: the bundle.s (catalog|device:dev-1) timestamp"
    ):
        _import(old, dest, None)
    assert _tree(dest) == before
    assert timestamp_versions(dest, ["dev-1"])["device:dev-1"] >= 2


def test_the_site_needs_its_own_trust_root(hub: Hub, tmp_path: Path) -> None:
    bundle = _export(hub, tmp_path)
    with pytest.raises(TrustError, match="no trust root yet"):
        _import(bundle, tmp_path / "site", None)  # the bundle's own is never taken


def test_an_encrypted_bundle_opens_with_the_sites_key_only(hub: Hub, tmp_path: Path) -> None:
    ours, theirs = x25519.Identity.generate(), x25519.Identity.generate()
    bundle = _export(hub, tmp_path, recipients=[str(ours.to_public())])
    assert bundle.read_bytes().startswith(b"age-encryption.org/v1")
    with pytest.raises(TrustError, match="encrypted: give the site's age identity"):
        _import(bundle, tmp_path / "site", hub)
    with pytest.raises(TrustError, match="cannot be decrypted with this site's key"):
        _import(bundle, tmp_path / "site", hub, identities=[str(theirs)])
    assert _tree(tmp_path / "site") == {}
    result = _import(bundle, tmp_path / "site", hub, identities=[str(ours)])
    assert result.written  # type: ignore[attr-defined]


def _rewrite(bundle: Path, edit: object) -> None:
    """Repack a bundle's members through ``edit(name, data) -> [(name, data), ...]``."""
    members: list[tuple[str, bytes]] = []
    with (
        open(bundle, "rb") as f,
        zstandard.ZstdDecompressor().stream_reader(f) as z,
        tarfile.open(fileobj=z, mode="r|") as tar,
    ):
        for m in tar:
            data = tar.extractfile(m)
            members += edit(m.name, data.read() if data else b"")  # type: ignore[operator]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bundle.write_bytes(zstandard.ZstdCompressor().compress(out.getvalue()))


def test_a_tampered_artefact_in_a_consistent_bundle_is_refused_by_tuf(
    hub: Hub, tmp_path: Path
) -> None:
    """The container is rebuilt consistently (index recomputed): TUF still says no."""
    bundle = _export(hub, tmp_path)
    import hashlib

    def flip(name: str, data: bytes) -> list[tuple[str, bytes]]:
        if "/catalog/targets/" in name and name.endswith(".onnx"):
            data = data[:-1] + bytes([data[-1] ^ 1])
        if name == "index.json":
            doc = json.loads(data)
            for e in doc["files"]:
                if "/catalog/targets/" in e["path"] and e["path"].endswith(".onnx"):
                    e["sha256"] = flipped[0]
            data = json.dumps(doc).encode()
        if "/catalog/targets/" in name and name.endswith(".onnx"):
            flipped.append(hashlib.sha256(data).hexdigest())
        return [(name, data)]

    flipped: list[str] = []
    _rewrite(bundle, flip)
    with pytest.raises(TrustError, match=r"bundle refused: device dev-1: .*mismatch"):
        _import(bundle, tmp_path / "site", hub)
    assert _tree(tmp_path / "site") == {}


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda n, d: [] if n == "manifest.json" else [(n, d)], "does not start with its manifest"),
        (lambda n, d: [(n, d), (n, d)] if n.startswith("tree/") else [(n, d)], "appears twice"),
        (lambda n, d: [(n.replace("tree/", "tree/../"), d)], "not a site-tree path"),
        (
            lambda n, d: [(n, d)] + ([("extra", b"x")] if n == "index.json" else []),
            "after the index",
        ),
        (
            lambda n, d: [(n, d.replace(b"modelfleet.media/v1", b"modelfleet.media/v2"))],
            "this modelfleet reads modelfleet.media/v1 only",
        ),
    ],
)
def test_odd_containers_are_refused(hub: Hub, tmp_path: Path, edit: object, why: str) -> None:
    bundle = _export(hub, tmp_path)
    _rewrite(bundle, edit)
    with pytest.raises(InvalidInputError, match=why):
        read_bundle(bundle, tmp_path / "staging")


def test_a_link_member_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        manifest = MediaManifest("s", "http://h", "t", ()).to_json()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        link = tarfile.TarInfo("tree/tuf/catalog/metadata/1.root.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    bundle = tmp_path / "b.mfb"
    bundle.write_bytes(zstandard.ZstdCompressor().compress(out.getvalue()))
    with pytest.raises(InvalidInputError, match="not a regular file"):
        read_bundle(bundle, tmp_path / "staging")


def test_the_index_and_manifest_round_trip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "tuf" / "catalog" / "metadata").mkdir(parents=True)
    (tree / "tuf" / "catalog" / "metadata" / "1.root.json").write_bytes(b"{}")
    manifest = MediaManifest("s", "http://h", "t", ("a",), {"a": ("x",)}, {"future": 1})
    index = write_bundle(tree, manifest, tmp_path / "b.mfb")
    unpacked = read_bundle(tmp_path / "b.mfb", tmp_path / "staging")
    assert unpacked.manifest == manifest and dict(unpacked.files) == index
    assert (unpacked.tree / "tuf/catalog/metadata/1.root.json").read_bytes() == b"{}"


def test_a_bundle_signed_with_a_revoked_key_is_refused(hub: Hub, tmp_path: Path) -> None:
    """The timestamp key is rotated (root v2 revokes it). A bundle whose catalog timestamp is
    re-signed with the old key at a higher version, root v2 left out, is checked against the
    v2 the site already holds and refused (without that, root v1 would accept it)."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata

    from modelfleet.trust import HubTrust
    from modelfleet.trust._key_files import read_private_key
    from modelfleet.trust.key_admin import KeyAdmin
    from modelfleet.trust.key_registry import KeyRegistry

    dest = tmp_path / "site"
    old = _export(hub, tmp_path, name="old.mfb")
    _import(old, dest, hub)  # the site's trust root: root v1
    (record,) = KeyRegistry.load(hub.home / "keys").active("timestamp")
    assert record.file is not None
    stolen = CryptoSigner(read_private_key(hub.home / "keys" / record.file, None))
    admin = KeyAdmin(hub.home / "keys", hub.trust, hub.clock, trust_root_file=tmp_path / "tr.json")
    admin.rotate("timestamp")
    hub.trust = HubTrust.open(hub.home / "tuf", hub.home / "keys", hub.clock)
    hub.clock.advance(60)
    hub.assign("dev-1", hub.publish("iris", 3))
    new = _export(hub, tmp_path, name="new.mfb")
    assert "tuf/catalog/metadata/2.root.json" in read_bundle(new, tmp_path / "peek").files
    _import(new, dest, None)  # walks root v1 -> v2 from the bundle, with the site's anchor
    assert (dest / "tuf/catalog/metadata/2.root.json").is_file()

    forged_tree = read_bundle(new, tmp_path / "forge").tree
    (forged_tree / "tuf/catalog/metadata/2.root.json").unlink()  # "there was no rotation"
    ts_file = forged_tree / "tuf/catalog/metadata/timestamp.json"
    ts = Metadata.from_bytes(ts_file.read_bytes())
    ts.signed.version = 100
    ts.signatures.clear()
    ts.sign(stolen)
    ts_file.write_bytes(ts.to_bytes())
    forged = tmp_path / "forged.mfb"
    manifest = MediaManifest("plant-a", "http://hub.invalid", "2026-12-05T00:00:00Z", DEVICES)
    write_bundle(forged_tree, manifest, forged)
    before = _tree(dest)
    with pytest.raises(TrustError, match="bundle refused"):
        _import(forged, dest, None)
    assert _tree(dest) == before
