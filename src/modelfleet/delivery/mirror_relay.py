"""The site mirror's telemetry outbox: batches taken from devices, kept until the hub has them.

A device's telemetry batch (wire format v1, :mod:`modelfleet.telemetry.wire`) is checked as
the hub would check it, then appended here in one SQLite transaction (WAL,
``synchronous=FULL``: the device deletes the records once the mirror answers, so the
mirror's copy must survive a power cut). Only then does the device get its accepted answer,
shaped as the hub's (``TelemetryIngestOut``: ``stored``, ``duplicates``, ``acked_through``,
``status``). The mirror's drain loop sends each batch upstream as it came, with the token it
came with, and deletes it when the hub acknowledged it; the hub deduplicates on
``(device_id, buffer_id, seq)``, so a batch sent twice (a crash between the hub's answer and
the delete) is stored once.

The device's token is kept with its batch (file mode 0600 inside the cache's ``.mirror``
folder) and deleted with it: the hub stores a device's telemetry only under that device's
own token (or an admin's).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from modelfleet.errors import InvalidInputError, StorageError
from modelfleet.telemetry.wire import parse_batch

__all__ = ["OutboxItem", "TelemetryOutbox", "accepted_answer"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    token TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def accepted_answer(body: bytes, device_id: str) -> dict[str, Any]:
    """Check a batch as the hub does; the answer a device gets once the mirror holds it.

    Raises:
        InvalidInputError: not JSON, or not a valid batch of ``device_id`` (the hub would
            refuse it too: nothing is kept).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(f"the telemetry batch is not JSON: {e}") from e
    batch = parse_batch(doc, device_id)
    return {
        "stored": len(batch.records),
        "duplicates": 0,
        "acked_through": max(int(r["seq"]) for r in batch.records),
        "status": "recorded",
        "relay": "buffered",
    }


@dataclass(frozen=True)
class OutboxItem:
    """One buffered batch."""

    id: int
    device_id: str
    token: str
    body: bytes
    attempts: int


class TelemetryOutbox:
    """A durable FIFO of telemetry batches (SQLite, WAL), bounded in bytes.

    Thread-safe: one connection behind a lock.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (or create) the outbox at ``path``.

        Raises:
            StorageError: the file cannot be opened or created.
        """
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the telemetry outbox {self.path}: {e}") from e

    def add(self, device_id: str, token: str, body: bytes) -> int:
        """Append one batch durably; returns its id.

        Raises:
            StorageError: the outbox is full (``max_bytes``) or cannot be written: the
                device keeps the batch and sends it again later.
        """
        with self._lock:
            try:
                (held,) = self._db.execute(
                    "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM outbox"
                ).fetchone()
                if held + len(body) > self.max_bytes:
                    raise StorageError(
                        f"the mirror's telemetry outbox is full ({held} of {self.max_bytes} bytes)"
                    )
                cur = self._db.execute(
                    "INSERT INTO outbox (device_id, token, body, received_at) VALUES (?, ?, ?, ?)",
                    (device_id, token, body, self._clock()),
                )
                return int(cur.lastrowid or 0)
            except sqlite3.Error as e:
                raise StorageError(f"cannot write the telemetry outbox: {e}") from e

    def pending(self, limit: int = 50) -> list[OutboxItem]:
        """The oldest ``limit`` batches not yet acknowledged."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device_id, token, body, attempts FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxItem(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    def done(self, item_id: int, outcome: str = "forwarded") -> None:
        """Delete a batch the hub acknowledged (``outcome`` ``forwarded``) or refused for
        good (``outcome`` ``dropped``); counted under ``outcome``."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1",
                (outcome,),
            )
            self._db.execute("COMMIT")

    def failed(self, item_id: int) -> None:
        """One more failed try of a batch (kept)."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (item_id,))

    def stats(self) -> dict[str, int]:
        """``pending``, ``pending_bytes``, ``forwarded``, ``dropped``."""
        with self._lock:
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM outbox"
            ).fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {
            "pending": int(n),
            "pending_bytes": int(size),
            "forwarded": int(counters.get("forwarded", 0)),
            "dropped": int(counters.get("dropped", 0)),
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
