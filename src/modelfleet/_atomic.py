"""Crash-safe file writes: temp file in the same folder, fsync, ``os.replace``.

An edge box can lose power at any instant; a reader sees either the old or the new
content, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from modelfleet.errors import StorageError

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir"]


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table so a rename in it survives power loss."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically.

    Raises:
        StorageError: the folder is not writable or the disk is full; the old
            content of ``path`` is then left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from e
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def create_secret_once(path: Path, data: bytes, what: str) -> None:
    """Write ``data`` to ``path`` with mode 0600 unless the file exists, atomically: a
    concurrent creator's file wins and is kept (written to a temporary file, then hard-linked
    into place, so ``path`` never holds a partial secret).

    Raises:
        ConfigError: the folder or file cannot be created (``what`` names it).
    """
    from modelfleet.errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ConfigError(f"cannot create the {what} in {path.parent}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):  # another process was first: keep its file
            os.link(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot create the {what} {path}: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)
