"""A fake of the hub's telemetry ingest (issue 7, contract 1), in memory or over HTTP.

Not a mock: :class:`IngestStore` checks each batch with the real ``parse_batch`` and stores
it in one SQLite transaction behind a unique index on (device_id, buffer_id, seq), answering
as the contract says (``stored``, ``duplicates``, ``acked_through``). Faults can be injected:
``fail_next`` refuses before storing (the hub down), ``lose_answer_next`` stores and then
loses the answer (the hub killed after its commit, before the agent heard back).

``python -m tests.telemetry.fake_ingest --port N --db FILE`` serves it on 127.0.0.1 (Starlette
+ uvicorn), and proxies every other request to ``--upstream`` (the real hub), so an e2e test
can point an agent at it until the hub's own ingest endpoint lands.
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from modelfleet.errors import InvalidInputError, TransportError
from modelfleet.telemetry.wire import parse_batch

__all__ = ["IngestStore"]


class IngestStore:
    """Stored telemetry records, deduplicated on (device_id, buffer_id, seq)."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (device_id TEXT, buffer_id TEXT, seq INTEGER,"
            " kind TEXT, body BLOB, UNIQUE (device_id, buffer_id, seq))"
        )
        self._lock = threading.Lock()
        self.fail_next = 0
        self.lose_answer_next = 0
        self.batches = 0
        self.duplicates = 0
        self.last_batch: dict[str, Any] | None = None

    def ingest(self, device_id: str, doc: Any) -> dict[str, Any]:
        """Store a batch; the contract's 200 answer.

        Raises:
            InvalidInputError: malformed (400).
            TransportError: an injected fault (the hub down, or its answer lost).
        """
        doc = orjson.loads(orjson.dumps(doc))  # as sent on the wire (records are Fragments)
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise TransportError("injected: hub down")
            batch = parse_batch(doc, device_id)
            stored = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for r in batch.records:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?)",
                        (device_id, batch.buffer_id, r["seq"], r.get("kind"), orjson.dumps(r)),
                    )
                    stored += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.batches += 1
            dup = len(batch.records) - stored
            self.duplicates += dup
            self.last_batch = dict(doc)
            if self.lose_answer_next:
                self.lose_answer_next -= 1
                raise TransportError("injected: hub killed after storing, answer lost")
            return {
                "stored": stored,
                "duplicates": dup,
                "acked_through": max(int(r["seq"]) for r in batch.records),
                "status": "recorded",
            }

    def send_for(self, device_id: str) -> Any:
        """A ``send(batch)`` for the forwarder, as ``HubLink.send_telemetry`` bound to it."""
        return lambda batch: self.ingest(device_id, batch)

    def seqs(self, device_id: str | None = None, kind: str | None = None) -> list[int]:
        sql = "SELECT seq FROM records WHERE 1=1"
        args: list[Any] = []
        if device_id is not None:
            sql += " AND device_id = ?"
            args.append(device_id)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        with self._lock:
            return [int(r[0]) for r in self._db.execute(sql + " ORDER BY seq", args)]

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM records ORDER BY seq").fetchall()
        return [orjson.loads(r[0]) for r in rows]


def _app(store: IngestStore, upstream: str) -> Any:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, timeout=30.0) if upstream else None

    async def telemetry(request: Request) -> Response:
        body = await request.body()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Response(b'{"error": "not JSON"}', 400, media_type="application/json")
        try:
            answer = store.ingest(request.path_params["device_id"], doc)
        except InvalidInputError as e:
            return Response(orjson.dumps({"error": str(e)}), 400, media_type="application/json")
        return Response(orjson.dumps(answer), 200, media_type="application/json")

    async def count(request: Request) -> Response:
        return Response(orjson.dumps({"rows": len(store.seqs()), "batches": store.batches,
                                      "duplicates": store.duplicates}),
                        200, media_type="application/json")  # fmt: skip

    async def proxy(request: Request) -> Response:
        if client is None:
            return Response(b'{"error": "no upstream"}', 404, media_type="application/json")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        r = await client.request(
            request.method,
            request.url.path,
            params=request.url.query,
            content=await request.body(),
            headers=headers,
        )
        drop = {"content-length", "transfer-encoding", "connection", "content-encoding"}
        return Response(
            r.content, r.status_code, {k: v for k, v in r.headers.items() if k.lower() not in drop}
        )

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
    return Starlette(
        routes=[
            Route("/api/v1/devices/{device_id}/telemetry", telemetry, methods=["POST"]),
            Route("/_fake/count", count, methods=["GET"]),
            Route("/{path:path}", proxy, methods=methods),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--upstream", default="")
    args = parser.parse_args(argv)
    app = _app(IngestStore(args.db), args.upstream.rstrip("/"))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def stored_counts(path: Path | str) -> Mapping[str, int]:
    """Rows and distinct identities in a fake ingest database (read by the e2e tests)."""
    db = sqlite3.connect(str(path))
    try:
        rows, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT device_id || '/' || buffer_id || '/' || seq) "
            "FROM records"
        ).fetchone()
        return {"rows": int(rows), "distinct": int(distinct)}
    finally:
        db.close()


def stored_identities(path: Path | str) -> list[tuple[str, str, int]]:
    """(device_id, buffer_id, seq) of every stored row, duplicates included (there are none:
    the unique index refuses them)."""
    db = sqlite3.connect(str(path))
    try:
        return [
            (str(d), str(b), int(s))
            for d, b, s in db.execute("SELECT device_id, buffer_id, seq FROM records")
        ]
    finally:
        db.close()


def stored_windows(path: Path | str) -> list[dict[str, Any]]:
    """Every stored window record."""
    db = sqlite3.connect(str(path))
    try:
        rows = db.execute("SELECT body FROM records WHERE kind = 'window'").fetchall()
        return [orjson.loads(r[0]) for r in rows]
    finally:
        db.close()


if __name__ == "__main__":
    main()
