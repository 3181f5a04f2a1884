"""Loading a removable-media bundle into a site mirror's cache or a device's update folder
(issue 11, ADR 0034). Checks first, writes last:

1. the container (:func:`~modelfleet.delivery.media_bundle.read_bundle`) into a staging
   folder beside the destination: truncated, corrupted, oversized, odd members refused;
2. the site: a bundle made for another site is refused;
3. trust: for every device in the bundle, a TUF client anchored on the site's own trust root
   (the destination's ``trust-root.json`` or one given out of band — never the bundle's)
   reads the staged tree laid over the destination (what devices will read after the
   import; a newer root the site holds is never left out) through
   :class:`~modelfleet.delivery.folder_fetcher.FolderFetcher` and verifies the director's
   desired state and every artefact it names, exactly as the device will (signatures and
   thresholds, expiry, director ⇔ catalog, lengths, hashes). A
   bundle signed with an unknown or revoked key fails here;
4. replay: a catalog or device director timestamp older than the one the destination holds
   refuses the whole bundle;
5. only then are the files the verification read moved into the destination, artefacts
   first and ``timestamp.json`` files last, so a device reading meanwhile sees the old tree
   or the new one. Files the verification never read are not kept.

Any refusal leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from modelfleet._atomic import fsync_dir
from modelfleet.delivery import site_tree
from modelfleet.delivery.bundle_export import TrustSource, refs_of
from modelfleet.delivery.folder_fetcher import FolderFetcher, tree_relative
from modelfleet.delivery.media_bundle import (
    MAX_BUNDLE_BYTES,
    MediaManifest,
    Progress,
    UnpackedBundle,
    read_bundle,
)
from modelfleet.delivery.mirror_cache import immutable_digest, is_versioned_metadata
from modelfleet.errors import ModelfleetError, StorageError, TrustError
from modelfleet.hashing import sha256_file
from modelfleet.rollout.desired_state import DesiredState

__all__ = ["ImportResult", "import_bundle", "timestamp_versions"]

log = logging.getLogger("modelfleet.delivery")

_STAGING_PREFIX = ".import-"
_CATALOG_TS = "tuf/catalog/metadata/timestamp.json"

#: ``(cache dir, hub url, trust root, fetcher) -> DeviceTrustClient``.
VerifierFactory = Callable[[Path, str, bytes, FetcherInterface], TrustSource]


@dataclass(frozen=True)
class ImportResult:
    """What an import did.

    Attributes:
        site: the bundle's site.
        created_at: when the bundle was made.
        devices: device id -> desired-state serial (None: nothing assigned).
        written: tree paths written (new or changed).
        bytes_written: their total size.
        unchanged: the destination already held everything (importing twice is harmless).
        access: the manifest's device credential digests (for a mirror's token memo).
    """

    site: str
    created_at: str
    devices: Mapping[str, int | None]
    written: tuple[str, ...]
    bytes_written: int
    unchanged: bool
    access: Mapping[str, Sequence[str]] = field(default_factory=dict)


class _ReadLog(FetcherInterface):
    """The staged tree laid over the destination, remembering what came from the stage.

    A file the bundle lacks is read from the destination, as a device will read the merged
    tree after the import: a bundle that leaves out a newer root the site already holds
    (to pass metadata signed with a key that root revoked) is verified against that root
    and refused.
    """

    def __init__(self, tree: Path, dest: Path, base_url: str) -> None:
        self._staged = FolderFetcher(tree, base_url)
        self._held = FolderFetcher(dest, base_url)
        self._base = base_url
        self.read: set[str] = set()

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            body = self._staged.fetch(url)
        except DownloadHTTPError:
            return self._held.fetch(url)
        self.read.add(tree_relative(self._base, url))
        return body


def timestamp_versions(root: Path, devices: Sequence[str]) -> dict[str, int]:
    """The ``timestamp.json`` versions a tree holds: ``"catalog"`` and ``"device:<id>"``
    (absent: none or unreadable). Read from files an earlier import or the hub put there."""
    found: dict[str, int] = {}
    paths = {"catalog": _CATALOG_TS} | {
        f"device:{d}": f"tuf/director/devices/{d}/metadata/timestamp.json" for d in devices
    }
    for key, relative in paths.items():
        try:
            doc = orjson.loads(site_tree.resolve(root, relative).read_bytes())
            version = doc["signed"]["version"]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if isinstance(version, int):
            found[key] = version
    return found


def import_bundle(
    bundle: Path,
    dest: Path,
    *,
    site: str,
    verifier: VerifierFactory,
    trust_root: bytes | None = None,
    identities: Sequence[str] = (),
    max_bytes: int = MAX_BUNDLE_BYTES,
    progress: Progress | None = None,
) -> ImportResult:
    """Check ``bundle`` and load it into the site tree at ``dest`` (see the module doc).

    Args:
        bundle: the bundle file.
        dest: a site tree: a mirror's cache or the folder a device updates from (created).
        site: this site's name; a bundle for another is refused.
        verifier: builds the TUF client the tree is verified with.
        trust_root: the site's trust-root bundle, given out of band; None: the one ``dest``
            holds (refused when it holds none). Written to ``dest`` when given.
        identities: age identities that may open an encrypted bundle.
        max_bytes: the largest unpacked size accepted.
        progress: reading progress (bytes of the bundle file).

    Raises:
        InvalidInputError: a bad container (see :func:`read_bundle`).
        TrustError: another site's bundle, no trust root, a verification failure, a replay,
            or an encryption key that does not fit.
        StorageError: the destination could not be written.
    """
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {dest}: {e.strerror or e}") from e
    anchor = trust_root if trust_root is not None else _held_trust_root(dest)
    staging = dest / f"{_STAGING_PREFIX}{secrets.token_hex(6)}"
    try:
        unpacked = read_bundle(
            bundle, staging, identities=identities, max_bytes=max_bytes, progress=progress
        )
        manifest = unpacked.manifest
        if manifest.site != site:
            raise TrustError(
                f"this bundle is for site {manifest.site!r}, not {site!r}: nothing imported"
            )
        serials, read = _verify(unpacked, dest, staging / "verify", anchor, verifier)
        _refuse_replay(dest, unpacked.tree, manifest)
        written = _commit(unpacked, dest, read)
        if trust_root is not None:
            site_tree.write_file(dest, site_tree.TRUST_ROOT, trust_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(unpacked.files[p][0] for p in written)
    log.info(
        "bundle of %s (%s) imported into %s: %d devices, %d files written",
        manifest.site,
        manifest.created_at,
        dest,
        len(serials),
        len(written),
    )
    return ImportResult(
        site=manifest.site,
        created_at=manifest.created_at,
        devices=serials,
        written=tuple(written),
        bytes_written=total,
        unchanged=not written,
        access=manifest.access,
    )


def _held_trust_root(dest: Path) -> bytes:
    try:
        return site_tree.resolve(dest, site_tree.TRUST_ROOT).read_bytes()
    except FileNotFoundError:
        raise TrustError(
            f"{dest} holds no trust root yet: give the site's trust-root.json (--trust-root), "
            "obtained from the hub out of band, not from the bundle"
        ) from None
    except OSError as e:
        raise StorageError(f"cannot read {dest}'s trust root: {e.strerror or e}") from e


def _verify(
    unpacked: UnpackedBundle, dest: Path, work: Path, anchor: bytes, verifier: VerifierFactory
) -> tuple[dict[str, int | None], set[str]]:
    """Verify every device's desired state and artefacts from the staged tree over ``dest``."""
    manifest = unpacked.manifest
    fetcher = _ReadLog(unpacked.tree, dest, manifest.hub_url)
    serials: dict[str, int | None] = {}
    checked: set[str] = set()
    for device in manifest.devices:
        client = verifier(work / "devices" / device, manifest.hub_url, anchor, fetcher)
        try:
            raw = client.fetch_desired_state(device)
            if raw is None:
                serials[device] = None
                continue
            state = DesiredState.from_json(raw)
            serials[device] = state.serial
            for ref in refs_of(state):
                if ref.sha256 in checked:
                    if not client.catalog_lists(ref.model_path, ref.sha256):
                        raise TrustError(f"{ref.model} v{ref.version} is not in the catalog")
                    continue
                scratch = work / "artefacts"
                for path, sha, length in (
                    (ref.manifest_path, ref.manifest_sha256, ref.manifest_length),
                    (ref.model_path, ref.sha256, ref.length),
                ):
                    client.fetch_package_file(path, sha, length, scratch / "f")
                    (scratch / "f").unlink()
                checked.add(ref.sha256)
        except ModelfleetError as e:
            raise TrustError(f"bundle refused: device {device}: {e}") from e
    return serials, fetcher.read


def _refuse_replay(dest: Path, staged: Path, manifest: MediaManifest) -> None:
    held = timestamp_versions(dest, manifest.devices)
    incoming = timestamp_versions(staged, manifest.devices)
    for key, version in held.items():
        new = incoming.get(key)
        if new is not None and new < version:
            raise TrustError(
                f"replay refused: the bundle's {key} timestamp is version {new}, this site "
                f"already has version {version} (made {manifest.created_at}; a newer bundle "
                "is needed)"
            )


def _commit(unpacked: UnpackedBundle, dest: Path, read: set[str]) -> list[str]:
    """Move the files verification read into ``dest``; returns those that changed."""
    order = sorted(read, key=_commit_rank)
    written: list[str] = []
    for relative in order:
        if relative == site_tree.TRUST_ROOT:
            continue  # the site's own trust root stays
        src = site_tree.resolve(unpacked.tree, relative)
        target = site_tree.resolve(dest, relative)
        if _same(target, unpacked.files.get(relative)):
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(src, target)
            fsync_dir(target.parent)
        except OSError as e:
            raise StorageError(f"cannot write {target}: {e.strerror or e}") from e
        written.append(relative)
    return written


def _commit_rank(relative: str) -> tuple[int, str]:
    if immutable_digest(relative) is not None or "/targets/" in relative:
        return 0, relative
    if is_versioned_metadata(relative):
        return 1, relative
    return (3 if relative.endswith("timestamp.json") else 2), relative


def _same(target: Path, expected: tuple[int, str] | None) -> bool:
    """Whether ``target`` already holds the expected bytes (length, then sha256)."""
    if expected is None:
        return False
    with contextlib.suppress(OSError):
        if target.stat().st_size == expected[0]:
            return sha256_file(target)[0] == expected[1]
    return False
