"""A real OTLP/HTTP receiver on loopback for the tests: decodes what exporters send."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["Received", "Span", "otlp_receiver"]


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]


@dataclass
class Received:
    url: str
    spans: list[Span] = field(default_factory=list)
    #: metric name -> [(attributes, value)] of the latest export that had it
    metrics: dict[str, list[tuple[dict[str, Any], float]]] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, predicate: Callable[[Received], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.05)
        return False


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@contextmanager
def otlp_receiver() -> Iterator[Received]:
    """Serve ``/v1/traces`` and ``/v1/metrics`` on 127.0.0.1 until the block ends."""
    received = Received(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            with received.lock:
                received.paths.append(self.path)
                if self.path == "/v1/traces":
                    self._traces(body)
                elif self.path == "/v1/metrics":
                    self._metrics(body)
                else:
                    self.send_error(404)
                    return
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def _traces(self, body: bytes) -> None:
            request = ExportTraceServiceRequest.FromString(body)
            for rs in request.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        received.spans.append(
                            Span(
                                s.name,
                                s.trace_id,
                                s.span_id,
                                s.parent_span_id,
                                s.start_time_unix_nano,
                                s.end_time_unix_nano,
                                _attrs(s.attributes),
                                s.status.code,
                                resource,
                            )
                        )

        def _metrics(self, body: bytes) -> None:
            request = ExportMetricsServiceRequest.FromString(body)
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        points = getattr(m, kind).data_points
                        received.metrics[m.name] = [
                            (
                                _attrs(p.attributes),
                                p.as_double if p.WhichOneof("value") == "as_double" else p.as_int,
                            )
                            for p in points
                        ]

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
