"""A device updates from a folder (a mounted stick) with the same TUF checks as online.

The folder is filled the way an export fills it: one TUF cycle against the hub through a
:class:`RecordingFetcher`. A second device with only the trust-root bundle then reads
everything from the folder through a :class:`FolderFetcher` and refuses whatever was
changed on the stick.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadError, DownloadHTTPError

from modelfleet.delivery.folder_fetcher import FolderFetcher, RecordingFetcher, tree_relative
from modelfleet.delivery.http_fetcher import HttpFetcher
from modelfleet.errors import (
    CorruptDeliveryError,
    InvalidInputError,
    MetadataVerificationError,
    TransportError,
)
from modelfleet.hashing import sha256_file
from modelfleet.rollout.desired_state import ArtefactRef, DesiredState
from modelfleet.trust import DeviceTrustClient
from tests.trust._trust_support import TOKEN, Hub, make_hub, serve

HUB = "http://hub.invalid:8710"


def _install(client: DeviceTrustClient, device: str, dest: Path) -> DesiredState:
    raw = client.fetch_desired_state(device)
    assert raw is not None
    state = DesiredState.from_json(raw)
    for a in state.assignments:
        p = a.production
        client.fetch_package_file(p.model_path, p.sha256, p.length, dest / p.model / "model.onnx")
        client.fetch_package_file(
            p.manifest_path, p.manifest_sha256, p.manifest_length, dest / p.model / "manifest.json"
        )
    return state


def _export(hub: Hub, device: str, tree: Path, cache: Path) -> list[str]:
    """One online cycle through a recording fetcher: the tree a bundle would carry."""
    with serve(hub) as url:
        recorder = RecordingFetcher(HttpFetcher(TOKEN), tree, url)
        online = DeviceTrustClient(cache, url, TOKEN, hub.trust.trust_root_bundle(), recorder)
        _install(online, device, cache / "slots")
    return recorder.recorded


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return make_hub(tmp_path / "hub")


@pytest.fixture
def published(hub: Hub) -> ArtefactRef:
    ref = hub.publish("iris", 2)
    hub.assign("dev-1", ref)
    return ref


def _offline(hub: Hub, tree: Path, cache: Path) -> DeviceTrustClient:
    return DeviceTrustClient(
        cache, HUB, TOKEN, hub.trust.trust_root_bundle(), FolderFetcher(tree, HUB)
    )


def test_a_device_installs_from_a_folder_filled_by_one_online_cycle(
    hub: Hub, published: ArtefactRef, tmp_path: Path
) -> None:
    recorded = _export(hub, "dev-1", tmp_path / "tree", tmp_path / "online")
    assert "tuf/director/devices/dev-1/metadata/timestamp.json" in recorded
    assert any(p.startswith("tuf/catalog/targets/") for p in recorded)

    state = _install(_offline(hub, tmp_path / "tree", tmp_path / "dev"), "dev-1", tmp_path / "s")

    assert state.assignments[0].production == published
    model = tmp_path / "s" / "iris" / "model.onnx"
    assert sha256_file(model) == (published.sha256, published.length)


def test_a_tampered_artefact_on_the_stick_is_refused_and_a_good_copy_then_installs(
    hub: Hub, published: ArtefactRef, tmp_path: Path
) -> None:
    _export(hub, "dev-1", tmp_path / "tree", tmp_path / "online")
    (blob,) = (tmp_path / "tree" / "tuf" / "catalog" / "targets").rglob(f"{published.sha256}.*")
    good = blob.read_bytes()
    data = bytearray(good)
    data[3] ^= 0xFF
    blob.write_bytes(bytes(data))

    client = _offline(hub, tmp_path / "tree", tmp_path / "dev")
    assert client.fetch_desired_state("dev-1") is not None
    dest = tmp_path / "m.onnx"
    with pytest.raises(CorruptDeliveryError, match="hash mismatch"):  # bad bytes: retried
        client.fetch_package_file(published.model_path, published.sha256, published.length, dest)
    assert not dest.exists()

    blob.write_bytes(good)  # issue 11: a re-made stick; the same client takes it
    client.fetch_package_file(published.model_path, published.sha256, published.length, dest)
    assert sha256_file(dest) == (published.sha256, published.length)


def test_the_folder_fingerprint_changes_when_the_stick_is_re_made(tmp_path: Path) -> None:
    tree = tmp_path / "mnt"
    (tree / "tuf" / "catalog").mkdir(parents=True)
    blob = tree / "tuf" / "catalog" / "model.onnx"
    blob.write_bytes(b"abcd")
    folder = FolderFetcher(tree, HUB)
    first = folder.fingerprint()
    assert folder.fingerprint() == first  # nothing changed: same digest
    blob.write_bytes(b"abce")  # same name and size, other bytes ...
    os.utime(blob, ns=(10**18, 10**18))  # ... and times (a copy keeps its source's mtime)
    second = folder.fingerprint()
    assert second != first
    (tree / "tuf" / "extra.json").write_bytes(b"{}")
    assert folder.fingerprint() != second
    for path in sorted(tree.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    tree.rmdir()
    assert folder.fingerprint().startswith("unreadable")  # unmounted: a digest, no error


def test_tampered_metadata_on_the_stick_is_refused(
    hub: Hub, published: ArtefactRef, tmp_path: Path
) -> None:
    _export(hub, "dev-1", tmp_path / "tree", tmp_path / "online")
    ts = (
        tmp_path / "tree" / "tuf" / "director" / "devices" / "dev-1" / "metadata" / "timestamp.json"
    )
    doc = json.loads(ts.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # a longer life the keys never signed
    ts.write_text(json.dumps(doc))

    with pytest.raises(MetadataVerificationError, match="signature"):
        _offline(hub, tmp_path / "tree", tmp_path / "dev").fetch_desired_state("dev-1")


def test_a_stick_for_another_device_gives_this_one_nothing(
    hub: Hub, published: ArtefactRef, tmp_path: Path
) -> None:
    _export(hub, "dev-1", tmp_path / "tree", tmp_path / "online")
    client = _offline(hub, tmp_path / "tree", tmp_path / "dev")
    with pytest.raises(TransportError, match="HTTP 404"):
        client.fetch_desired_state("dev-2")
    # dev-1's signed files put where dev-2's belong still name dev-1's desired state only
    devices = tmp_path / "tree" / "tuf" / "director" / "devices"
    os.rename(devices / "dev-1", devices / "dev-2")
    with pytest.raises(MetadataVerificationError, match="signed for device 'dev-1', not 'dev-2'"):
        client.fetch_desired_state("dev-2")


def test_the_folder_answers_like_the_hub_and_never_leaves_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "tuf" / "catalog" / "metadata").mkdir(parents=True)
    (tree / "tuf" / "catalog" / "metadata" / "1.root.json").write_bytes(b"{}")
    (tmp_path / "secret").write_bytes(b"outside")
    os.symlink(tmp_path / "secret", tree / "tuf" / "catalog" / "metadata" / "2.root.json")
    fetcher = FolderFetcher(tree, HUB)

    assert fetcher.fetch(f"{HUB}/tuf/catalog/metadata/1.root.json").__next__() == b"{}"
    with pytest.raises(DownloadHTTPError) as missing:
        list(fetcher.fetch(f"{HUB}/tuf/catalog/metadata/3.root.json"))
    assert missing.value.status_code == 404
    for url in (
        f"{HUB}/tuf/catalog/metadata/2.root.json",  # a link out of the tree
        f"{HUB}/tuf/catalog/metadata/%2e%2e/%2e%2e/x",  # an escape
        "http://elsewhere:1/tuf/catalog/metadata/1.root.json",  # another host
    ):
        with pytest.raises(DownloadError) as refused:
            list(fetcher.fetch(url))
        assert not isinstance(refused.value, DownloadHTTPError), url
    with pytest.raises(InvalidInputError):
        tree_relative(HUB, f"{HUB}/api/v1/devices")
