"""Writing a download to disk on a thread of its own, so the disk's time overlaps hashing.

A verified download hashes every chunk and writes it; both release the GIL (hashlib for
chunks over 2 KiB, file writes and ``fdatasync`` in the kernel), so on a machine with two
cores the write and the periodic flush to disk can run while the next chunks are hashed
(issue 10, "verify and install a 1 GiB package": the disk, not the hash, was the cost).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import IO

__all__ = ["BackgroundWriter"]

#: Chunks in flight between the hasher and the writer (memory: this many chunks at most).
_DEPTH = 8


class BackgroundWriter:
    """Appends chunks to an open file on a writer thread, syncing to disk every
    ``sync_every`` bytes; :meth:`close` waits for every write.

    The caller owns ``out`` (opened for binary writing, positioned where writing starts)
    and must call :meth:`close` before it flushes, syncs, truncates or closes it. A write
    error is raised by the next :meth:`put` or by :meth:`close`; chunks after it are
    dropped.

    Args:
        out: the file.
        sync_every: ``fdatasync`` after this many bytes written (0: never, here).
    """

    def __init__(self, out: IO[bytes], sync_every: int) -> None:
        self._out = out
        self._sync_every = sync_every
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="download-writer", daemon=True)
        self._thread.start()

    def put(self, chunk: bytes) -> None:
        """Queue ``chunk`` (bytes are immutable: the caller may go on at once).

        Raises:
            OSError: an earlier write failed (disk full, I/O error).
        """
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(chunk) if type(chunk) is not bytes else chunk)

    def close(self) -> None:
        """Wait until every queued chunk is written (the file is then flushed, not synced).

        Raises:
            OSError: a write failed.
        """
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        out, every = self._out, self._sync_every
        unsynced = 0
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so the producer never blocks on a full queue
            try:
                out.write(chunk)
                unsynced += len(chunk)
                if every and unsynced >= every:
                    out.flush()
                    os.fdatasync(out.fileno())
                    unsynced = 0
            except BaseException as e:  # handed to the producer; the thread goes on draining
                self._error = e
        try:
            out.flush()
        except BaseException as e:
            if self._error is None:
                self._error = e
