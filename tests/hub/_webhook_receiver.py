"""A real loopback HTTP receiver for webhook tests: it verifies each delivery's signature
the way a subscriber should (modelfleet.hub.webhooks_signature.verify) and answers the
first ``fail_first`` requests with ``fail_status``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from modelfleet.errors import InvalidInputError
from modelfleet.hub.webhooks_signature import EVENT_ID_HEADER, SIGNATURE_HEADER, verify

__all__ = ["Received", "Receiver", "receiver"]


@dataclass
class Received:
    event_id: str
    body: dict[str, Any]
    signature_ok: bool
    problem: str | None


@dataclass
class Receiver:
    url: str
    secret: str = ""
    fail_first: int = 0
    fail_status: int = 503
    now: Any = time.time  # the receiver's clock (tests with a ManualClock pass theirs)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def receiver(fail_first: int = 0, fail_status: int = 503) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (an ephemeral port) until the block ends."""
    state = Receiver("", fail_first=fail_first, fail_status=fail_status)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            problem = None
            try:
                verify(state.secret, self.headers.get(SIGNATURE_HEADER, ""), raw, state.now())
            except InvalidInputError as e:
                problem = str(e)
            with state.lock:
                state.received.append(
                    Received(
                        self.headers.get(EVENT_ID_HEADER, ""),
                        orjson.loads(raw),
                        problem is None,
                        problem,
                    )
                )
                n = len(state.received)
            status = 400 if problem else (state.fail_status if n <= state.fail_first else 204)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
