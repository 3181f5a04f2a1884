"""The removable-media bundle, format ``modelfleet.media/v1`` (issue 11, ADR 0034): one file
that carries a site tree (:mod:`modelfleet.delivery.site_tree`) to a site with no route to
the hub. Documented in ``docs/media-bundle.md``.

Layout: a POSIX (pax) tar stream, compressed as one zstd frame with its content checksum,
optionally encrypted to the site's age X25519 key (the file then starts with
``age-encryption.org/v1``). Members, in this order:

* ``manifest.json`` — ``{"format": "modelfleet.media/v1", "site", "hub_url", "created_at",
  "devices": [ids], "access": {device id: [credential sha256...]}}`` (at most 4 MiB);
* ``tree/<site-tree path>`` — every file, regular files only;
* ``index.json`` — ``{"files": [{"path", "length", "sha256"}, ...]}``, written as the
  files went in, so a bundle cut short has none and is refused as truncated.

Nothing here is trusted because it is in the bundle: the reader only checks the container
(order, names, lengths, the index, the size bound) and unpacks into a staging folder; the
TUF client then verifies the tree (:mod:`modelfleet.delivery.bundle_import`). The manifest's
``access`` digests are hashes of random bearer credentials (never the secrets), used only by
an offline site mirror to recognise its devices. A newer major format
(``modelfleet.media/v2``) is refused; unknown manifest fields are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, cast

import orjson
import zstandard

from modelfleet.delivery import site_tree
from modelfleet.errors import ConfigError, InvalidInputError, StorageError, TrustError

__all__ = [
    "FORMAT",
    "MAX_BUNDLE_BYTES",
    "MediaManifest",
    "UnpackedBundle",
    "is_encrypted",
    "read_bundle",
    "write_bundle",
]

FORMAT: Final = "modelfleet.media/v1"
#: Largest unpacked tree read by default (a zstd bomb or an oversized bundle stops here).
MAX_BUNDLE_BYTES: Final = 64 << 30
_MAX_FILES: Final = 1_000_000
_MAX_MANIFEST: Final = 4 << 20
_AGE_MAGIC: Final = b"age-encryption.org/v1"
_CHUNK: Final = 1 << 20
_MANIFEST, _INDEX, _TREE = "manifest.json", "index.json", "tree/"

#: ``(bytes done, bytes in all)`` as a bundle is written or read.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MediaManifest:
    """What a bundle says about itself (unsigned: the TUF metadata inside is what counts).

    Attributes:
        site: the site the bundle was made for.
        hub_url: the hub base URL the devices' trust clients were given (the tree's URLs).
        created_at: ISO 8601 UTC time of the export.
        devices: the site's device ids, sorted.
        access: device id -> SHA-256 digests of its usable credentials.
        extra: unknown fields, kept.
    """

    site: str
    hub_url: str
    created_at: str
    devices: tuple[str, ...]
    access: Mapping[str, Sequence[str]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {
            **self.extra,
            "format": FORMAT,
            "site": self.site,
            "hub_url": self.hub_url,
            "created_at": self.created_at,
            "devices": list(self.devices),
            "access": {d: list(v) for d, v in self.access.items()},
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> MediaManifest:
        """Parse and check a manifest.

        Raises:
            InvalidInputError: not JSON, another format or major version, a field missing
                or of the wrong type.
        """
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise InvalidInputError(f"the bundle's manifest is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise InvalidInputError("the bundle's manifest is not a JSON object")
        fmt = doc.get("format")
        if fmt != FORMAT:
            raise InvalidInputError(
                f"not a {FORMAT} bundle (format {fmt!r}); this modelfleet reads {FORMAT} only"
            )
        strings = {k: doc.get(k) for k in ("site", "hub_url", "created_at")}
        if not all(isinstance(v, str) and v for v in strings.values()):
            raise InvalidInputError("the bundle's manifest lacks site, hub_url or created_at")
        devices, access = doc.get("devices"), doc.get("access", {})
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise InvalidInputError("the bundle's manifest 'devices' is not a list of ids")
        if not isinstance(access, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in access.values()
        ):
            raise InvalidInputError("the bundle's manifest 'access' is malformed")
        known = {"format", "site", "hub_url", "created_at", "devices", "access"}
        return cls(
            site=str(strings["site"]),
            hub_url=str(strings["hub_url"]),
            created_at=str(strings["created_at"]),
            devices=tuple(devices),
            access={str(k): tuple(v) for k, v in access.items()},
            extra={k: v for k, v in doc.items() if k not in known},
        )


@dataclass(frozen=True)
class UnpackedBundle:
    """A bundle read into a staging folder, its container checked (not its trust).

    Attributes:
        manifest: the manifest.
        tree: the staging site tree (under the folder given to :func:`read_bundle`).
        files: tree path -> (length, sha256) of every file, as the index lists them.
    """

    manifest: MediaManifest
    tree: Path
    files: Mapping[str, tuple[int, str]]

    @property
    def total_bytes(self) -> int:
        return sum(n for n, _ in self.files.values())


def is_encrypted(path: Path) -> bool:
    """Whether the file at ``path`` is age-encrypted (by its header)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_AGE_MAGIC)) == _AGE_MAGIC
    except OSError:
        return False


# -- writing --------------------------------------------------------------------------------


def write_bundle(
    tree: Path,
    manifest: MediaManifest,
    out: Path,
    *,
    recipients: Sequence[str] = (),
    level: int = 3,
    threads: int = 0,
    progress: Progress | None = None,
) -> dict[str, tuple[int, str]]:
    """Write every regular file under ``tree`` (a site tree) and ``manifest`` to ``out``.

    ``out`` appears only complete (written beside it, fsynced, renamed). With
    ``recipients`` (age ``age1...`` X25519 public keys) the file is encrypted to them.

    Returns:
        tree path -> (length, sha256) of what went in (the index).

    Raises:
        InvalidInputError: a file in ``tree`` that is not a site-tree path, or a bad
            recipient. StorageError: ``out`` could not be written (full disk, ...).
    """
    files = _tree_files(Path(tree))
    total = sum(size for _, size in files)
    parked = _encryptor(recipients)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    index: dict[str, tuple[int, str]] = {}
    try:
        with open(tmp, "wb") as raw:
            cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=threads)
            with (
                cctx.stream_writer(raw, closefd=False) as zw,
                tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                _add_bytes(tar, _MANIFEST, manifest.to_json())
                done = 0
                for relative, size in files:
                    with open(site_tree.resolve(tree, relative), "rb") as f:
                        hashing = _HashingReader(f)
                        info = tarfile.TarInfo(_TREE + relative)
                        info.size, info.mode = size, 0o644
                        tar.addfile(info, hashing)
                    index[relative] = (size, hashing.sha256.hexdigest())
                    done += size
                    if progress is not None:
                        progress(done, total)
                listing = [{"path": p, "length": n, "sha256": h} for p, (n, h) in index.items()]
                _add_bytes(tar, _INDEX, orjson.dumps({"files": listing}))
            raw.flush()
            os.fsync(raw.fileno())
        if parked is not None:
            parked(tmp)
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write the bundle {out}: {e.strerror or e}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return index


def _tree_files(tree: Path) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            relative = path.relative_to(tree).as_posix()
            if name.startswith("."):
                continue
            site_tree.tree_path(relative)  # InvalidInputError for anything else
            st = path.lstat()
            if path.is_symlink() or not path.is_file():
                raise InvalidInputError(f"{relative}: not a regular file")
            found.append((relative, st.st_size))
    return found


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


class _HashingReader(io.RawIOBase):
    """A file read through sha256 (what tarfile copies is what the index says)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        return data


def _encryptor(recipients: Sequence[str]) -> Callable[[Path], None] | None:
    """A function encrypting a file in place to ``recipients`` (None: no encryption).

    Raises:
        InvalidInputError: a recipient that is not an age X25519 public key.
        ConfigError: pyrage is not installed.
    """
    if not recipients:
        return None
    pyrage = _pyrage()
    try:
        keys = [pyrage.x25519.Recipient.from_str(r.strip()) for r in recipients]
    except pyrage.RecipientError as e:
        raise InvalidInputError(f"not an age public key (age1...): {e}") from e

    def encrypt(path: Path) -> None:
        sealed = path.with_name(path.name + ".age")
        try:
            pyrage.encrypt_file(str(path), str(sealed), keys)
            os.replace(sealed, path)
        finally:
            with contextlib.suppress(OSError):
                sealed.unlink()

    return encrypt


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError as e:  # pragma: no cover - the media extra is installed in CI
        raise ConfigError("encrypted bundles need pyrage: pip install 'modelfleet[media]'") from e
    return pyrage


# -- reading --------------------------------------------------------------------------------


def read_bundle(
    path: Path,
    staging: Path,
    *,
    identities: Sequence[str] = (),
    max_bytes: int = MAX_BUNDLE_BYTES,
    progress: Progress | None = None,
) -> UnpackedBundle:
    """Unpack the bundle at ``path`` into ``staging/tree`` after checking its container.

    ``staging`` must be empty or absent; on failure what was unpacked stays there for the
    caller to remove. Nothing is read outside the bundle's own names; members are never
    extracted by tarfile itself.

    Raises:
        InvalidInputError: truncated, corrupted (zstd checksum, a length or hash unlike the
            index), a member out of order, a duplicate, a link or any non-file member, an
            odd name, more than ``max_bytes`` unpacked, not a bundle at all.
        TrustError: encrypted, and none of ``identities`` opens it (another site's key),
            or no identity given.
        StorageError: staging could not be written (full disk, ...).
    """
    path, staging = Path(path), Path(staging)
    try:
        staging.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise InvalidInputError(f"no bundle file {path}") from e
    except OSError as e:
        raise StorageError(f"cannot read {path} or make {staging}: {e.strerror or e}") from e
    source = path
    if is_encrypted(path):
        source = _decrypt(path, staging, identities)
        size = source.stat().st_size
    tree = staging / "tree"
    try:
        with open(source, "rb") as raw:
            counted = _CountingReader(raw, size, progress)
            dctx = zstandard.ZstdDecompressor()
            with (
                dctx.stream_reader(
                    cast(IO[bytes], counted), read_size=_CHUNK, read_across_frames=True
                ) as zr,
            ):
                with tarfile.open(fileobj=zr, mode="r|") as tar:
                    unpacked = _unpack(tar, tree, max_bytes)
                while rest := zr.read(_CHUNK):  # tar's end padding, and nothing else
                    if rest.strip(b"\0"):
                        raise InvalidInputError(f"{path}: corrupted bundle (data after its end)")
                if raw.read(1):
                    raise InvalidInputError(f"{path}: corrupted bundle (bytes after its end)")
                return unpacked
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
        raise InvalidInputError(f"{path}: truncated or corrupted bundle ({e})") from e
    except OSError as e:
        raise StorageError(f"unpacking {path}: {e.strerror or e}") from e
    finally:
        if source != path:
            with contextlib.suppress(OSError):
                source.unlink()


def _decrypt(path: Path, staging: Path, identities: Sequence[str]) -> Path:
    if not identities:
        raise TrustError(f"{path} is encrypted: give the site's age identity (--identity)")
    pyrage = _pyrage()
    try:
        keys = [pyrage.x25519.Identity.from_str(i.strip()) for i in identities]
    except pyrage.IdentityError as e:
        raise InvalidInputError(f"not an age identity (AGE-SECRET-KEY-...): {e}") from e
    fd, name = tempfile.mkstemp(prefix=".plain-", dir=staging)
    os.close(fd)
    try:
        pyrage.decrypt_file(str(path), name, keys)
    except pyrage.DecryptError as e:
        os.unlink(name)
        raise TrustError(
            f"{path} cannot be decrypted with this site's key (encrypted to another site, "
            f"or damaged): {e}"
        ) from e
    return Path(name)


class _CountingReader(io.RawIOBase):
    def __init__(self, f: IO[bytes], total: int, progress: Progress | None) -> None:
        self._f, self._total, self._progress, self.done = f, total, progress, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.done += len(data)
        if self._progress is not None and data:
            self._progress(self.done, self._total)
        return data


def _unpack(tar: tarfile.TarFile, tree: Path, max_bytes: int) -> UnpackedBundle:
    manifest: MediaManifest | None = None
    seen: dict[str, tuple[int, str]] = {}
    index: dict[str, tuple[int, str]] | None = None
    total = 0
    for member in _members(tar):
        if index is not None:
            raise InvalidInputError(f"member {member.name!r} after the index")
        if not member.isreg():
            raise InvalidInputError(f"member {member.name!r} is not a regular file")
        if member.name == _MANIFEST and manifest is None and not seen:
            manifest = MediaManifest.from_json(_small(tar, member))
        elif manifest is None:
            raise InvalidInputError("the bundle does not start with its manifest")
        elif member.name == _INDEX:
            index = _parse_index(_small(tar, member))
        elif member.name.startswith(_TREE):
            relative = member.name[len(_TREE) :]
            site_tree.tree_path(relative)  # InvalidInputError for an odd name
            if relative in seen:
                raise InvalidInputError(f"{relative} appears twice in the bundle")
            if len(seen) >= _MAX_FILES:
                raise InvalidInputError(f"more than {_MAX_FILES} files in the bundle")
            total += member.size
            if total > max_bytes:
                raise InvalidInputError(f"the bundle unpacks to more than {max_bytes} bytes")
            seen[relative] = _extract(tar, member, site_tree.resolve(tree, relative))
        else:
            raise InvalidInputError(f"unexpected member {member.name!r} in the bundle")
    if manifest is None:
        raise InvalidInputError("empty bundle: no manifest")
    if index is None:
        raise InvalidInputError("truncated bundle: its index is missing")
    if index != seen:
        missing = sorted(set(index) - set(seen))
        wrong = sorted(p for p in set(index) & set(seen) if index[p] != seen[p])
        raise InvalidInputError(
            "corrupted bundle: the files differ from its index"
            + (f"; missing {missing[:3]}" if missing else "")
            + (f"; changed {wrong[:3]}" if wrong else "")
        )
    return UnpackedBundle(manifest, tree, seen)


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        yield member


def _small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > _MAX_MANIFEST:
        raise InvalidInputError(f"{member.name} is larger than {_MAX_MANIFEST} bytes")
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    data = f.read()
    if len(data) != member.size:
        raise InvalidInputError(f"truncated bundle: {member.name} is cut short")
    return data


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> tuple[int, str]:
    f = tar.extractfile(member)
    assert f is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, n = hashlib.sha256(), 0
    with open(dest, "xb") as out:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
    if n != member.size:
        raise InvalidInputError(f"truncated bundle: {member.name} is cut short")
    return n, h.hexdigest()


def _parse_index(data: bytes) -> dict[str, tuple[int, str]]:
    try:
        doc = orjson.loads(data)
        return {str(e["path"]): (int(e["length"]), str(e["sha256"])) for e in doc["files"]}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InvalidInputError(f"the bundle's index is malformed: {e}") from e
