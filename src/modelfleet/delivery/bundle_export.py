"""Filling a site tree for a removable-media bundle (issue 11, ADR 0034).

For each device of the site, one TUF cycle runs against the hub as that device's own
client would run it (desired state, then every artefact it names), through a
:class:`~modelfleet.delivery.folder_fetcher.RecordingFetcher`: the tree ends up holding
exactly the files the site's devices walk. An artefact already in the tree (another
device's) is read from it instead of downloaded again, and is still verified. The exporter
holds an admin (or viewer) token; nothing is signed here.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet.delivery import site_tree
from modelfleet.delivery.folder_fetcher import FolderFetcher, RecordingFetcher
from modelfleet.delivery.mirror_cache import immutable_digest
from modelfleet.errors import ArtefactVerificationError, InvalidInputError, TransportError
from modelfleet.rollout.desired_state import ArtefactRef, DesiredState

__all__ = [
    "ExportedDevice",
    "TreeFirstFetcher",
    "TrustSource",
    "fill_site_tree",
    "record_root_chains",
    "refs_of",
    "write_trust_root",
]

log = logging.getLogger("modelfleet.delivery")

_MAX_ROOTS = 10_000  # no chain is longer; stops a hub that answers every version

#: Builds a device's trust client: ``(cache dir, fetcher) -> DeviceTrustClient``.
ClientFactory = Callable[[Path, FetcherInterface], "TrustSource"]
#: ``(devices done, devices in all, device id)``.
DeviceProgress = Callable[[int, int, str], None]


class TrustSource(Protocol):
    """What export needs of :class:`modelfleet.trust.DeviceTrustClient`."""

    def fetch_desired_state(self, device_id: str) -> bytes | None: ...

    def fetch_package_file(
        self, target_path: str, expected_sha256: str, expected_length: int, dest: Path
    ) -> Path: ...

    def catalog_lists(self, target_path: str, sha256: str) -> bool: ...


@dataclass(frozen=True)
class ExportedDevice:
    """One device's share of the bundle: its desired-state serial (None: nothing
    assigned) and the artefacts it names."""

    device_id: str
    serial: int | None
    artefacts: tuple[ArtefactRef, ...]


class TreeFirstFetcher(FetcherInterface):
    """Immutable catalog targets already in ``tree`` come from it; the rest from
    ``recorder`` (which records them into the tree)."""

    def __init__(self, recorder: RecordingFetcher, tree: Path, base_url: str) -> None:
        self._recorder = recorder
        self._folder = FolderFetcher(tree, base_url)
        self._base = base_url.rstrip("/")
        self.reused = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        relative = url[len(self._base) + 1 :] if url.startswith(self._base + "/") else ""
        if relative and immutable_digest(relative) is not None:
            try:
                body = self._folder.fetch(url)
            except DownloadHTTPError:
                pass
            else:
                self.reused += 1
                return body
        return self._recorder.fetch(url)


def refs_of(state: DesiredState) -> list[ArtefactRef]:
    """Every artefact a desired state names (production and candidate), once each."""
    refs: dict[str, ArtefactRef] = {}
    for a in state.assignments:
        for ref in (a.production, a.candidate):
            if ref is not None:
                refs.setdefault(f"{ref.sha256}:{ref.model_path}", ref)
    return list(refs.values())


def fill_site_tree(
    devices: Sequence[str],
    tree: Path,
    work: Path,
    hub_url: str,
    inner: FetcherInterface,
    client_for: ClientFactory,
    *,
    progress: DeviceProgress | None = None,
) -> list[ExportedDevice]:
    """Run each device's TUF cycle against the hub, recording into ``tree``.

    Args:
        devices: the site's device ids.
        tree: the site tree to fill (created).
        work: scratch space (per-device TUF caches, verified copies); emptied as it goes.
        hub_url: the hub's base URL (the tree's URLs are its paths).
        inner: the fetcher that reaches the hub (an HttpFetcher with the exporter's token).
        client_for: builds a trust client over a cache folder and a fetcher.
        progress: called after each device.

    Raises:
        MetadataVerificationError, ArtefactVerificationError: the hub's content failed
            verification (nothing is exported that a device would refuse).
        TransportError: the hub could not be reached. StorageError: disk.
    """
    tree, work = Path(tree), Path(work)
    recorder = RecordingFetcher(inner, tree, hub_url)
    fetcher = TreeFirstFetcher(recorder, tree, hub_url)
    exported: list[ExportedDevice] = []
    verified: set[tuple[str, str]] = set()  # (target path, sha256) downloaded and checked
    for n, device in enumerate(devices, 1):
        cache = work / "devices" / device
        client = client_for(cache, fetcher)
        raw = client.fetch_desired_state(device)
        refs: list[ArtefactRef] = []
        serial = None
        if raw is not None:
            state = DesiredState.from_json(raw)
            serial, refs = state.serial, refs_of(state)
            for ref in refs:
                if (ref.model_path, ref.sha256) in verified:
                    # another device brought these bytes; this device's director must still
                    # name what the catalog lists
                    if not client.catalog_lists(ref.model_path, ref.sha256):
                        raise ArtefactVerificationError(
                            f"{device}: {ref.model} v{ref.version} is not in the catalog"
                        )
                    continue
                scratch = work / "verified" / ref.sha256
                client.fetch_package_file(ref.model_path, ref.sha256, ref.length, scratch / "m")
                client.fetch_package_file(
                    ref.manifest_path,
                    ref.manifest_sha256,
                    ref.manifest_length,
                    scratch / "manifest.json",
                )
                shutil.rmtree(scratch, ignore_errors=True)
                verified.add((ref.model_path, ref.sha256))
        shutil.rmtree(cache, ignore_errors=True)
        exported.append(ExportedDevice(device, serial, tuple(refs)))
        if progress is not None:
            progress(n, len(devices), device)
    record_root_chains(recorder, tree, hub_url, devices)
    log.info(
        "site tree: %d devices, %d files recorded, %d artefacts reused",
        len(devices),
        len(recorder.recorded),
        fetcher.reused,
    )
    return exported


def record_root_chains(
    recorder: RecordingFetcher, tree: Path, hub_url: str, devices: Sequence[str]
) -> int:
    """Record every ``<N>.root.json`` from version 1 up, of the catalog and of each device's
    director, so a device (or a site) that holds an old root walks the whole chain, rotations
    included, from the bundle alone. Returns how many were added.

    Raises:
        TransportError: the hub could not be reached (a 404 ends a chain).
    """
    prefixes = ["tuf/catalog/metadata", *(f"tuf/director/devices/{d}/metadata" for d in devices)]
    base = hub_url.rstrip("/")
    added = 0
    for prefix in prefixes:
        for n in range(1, _MAX_ROOTS + 1):
            relative = f"{prefix}/{n}.root.json"
            if site_tree.resolve(tree, relative).is_file():
                continue
            try:
                for _ in recorder.fetch(f"{base}/{relative}"):
                    pass
            except DownloadHTTPError as e:
                if e.status_code == 404:
                    break
                raise TransportError(f"{relative}: HTTP {e.status_code}") from e
            except DownloadError as e:
                raise TransportError(f"{relative}: {e}") from e
            added += 1
    return added


def write_trust_root(tree: Path, trust_root: bytes) -> None:
    """Put the hub's trust-root bundle at the tree's ``trust-root.json``."""
    if not trust_root:
        raise InvalidInputError("empty trust-root bundle")
    site_tree.write_file(tree, site_tree.TRUST_ROOT, trust_root)
