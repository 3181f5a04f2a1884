"""The site mirror's cache: a site tree on disk, plus what the mirror remembers about tokens.

The cache IS a site tree (:mod:`modelfleet.delivery.site_tree`): a file's path is the hub
URL path that served it. Nothing in it is trusted: devices verify everything with TUF. The
one check the mirror makes itself keeps it from poisoning its own cache: a target under a
consistent-snapshot path (``<sha256 hex>.<name>``) is kept and served only while its bytes
hash to that prefix; a mismatch (a torn write, a disk error, someone editing the file) is
deleted and fetched again.

Classification of tree paths (pure):

* **immutable targets** — ``tuf/<repo>/targets/.../<64 hex>.<name>``: fetched once, kept;
* **versioned metadata** — ``tuf/.../metadata/<N>.<role>.json``: a version's bytes never
  change under consistent snapshots, so a cached copy is served without asking the hub;
* **mutable** — ``timestamp.json``, ``root.json``, ``trust-root.json`` and anything else:
  refreshed from the hub after a short TTL, served from the cache when the hub is away.

Scopes: what a token must have been seen to read. ``tuf/director/devices/<id>/...`` and
``tuf/director/targets/devices/<id>/...`` are device ``<id>``'s alone; the rest is shared
by every token the hub accepts (:class:`TokenMemo`).

Mirror state that is not hub content lives in ``<cache>/.mirror/`` (never a tree path).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from modelfleet._atomic import atomic_write_bytes, fsync_dir
from modelfleet.delivery import site_tree
from modelfleet.errors import ArtefactVerificationError, StorageError

__all__ = [
    "ANY_DEVICE",
    "SHARED",
    "STATE_DIR",
    "MirrorCache",
    "TokenMemo",
    "immutable_digest",
    "is_versioned_metadata",
    "scope_of",
    "token_key",
]

log = logging.getLogger("modelfleet.mirror")

STATE_DIR = ".mirror"
#: The scope of shared content (catalog, shared director metadata, trust root).
SHARED = "*"
#: A token of a non-device role (admin, viewer...): reads every device's scope.
ANY_DEVICE = "device:*"

_TARGET_NAME = re.compile(r"^([0-9a-f]{64})\.[^/]+$")
_VERSIONED = re.compile(r"^[1-9][0-9]{0,9}\.[A-Za-z0-9_.+-]+\.json$")
_CHUNK = 1 << 20


def immutable_digest(relative: str) -> str | None:
    """The sha256 a consistent-snapshot target path names, or None for any other path."""
    parts = relative.split("/")
    if len(parts) < 4 or parts[0] != "tuf" or parts[2] != "targets":
        return None
    m = _TARGET_NAME.match(parts[-1])
    return m.group(1) if m else None


def is_versioned_metadata(relative: str) -> bool:
    """``tuf/.../metadata/<N>.<role>.json``: a version whose bytes never change."""
    parts = relative.split("/")
    return len(parts) >= 4 and parts[-2] == "metadata" and bool(_VERSIONED.match(parts[-1]))


def scope_of(relative: str) -> str:
    """``device:<id>`` for one device's own files, :data:`SHARED` for the rest."""
    parts = relative.split("/")
    if parts[:3] == ["tuf", "director", "devices"] and len(parts) > 3:
        return f"device:{parts[3]}"
    if parts[:4] == ["tuf", "director", "targets", "devices"] and len(parts) > 4:
        return f"device:{parts[4]}"
    return SHARED


def token_key(token: str) -> str:
    """What the mirror keeps of a token: its sha256 (the token itself is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Verified:
    size: int
    mtime_ns: int
    inode: int


class MirrorCache:
    """The site tree under ``root`` with the mirror's checks on what it keeps.

    Thread-safe for its own bookkeeping; files are replaced atomically, so a reader sees an
    old or a new file, never a torn one.
    """

    def __init__(self, root: Path) -> None:
        """Use (and create) ``root``.

        Raises:
            StorageError: ``root`` cannot be created.
        """
        self.root = Path(root)
        try:
            (self.root / STATE_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the mirror cache {root}: {e.strerror or e}") from e
        self._verified: dict[str, _Verified] = {}
        self._lock = threading.Lock()

    @property
    def state_dir(self) -> Path:
        """``<root>/.mirror``: the mirror's own files (token memo, telemetry outbox)."""
        return self.root / STATE_DIR

    def path(self, relative: str) -> Path:
        """The file for tree path ``relative`` (InvalidInputError for a bad path)."""
        return site_tree.resolve(self.root, relative)

    def read(self, relative: str) -> bytes | None:
        """The cached bytes of a metadata file, or None when absent or unreadable."""
        try:
            return self.path(relative).read_bytes()
        except OSError:
            return None

    def store(self, relative: str, data: bytes) -> None:
        """Keep ``data`` for ``relative`` (atomically).

        Raises:
            ArtefactVerificationError: a consistent-snapshot target whose bytes do not hash
                to its name (nothing is written).
            StorageError: the file could not be written.
        """
        digest = immutable_digest(relative)
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise ArtefactVerificationError(f"{relative}: bytes do not match the sha256 it names")
        site_tree.write_file(self.root, relative, data)

    def verified_target(self, relative: str) -> Path | None:
        """The cached file of an immutable target if its bytes still hash to its name.

        A file is hashed once and then trusted while its size, mtime and inode stay the
        same; a mismatch is deleted (logged) and None returned, so it is fetched again.
        """
        digest = immutable_digest(relative)
        path = self.path(relative)
        try:
            st = path.stat()
        except OSError:
            return None
        seen = _Verified(st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            if self._verified.get(relative) == seen:
                return path
        if digest is not None and _sha256_file(path) != digest:
            log.warning("cached %s does not hash to its name: deleted, fetched again", relative)
            with contextlib.suppress(OSError):
                path.unlink()
            with self._lock:
                self._verified.pop(relative, None)
            return None
        with self._lock:
            self._verified[relative] = seen
        return path

    def partial_path(self, relative: str) -> Path:
        """Where a download of ``relative`` in progress is kept (resumed after a cut)."""
        path = self.path(relative)
        return path.with_name(f".{path.name}.partial")

    def commit_partial(self, relative: str) -> Path:
        """Move a finished download into place after checking its hash.

        Raises:
            ArtefactVerificationError: the bytes do not hash to the name (the partial file
                is deleted, so the next try starts over).
            StorageError: the move failed.
        """
        digest = immutable_digest(relative)
        tmp = self.partial_path(relative)
        if digest is not None and _sha256_file(tmp) != digest:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ArtefactVerificationError(
                f"{relative}: the hub's bytes do not match the sha256 the path names"
            )
        dest = self.path(relative)
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except OSError as e:
            raise StorageError(f"cannot write {dest}: {e.strerror or e}") from e
        fsync_dir(dest.parent)
        st = dest.stat()
        with self._lock:
            self._verified[relative] = _Verified(st.st_size, st.st_mtime_ns, st.st_ino)
        return dest


def _sha256_file(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


class TokenMemo:
    """The scopes the hub has accepted each token for, keyed by the token's sha256.

    Learned from the hub's answers to requests the mirror forwarded (a 2xx for a path of
    scope S adds S; a 401 forgets the token; a 403 forgets S), persisted atomically to
    ``path`` so a restarted mirror still serves its cache while the hub is away. It only
    decides who the mirror serves from its cache; the hub stays the authority whenever it
    can be asked.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._scopes: dict[str, set[str]] = {}
        self._reload_if_changed()

    def _load(self) -> dict[str, set[str]] | None:
        try:
            raw = orjson.loads(self._path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as e:
            log.warning("token memo %s unreadable (kept as it was): %s", self._path, e)
            return None
        if not isinstance(raw, dict):
            return None
        return {str(k): {str(s) for s in v} for k, v in raw.items() if isinstance(v, list)}

    def allows(self, token: str, scope: str) -> bool:
        """Whether the hub has accepted ``token`` for ``scope`` (a device's, or shared)."""
        self._reload_if_changed()
        with self._lock:
            scopes = self._scopes.get(token_key(token), set())
        if scope in scopes:
            return True
        return scope.startswith("device:") and ANY_DEVICE in scopes

    def known(self, token: str) -> bool:
        """Whether the hub has accepted ``token`` for anything."""
        self._reload_if_changed()
        with self._lock:
            return bool(self._scopes.get(token_key(token)))

    def device_of(self, token: str) -> str | None:
        """The one device ``token`` was accepted for, or None (none, or several)."""
        self._reload_if_changed()
        with self._lock:
            scopes = self._scopes.get(token_key(token), set())
        devices = [
            s[len("device:") :] for s in scopes if s.startswith("device:") and s != ANY_DEVICE
        ]
        return devices[0] if len(devices) == 1 else None

    def replace_devices(self, access: Mapping[str, Sequence[str]]) -> None:
        """What a removable-media bundle says (issue 11): for each device in ``access``,
        exactly these credential digests (sha256 hex) read its scope; digests it no longer
        lists (revoked, rotated out) lose that device's scope. Other devices are untouched.
        """
        scopes = {f"device:{d}" for d in access}
        with self._lock:
            for key in list(self._scopes):
                held = self._scopes[key]
                held -= scopes
                if held <= {SHARED}:
                    del self._scopes[key]
            for device, digests in access.items():
                for digest in digests:
                    self._scopes.setdefault(digest, set()).update({SHARED, f"device:{device}"})
        self._save()

    def _reload_if_changed(self) -> None:
        """Pick up a memo another process rewrote (``bundle import`` into a running mirror)."""
        try:
            st = self._path.stat()
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        loaded = self._load()
        if loaded is not None:
            with self._lock:
                self._scopes = loaded

    def learn(self, token: str, *scopes: str) -> None:
        """The hub accepted ``token`` for ``scopes`` (and so for the shared scope too)."""
        key = token_key(token)
        with self._lock:
            held = self._scopes.setdefault(key, set())
            new = {SHARED, *scopes} - held
            if not new:
                return
            held |= new
        self._save()

    def forget(self, token: str, scope: str | None = None) -> None:
        """The hub refused ``token`` (401: all of it) or refused it ``scope`` (403)."""
        key = token_key(token)
        with self._lock:
            if key not in self._scopes:
                return
            if scope is None:
                del self._scopes[key]
            else:
                self._scopes[key].discard(scope)
        self._save()

    def _save(self) -> None:
        with self._lock:
            doc = {k: sorted(v) for k, v in self._scopes.items()}
        try:
            atomic_write_bytes(self._path, orjson.dumps(doc), mode=0o600)
            st = self._path.stat()
            self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except (StorageError, OSError) as e:
            log.warning("token memo not saved: %s", e)
