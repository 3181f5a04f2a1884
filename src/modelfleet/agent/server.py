"""The agent's HTTP server: uvicorn as ``modelfleet agent run`` starts it, and only so.

The daemon, the tests that need a real socket and the serving benchmark all start the app
through :func:`build_server` / :func:`serve`, so what is measured is what runs (issue 6,
"Performance").

Two bounds uvicorn does not give (issue 6, defect 15: a connection sending one header byte
every 2 s stayed open 65 s, and 300 such connections all stayed open):

* **header deadline**: from the moment a connection opens, or its previous response
  ends, the next request's headers must be complete within ``header_timeout_s``, else the
  connection is closed (uvicorn's keep-alive timer stops at the first byte, and there is
  no timer at all before it). The body's own deadline is the app's
  (:class:`~modelfleet.agent._infer.ServingLimits`).
* **connection cap**: more than ``max_connections`` open connections and a new one is
  closed at once, before it costs a parser or a timer.

The same sweep also closes keep-alive connections idle for ``keep_alive_s`` (within a
quarter of it), in place of the timer uvicorn arms after every response and cancels at the
next request's first byte (~1 µs a request, issue 6).

Server settings differing from uvicorn's defaults, and why:

* ``proxy_headers=False``: the agent is not behind a proxy it knows; trusting
  ``X-Forwarded-For`` would let a local client pose as other callers to the guard, and
  the middleware costs every request.
* ``server_header=False``: one header less per response.
* ``log_config=None``: the process's logging is configured once, by the CLI.
* ``gc.freeze()`` before serving (in :func:`serve`): the objects of startup (ONNX Runtime,
  TUF, httpx, …) are moved out of the collector's sight, so the collections that request
  garbage triggers do not walk them again and again.
* one write per response: uvicorn writes a response's status line and headers, then its
  body, each with its own ``send()`` system call and TCP segment (``TCP_NODELAY``); the
  connection's transport holds the headers back until the body follows (issue 6: a
  system call and a segment less per request, for the server and for the client).
"""

from __future__ import annotations

import asyncio
import gc
import socket
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelfleet.errors import ConfigError

__all__ = ["ServerSettings", "build_server", "serve"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the agent's HTTP server bounds its connections.

    Attributes:
        header_timeout_s: a request's headers must be complete this long after the
            connection opened or the previous response ended.
        keep_alive_s: an idle keep-alive connection is closed after this many seconds.
        max_connections: open connections at most; more are closed at once.
        backlog: the listen queue (connections not yet accepted).
    """

    header_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 256
    backlog: int = 128

    def __post_init__(self) -> None:
        if not 0.01 <= self.header_timeout_s <= 3600:
            raise ConfigError("header_timeout_s must be between 0.01 s and 1 h")
        if not 1 <= self.keep_alive_s <= 3600:
            raise ConfigError("keep_alive_s must be between 1 s and 1 h")
        if not 1 <= self.max_connections <= 65536:
            raise ConfigError("max_connections must be between 1 and 65536")
        if not 1 <= self.backlog <= 65536:
            raise ConfigError("backlog must be between 1 and 65536")


class _OneWrite:
    """A connection's transport that sends a response's headers together with its body.

    After :meth:`hold_next`, the next write (uvicorn's status line and headers) is held
    and sent with the write after it (the body) as one; whatever is held goes out at the
    latest when the response completes (:meth:`flush`) or the connection is closed.
    Everything else is the transport's own.
    """

    __slots__ = ("_held", "_hold", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._hold = False

    def hold_next(self) -> None:
        """Hold the next write back until the one after it."""
        self._hold = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif self._hold:
            self._hold = False
            self._held = bytes(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send what is held, if anything."""
        self._hold = False
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        if not self._transport.is_closing():
            self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # the rest (get_extra_info, set_protocol, …)
        return getattr(self._transport, name)


class _BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap.

    Per request it only notes when it started waiting for headers (one clock read); one
    sweep per server, every quarter of the deadline while connections are open, closes the
    connections that waited too long. A timer per request would cost a timer scheduled and
    cancelled on every request of every keep-alive connection.
    """

    header_timeout_s: ClassVar[float] = 10.0
    keep_alive_s: ClassVar[float] = 5.0
    max_connections: ClassVar[int] = 256
    _sweep_timer: ClassVar[asyncio.TimerHandle | None] = None

    #: loop time since which the next request's headers are awaited; None while they are in
    awaiting_since: float | None = None
    #: loop time since which the connection is idle after a response; None once a byte of
    #: the next request came (or before the first)
    idle_since: float | None = None
    _one_write: _OneWrite

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._one_write = _OneWrite(transport)
        self.transport = cast(asyncio.Transport, self._one_write)
        if len(self.connections) > self.max_connections:
            transport.close()  # connection_lost removes it from the set
            return
        self.awaiting_since = self.loop.time()
        cls = type(self)
        if cls._sweep_timer is None:
            cls._sweep_timer = self.loop.call_later(self._period(), self._sweep)

    @classmethod
    def _period(cls) -> float:
        return min(cls.header_timeout_s, cls.keep_alive_s) / 4

    def on_message_begin(self) -> None:
        self.idle_since = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.awaiting_since = None
        if not self.expect_100_continue:  # a "100 Continue" must go out alone, at once
            self._one_write.hold_next()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """uvicorn's own, less its keep-alive timer (the sweep closes idle connections)."""
        self._one_write.flush()  # a HEAD response has no body write to carry the headers
        if self.pipeline:  # uvicorn starts the pipelined request (its headers are in)
            super().on_response_complete()
            return
        self.server_state.total_requests += 1  # uvicorn 0.29-0.55, without a pipeline
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        self.awaiting_since = self.idle_since = self.loop.time()

    def _sweep(self) -> None:
        cls = type(self)
        cls._sweep_timer = None
        now = self.loop.time()
        late, idle_late = now - self.header_timeout_s, now - self.keep_alive_s
        for conn in list(self.connections):
            if conn.transport.is_closing():
                continue
            idle = getattr(conn, "idle_since", None)
            since = getattr(conn, "awaiting_since", None)
            if (idle is not None and idle < idle_late) or (since is not None and since < late):
                conn.transport.close()
        if self.connections:
            cls._sweep_timer = self.loop.call_later(self._period(), self._sweep)


def _protocol(settings: ServerSettings) -> type[asyncio.Protocol]:
    return type(
        "BoundedHttpTools",
        (_BoundedHttpTools,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "keep_alive_s": float(settings.keep_alive_s),
            "max_connections": settings.max_connections,
        },
    )


def build_server(app: Any, settings: ServerSettings | None = None) -> uvicorn.Server:
    """The uvicorn server the agent runs, not yet started (``server.run(sockets=[…])``)."""
    settings = settings if settings is not None else ServerSettings()
    config = uvicorn.Config(
        app,
        http=_protocol(settings),
        loop="uvloop",
        ws="none",
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=settings.keep_alive_s,
        backlog=settings.backlog,
    )
    return uvicorn.Server(config)


def serve(app: Any, sock: socket.socket, settings: ServerSettings | None = None) -> None:
    """Serve ``app`` on the bound socket ``sock`` until SIGINT/SIGTERM.

    Raises:
        ConfigError: bad settings.
    """
    server = build_server(app, settings)
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock])
