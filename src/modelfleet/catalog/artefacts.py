"""Content-addressed artefact store: blobs named by their SHA-256 digest.

The embedded default keeps files on disk under ``ROOT/sha256/ab/abcdef…``; an OCI registry
can stand behind the same interface at scale.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from modelfleet._atomic import fsync_dir
from modelfleet.errors import InvalidInputError, NotFoundError, StorageError

__all__ = ["ArtefactStore", "FileArtefactStore", "is_sha256"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(digest: str) -> bool:
    """True if ``digest`` is 64 lowercase hex characters."""
    return bool(_HEX64.match(digest))


class ArtefactStore(Protocol):
    """Where packaged artefacts live on the hub."""

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256 hex digest (idempotent)."""
        ...

    def put_stream(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int]:
        """Store a stream of chunks; return ``(digest, length)``."""
        ...

    def path(self, digest: str) -> Path:
        """Return the local file of a stored blob.

        Raises:
            NotFoundError: nothing is stored under ``digest``.
        """
        ...

    def read(self, digest: str) -> bytes:
        """Return the bytes of a stored blob (see :meth:`path`)."""
        ...

    def exists(self, digest: str) -> bool:
        """True if a blob with this digest is stored."""
        ...

    def blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored blob as ``(digest, modified at, POSIX seconds)``, in no order."""
        ...

    def delete(self, digest: str) -> bool:
        """Remove a blob; True if it was there.

        Raises:
            StorageError: it is there but cannot be removed.
        """
        ...


class FileArtefactStore:
    """Blobs as files under ``root/sha256/<2 hex>/<digest>``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _file(self, digest: str) -> Path:
        if not is_sha256(digest):
            raise InvalidInputError(f"not a sha256 digest: {digest!r}")
        return self.root / "sha256" / digest[:2] / digest

    def put_bytes(self, data: bytes) -> str:
        digest, _ = self.put_stream([data])
        return digest

    def put_stream(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int]:
        staging = self.root / "staging"
        try:
            staging.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=staging)
        except OSError as e:
            raise StorageError(f"artefact store not writable: {e.strerror or e}") from e
        h = hashlib.sha256()
        length = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    length += len(chunk)
                    if max_bytes is not None and length > max_bytes:
                        raise InvalidInputError(f"upload exceeds the limit of {max_bytes} bytes")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = h.hexdigest()
            final = self._file(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError as e:
            _unlink_quietly(tmp)
            raise StorageError(f"cannot store artefact: {e.strerror or e}") from e
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return digest, length

    def path(self, digest: str) -> Path:
        f = self._file(digest)
        if not f.is_file():
            raise NotFoundError(f"no artefact {digest}")
        return f

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def exists(self, digest: str) -> bool:
        return is_sha256(digest) and self._file(digest).is_file()

    def blobs(self) -> Iterator[tuple[str, float]]:
        for f in (self.root / "sha256").glob("??/*"):
            if is_sha256(f.name) and f.parent.name == f.name[:2]:
                with contextlib.suppress(FileNotFoundError):
                    yield f.name, f.stat().st_mtime

    def delete(self, digest: str) -> bool:
        f = self._file(digest)
        try:
            f.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StorageError(f"cannot delete artefact {digest}: {e.strerror or e}") from e
        fsync_dir(f.parent)
        return True

    def stale_staging(self, older_than: float) -> list[Path]:
        """Temporary files of uploads that never finished, modified before ``older_than``
        (POSIX seconds)."""
        staging = self.root / "staging"
        out = []
        for f in staging.glob("*") if staging.is_dir() else []:
            with contextlib.suppress(FileNotFoundError):
                if f.is_file() and f.stat().st_mtime < older_than:
                    out.append(f)
        return out


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
