"""The device's write-ahead telemetry buffer: SQLite in WAL mode, bounded in bytes.

Every window, event and update report is appended here before anything is sent, and
deleted only when the hub has acknowledged it (:mod:`modelfleet.telemetry.forwarder`).

* **Durable sequence numbers.** :meth:`TelemetryBuffer.append` gives each record the next
  ``seq`` of this buffer (``AUTOINCREMENT``: SQLite keeps the highest ever used in
  ``sqlite_sequence``, so a seq is never reused after an eviction, an ack or a restart).
  ``buffer_id`` is random, made when the file is created: a wiped disk gives a new buffer
  whose restarted sequence the hub never mistakes for a replay.
* **One transaction per append**, ``synchronous=NORMAL`` in WAL mode: a commit writes the
  WAL without an fsync; fsyncs happen at checkpoints (every ~1000 pages), so the write rate
  stays far below a consumer SSD's budget (``docs/telemetry-format.md`` gives the bytes per
  day). A process crash (kill -9) loses nothing committed; a power cut may lose the last
  un-checkpointed commits, never corrupt the file.
* **Bounded in bytes**: records' encoded sizes (plus a fixed per-row overhead) stay below
  ``max_bytes``; an append that would exceed it evicts the oldest records first and counts
  them in ``evicted_total`` (persisted, and reported to the hub with every batch).
* **Disk full** (``SQLITE_FULL``) or any other SQLite failure: the transaction is rolled
  back and :class:`~modelfleet.errors.StorageError` raised; nothing half-written remains.

Thread-safe: one connection behind a lock (the closer appends, the forwarder reads and acks,
status reads stats).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from modelfleet.errors import ConfigError, StorageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_BUFFER_BYTES",
    "MIN_BUFFER_BYTES",
    "ROW_OVERHEAD",
    "BufferStats",
    "BufferedRecord",
    "PendingPage",
    "TelemetryBuffer",
    "read_stats",
]

#: Default bound: 72 h of 60 s windows for 8 (model, version, role) series at ~1.4 KB a
#: window (the size of a busy window with full histograms), about 48 MB, rounded up.
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
MIN_BUFFER_BYTES: Final = 64 * 1024
MAX_BUFFER_BYTES: Final = 16 * 1024 * 1024 * 1024
#: Bytes counted per row on top of its encoded record (SQLite's row and index overhead).
ROW_OVERHEAD: Final = 16
#: The WAL is truncated back to this after a checkpoint.
_WAL_LIMIT: Final = 4 * 1024 * 1024

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, size INTEGER NOT NULL, body BLOB NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class BufferedRecord:
    """One waiting record as stored: its seq and its JSON bytes (sent as they are).

    Attributes:
        seq: the record's sequence number.
        body: the encoded record (``{"seq": n, ...}``).
    """

    seq: int
    body: bytes

    def record(self) -> dict[str, Any]:
        """The record decoded."""
        data: dict[str, Any] = orjson.loads(self.body)
        return data


@dataclass(frozen=True, slots=True)
class PendingPage:
    """The oldest waiting records as one JSON array, read in one SQLite step.

    Attributes:
        seqs: their seqs, ascending.
        records_json: ``[record, record, ...]`` as stored (order not guaranteed to follow
            ``seqs``; a batch's records may come in any order).
    """

    seqs: list[int]
    records_json: bytes


#: One step, one row: a query that steps once per record releases and takes back the GIL per
#: record, and each take-back waits for the busy event loop (a 1 ms read became 70 ms while
#: serving, and slowed serving): the page is aggregated inside SQLite instead.
_PAGE_SQL: Final = (
    "WITH page AS (SELECT seq, body, SUM(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING)"
    " AS run FROM (SELECT seq, size, body FROM records ORDER BY seq LIMIT ?))"
    " SELECT COUNT(*), group_concat(seq), '[' || group_concat(CAST(body AS TEXT), ',') || ']'"
    " FROM page WHERE run <= ? OR run = (SELECT MIN(run) FROM page)"
)


@dataclass(frozen=True)
class BufferStats:
    """What the buffer holds and has done.

    Attributes:
        buffer_id: the buffer's random id.
        records: records waiting to be acknowledged.
        bytes: their accounted size (encoded records + per-row overhead).
        appended_total: records ever appended (the highest seq given).
        evicted_total: records evicted unsent because the buffer was full.
        acked_total: records deleted because the hub acknowledged them.
        file_bytes: size of the database file plus its WAL on disk.
        max_bytes: the bound.
    """

    buffer_id: str
    records: int
    bytes: int
    appended_total: int
    evicted_total: int
    acked_total: int
    file_bytes: int
    max_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "buffer_id": self.buffer_id,
            "records": self.records,
            "bytes": self.bytes,
            "appended_total": self.appended_total,
            "evicted_total": self.evicted_total,
            "acked_total": self.acked_total,
            "file_bytes": self.file_bytes,
            "max_bytes": self.max_bytes,
        }


def read_stats(path: Path | str) -> dict[str, Any] | None:
    """What a buffer file holds, read-only (``agent status`` of a stopped agent).

    Returns:
        The :class:`BufferStats` fields but ``max_bytes``, or None when there is no file or
        it cannot be read.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return {
        "buffer_id": str(meta.get("buffer_id", "")),
        "records": int(count),
        "bytes": int(size) + ROW_OVERHEAD * int(count),
        "appended_total": int(seq[0]) if seq else 0,
        "evicted_total": int(meta.get("evicted_total", 0)),
        "acked_total": int(meta.get("acked_total", 0)),
        "file_bytes": sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()),
    }


def _storage_error(action: str, path: Path, e: sqlite3.Error) -> StorageError:
    code = getattr(e, "sqlite_errorname", "")
    if code == "SQLITE_FULL" or "full" in str(e):
        return StorageError(f"telemetry buffer {path}: disk full while trying to {action}")
    return StorageError(f"telemetry buffer {path}: cannot {action}: {e}")


class TelemetryBuffer:
    """A bounded, durable queue of telemetry records with never-reused sequence numbers.

    Args:
        path: the SQLite file (created with its folder; a file that is not a database is
            moved aside to ``PATH.corrupt-<unix time>`` and a new buffer started).
        max_bytes: the bound (64 KiB to 16 GiB).
        max_pages: a hard SQLite page limit (``PRAGMA max_page_count``); tests simulate a
            full disk with it. None: no limit but the disk.

    Raises:
        ConfigError: ``max_bytes`` out of range.
        StorageError: the file cannot be opened or created.
    """

    def __init__(
        self, path: Path | str, max_bytes: int = DEFAULT_MAX_BYTES, *, max_pages: int | None = None
    ) -> None:
        if not MIN_BUFFER_BYTES <= max_bytes <= MAX_BUFFER_BYTES:
            raise ConfigError(
                f"telemetry buffer size {max_bytes} B is outside "
                f"[{MIN_BUFFER_BYTES}, {MAX_BUFFER_BYTES}]"
            )
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._max_pages = max_pages
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):
                raise _storage_error("open", self.path, e) from e
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            try:
                self._db = self._open()
            except sqlite3.Error as e2:
                raise _storage_error("open", self.path, e2) from e2
        except OSError as e:
            raise StorageError(f"telemetry buffer {self.path}: {e}") from e

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            for statement in _SCHEMA:
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'buffer_id'").fetchone()
            if row is None:
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('buffer_id', ?)", (secrets.token_hex(16),)
                )
                row = db.execute("SELECT value FROM meta WHERE key = 'buffer_id'").fetchone()
            self.buffer_id = str(row[0])
            self._evicted = self._meta_int(db, "evicted_total")
            self._acked = self._meta_int(db, "acked_total")
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
            self._last_seq = int(seq[0]) if seq else 0
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records"
            ).fetchone()
            self._records = int(count)
            self._bytes = int(size) + ROW_OVERHEAD * self._records
            if self._max_pages is not None:
                db.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _meta_int(db: sqlite3.Connection, key: str) -> int:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    # -- writing --------------------------------------------------------------------------

    def append(self, records: Sequence[Mapping[str, Any]]) -> list[int]:
        """Append ``records`` in one transaction, giving each the next seq (oldest first).

        Each stored record is ``{"seq": n, **record}``. When the bound would be exceeded the
        oldest stored records are evicted first (and, if the new records alone exceed it,
        the oldest of them: they get a seq and count as evicted).

        Returns:
            The seqs given, in order.

        Raises:
            StorageError: the disk is full or SQLite failed (nothing was appended).
        """
        if not records:
            return []
        with self._lock:
            first = self._last_seq + 1
            seqs = list(range(first, first + len(records)))
            rows = []
            for seq, record in zip(seqs, records, strict=True):
                body = orjson.dumps({"seq": seq, **record})
                rows.append((seq, len(body), body))
            new_bytes = sum(r[1] + ROW_OVERHEAD for r in rows)
            dropped_new = 0
            while rows and new_bytes > self.max_bytes:  # the newest alone overflow the bound
                new_bytes -= rows[0][1] + ROW_OVERHEAD
                rows.pop(0)
                dropped_new += 1
            need = self._bytes + new_bytes - self.max_bytes
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                evicted, freed = self._evict(db, need) if need > 0 else (0, 0)
                db.executemany("INSERT INTO records (seq, size, body) VALUES (?, ?, ?)", rows)
                if not rows:  # keep the seqs of wholly dropped records used
                    db.execute(
                        "INSERT INTO records (seq, size, body) VALUES (?, 0, x'')", (seqs[-1],)
                    )
                    db.execute("DELETE FROM records WHERE seq = ?", (seqs[-1],))
                if evicted or dropped_new:
                    db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('evicted_total', ?)",
                        (str(self._evicted + evicted + dropped_new),),
                    )
                db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise _storage_error("append", self.path, e) from e
            self._last_seq = seqs[-1]
            self._evicted += evicted + dropped_new
            self._records += len(rows) - evicted
            self._bytes += new_bytes - freed
            return seqs

    def _evict(self, db: sqlite3.Connection, need: int) -> tuple[int, int]:
        """Delete the oldest records until ``need`` bytes are freed; (count, bytes freed)."""
        freed = 0
        count = 0
        last = None
        for seq, size in db.execute("SELECT seq, size FROM records ORDER BY seq"):
            freed += size + ROW_OVERHEAD
            count += 1
            last = seq
            if freed >= need:
                break
        if last is not None:
            db.execute("DELETE FROM records WHERE seq <= ?", (last,))
        return count, freed

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete the records the hub acknowledged; returns how many were still here.

        Seqs already gone (evicted, or acked before) are ignored.

        Raises:
            StorageError: SQLite failed (nothing was deleted; the records are sent again,
                and the hub counts them as duplicates).
        """
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return 0
        with self._lock:
            db = self._db
            where = "WHERE seq IN (SELECT value FROM json_each(?))"
            arg = (orjson.dumps(wanted).decode(),)
            try:  # aggregate statements: one SQLite step each (see _PAGE_SQL)
                db.execute("BEGIN IMMEDIATE")
                count, size = db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records {where}", arg
                ).fetchone()
                db.execute(f"DELETE FROM records {where}", arg)
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('acked_total', ?)",
                    (str(self._acked + int(count)),),
                )
                db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise _storage_error("delete acknowledged records", self.path, e) from e
            self._acked += int(count)
            self._records -= int(count)
            self._bytes -= int(size) + ROW_OVERHEAD * int(count)
            return int(count)

    # -- reading --------------------------------------------------------------------------

    def pending(self, max_records: int, max_bytes: int) -> list[BufferedRecord]:
        """The oldest waiting records, at most ``max_records`` and about ``max_bytes`` of
        encoded records (always at least one when any waits), seq ascending.

        The records are not decoded: the forwarder sends their bytes as they are
        (``orjson.Fragment``), so a batch costs the event loop no JSON work.

        Raises:
            StorageError: SQLite failed.
        """
        out: list[BufferedRecord] = []
        total = 0
        with self._lock:
            try:
                cursor = self._db.execute(
                    "SELECT seq, size, body FROM records ORDER BY seq LIMIT ?", (max_records,)
                )
                for seq, size, body in cursor:
                    if out and total + size > max_bytes:
                        break
                    total += size
                    out.append(BufferedRecord(int(seq), bytes(body)))
            except sqlite3.Error as e:
                raise _storage_error("read", self.path, e) from e
        return out

    def pending_page(self, max_records: int, max_bytes: int) -> PendingPage | None:
        """Like :meth:`pending`, as one JSON array read in one SQLite step (the forwarder's
        fast path); None when nothing waits.

        Raises:
            StorageError: SQLite failed.
        """
        with self._lock:
            try:
                count, seqs, body = self._db.execute(_PAGE_SQL, (max_records, max_bytes)).fetchone()
            except sqlite3.Error as e:
                raise _storage_error("read", self.path, e) from e
        if not count:
            return None
        return PendingPage(sorted(int(s) for s in str(seqs).split(",")), str(body).encode())

    def stats(self) -> BufferStats:
        """Counts kept in memory (no query), plus the file sizes on disk."""
        file_bytes = 0
        for p in (self.path, Path(f"{self.path}-wal")):
            with contextlib.suppress(OSError):
                file_bytes += p.stat().st_size
        with self._lock:
            return BufferStats(
                buffer_id=self.buffer_id,
                records=self._records,
                bytes=self._bytes,
                appended_total=self._last_seq,
                evicted_total=self._evicted,
                acked_total=self._acked,
                file_bytes=file_bytes,
                max_bytes=self.max_bytes,
            )

    def close(self) -> None:
        """Checkpoint and close (the buffer is unusable afterwards)."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
