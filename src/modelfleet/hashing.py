"""SHA-256 at OpenSSL speed (hashlib, 1 MiB unbuffered reads)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["CHUNK", "sha256_bytes", "sha256_file"]

CHUNK = 1 << 20


def sha256_file(path: Path) -> tuple[str, int]:
    """Return ``(hex digest, length in bytes)`` of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    length = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            length += n
    return h.hexdigest(), length


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()
