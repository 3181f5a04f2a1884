"""The download's background writer (issue 10): every byte written in order before
``close`` returns, and a write error reaches the caller instead of being lost."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from modelfleet.trust._file_writer import BackgroundWriter


def test_every_chunk_is_written_in_order_and_synced(tmp_path: Path) -> None:
    chunks = [os.urandom(1000 + i) for i in range(64)]
    path = tmp_path / "out"
    with open(path, "wb") as out:
        writer = BackgroundWriter(out, sync_every=4096)
        for c in chunks:
            writer.put(c)
        writer.put(memoryview(b"tail"))  # not bytes: copied before it is queued
        writer.close()
        writer.close()  # twice is harmless
    assert path.read_bytes() == b"".join(chunks) + b"tail"


class _FullDisk(io.BytesIO):
    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, b: object) -> int:  # type: ignore[override]
        data = bytes(b)  # type: ignore[call-overload]
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_a_full_disk_reaches_the_caller_and_nothing_after_it_is_written() -> None:
    out = _FullDisk(room=2500)
    writer = BackgroundWriter(out, sync_every=0)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(100):  # the error surfaces at a later put, or at close
            writer.put(b"x" * 1000)
        writer.close()
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert out.getvalue() == b"x" * 2000
