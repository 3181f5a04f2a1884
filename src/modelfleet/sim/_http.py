"""The simulator's HTTP/1.1 client: a pool of keep-alive connections on asyncio streams,
the protocol done by h11 (the sans-I/O parser uvicorn and httpcore are built on).

Why not ``httpx.AsyncClient``: measured on this project's 2-core machine against ``hub
serve`` (2,000 GETs of the director timestamp, 8 connections), httpx costs the client
~1.4 ms of CPU per request, h11 on asyncio streams ~0.22 ms (ADR 0017). A simulated fleet
is thousands of clients in one process: at httpx's cost the simulator, not the hub, would
be what a benchmark measures.

One request at a time per connection. An idle connection the server closed is dropped and
the request sent on the next (finally on a new one) when no byte of an answer came back:
the server closed it before reading the request (reports and telemetry are idempotent
anyway: the hub deduplicates telemetry by record identity).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from modelfleet.errors import InvalidInputError, TransportError

__all__ = ["H11Pool", "Response"]

_READ = 65536


@dataclass(frozen=True, slots=True)
class Response:
    """A whole answer: status, body, and the request line it answers (for messages)."""

    status: int
    content: bytes
    method: str
    path: str

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class H11Pool:
    """Keep-alive HTTP/1.1 connections to one ``http://host:port`` base.

    Args:
        base_url: ``http://host:port`` (no TLS: the simulator runs next to the hub).
        max_connections: connections open at most (callers beyond wait).
        timeout_s: seconds for a whole request (connect, send, answer).
        user_agent: sent with every request.
    """

    def __init__(
        self,
        base_url: str,
        max_connections: int = 16,
        timeout_s: float = 60.0,
        user_agent: str = "modelfleet-sim",
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidInputError(
                f"the simulator speaks plain http://host:port, not {base_url!r}"
            )
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._authority = parts.netloc
        self._timeout = timeout_s
        self._agent = user_agent
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.bytes_sent = 0
        self.bytes_received = 0

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request and read the whole answer.

        Raises:
            TransportError: cannot connect, the connection broke, or ``timeout_s`` passed.
        """
        async with self._slots:
            try:
                return await asyncio.wait_for(
                    self._request(method, path, body, headers), self._timeout
                )
            except TimeoutError as e:
                raise TransportError(f"{method} {path}: no answer in {self._timeout:g} s") from e

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    async def _request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        hdrs = [("Host", self._authority), ("User-Agent", self._agent)]
        hdrs += list((headers or {}).items())
        hdrs.append(("Content-Length", str(len(body or b""))))
        request = h11.Request(method=method, target=self._prefix + path, headers=hdrs)
        while True:
            # Idle connections the hub has closed meanwhile (uvicorn's keep-alive timeout)
            # are dropped one by one; a fresh connection gets the last word.
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect(method, path)
            try:
                return await self._exchange(conn, request, body, method, path)
            except _Stale as e:
                conn.close()
                if not reused:
                    raise TransportError(f"{method} {path}: the connection broke: {e}") from e
            except BaseException:
                conn.close()
                raise

    async def _connect(self, method: str, path: str) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self._host, self._port)
        except OSError as e:
            raise TransportError(
                f"{method} {path}: cannot reach the hub at {self._authority}: {e}"
            ) from e
        return _Connection(reader, writer)

    async def _exchange(
        self, conn: _Connection, request: h11.Request, body: bytes | None, method: str, path: str
    ) -> Response:
        c = conn.h11
        try:
            data = c.send(request) or b""
            if body:
                data += c.send(h11.Data(data=body)) or b""
            data += c.send(h11.EndOfMessage()) or b""
            conn.writer.write(data)
            self.bytes_sent += len(data)
            await conn.writer.drain()
        except (OSError, h11.LocalProtocolError) as e:
            raise _Stale(str(e)) from e
        status = 0
        chunks: list[bytes] = []
        answered = False
        while True:
            try:
                event = c.next_event()
            except h11.RemoteProtocolError as e:
                raise TransportError(f"{method} {path}: bad answer from the hub: {e}") from e
            if event is h11.NEED_DATA:
                try:
                    got = await conn.reader.read(_READ)
                except OSError as e:
                    if not answered:
                        raise _Stale(str(e)) from e
                    raise TransportError(f"{method} {path}: the connection broke: {e}") from e
                if not got and not answered:
                    raise _Stale("closed by the hub")
                self.bytes_received += len(got)
                c.receive_data(got)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                answered = True
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportError(f"{method} {path}: the hub closed the connection mid-answer")
        if c.our_state is h11.DONE and c.their_state is h11.DONE:
            c.start_next_cycle()
            self._idle.append(conn)
        else:
            conn.close()
        return Response(status, b"".join(chunks), method, path)


class _Stale(Exception):
    """The connection failed before any answer: the request may be sent again."""
