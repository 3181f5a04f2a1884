"""A fake hub for the site mirror's tests: an httpx async transport that counts requests.

Tokens: ``dev-a`` and ``dev-b`` are devices ``a`` and ``b``; ``mirror`` is a viewer. The
hub serves whatever ``files`` holds under its URL path, refuses a device another device's
director files (403), can be taken ``down`` (connection refused) and can hold a response
until ``release`` is set (to pile concurrent requests up on the mirror).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

TOKENS = {"dev-a": ("device", "a"), "dev-b": ("device", "b"), "mirror": ("viewer", None)}


def artefact(data: bytes, name: str = "model.onnx", folder: str = "models/m/1") -> str:
    """The consistent-snapshot catalog target URL path of ``data`` (no leading slash)."""
    return f"tuf/catalog/targets/{folder}/{hashlib.sha256(data).hexdigest()}.{name}"


@dataclass
class FakeHub:
    files: dict[str, bytes] = field(default_factory=dict)
    down: bool = False
    release: asyncio.Event | None = None
    supports_range: bool = True
    cut_after: int | None = None  # the next target body stops after this many bytes
    requests: Counter[str] = field(default_factory=Counter)
    bodies: list[tuple[str, str, bytes]] = field(default_factory=list)
    status_override: dict[str, int] = field(default_factory=dict)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def egress(self) -> int:
        return sum(len(self.files.get(p, b"")) * n for p, n in self.requests.items())

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.lstrip("/")
        self.requests[path] += 1
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if path in self.status_override:
            return httpx.Response(self.status_override[path], json={"error": "overridden"})
        if self.release is not None and path.startswith("tuf/catalog/targets/"):
            await self.release.wait()
        auth = request.headers.get("authorization", "")
        who = TOKENS.get(auth.removeprefix("Bearer "))
        if who is None:
            return httpx.Response(401, json={"error": "unknown token"})
        role, device = who
        if path == "api/v1/whoami":
            return httpx.Response(200, json={"subject": device or "m", "role": role,
                                             "device_id": device})  # fmt: skip
        parts = path.split("/")
        owner = None
        if parts[:3] == ["tuf", "director", "devices"]:
            owner = parts[3]
        elif parts[:4] == ["tuf", "director", "targets", "devices"]:
            owner = parts[4]
        elif parts[:3] == ["api", "v1", "devices"]:
            owner = parts[3]
        if role == "device" and owner is not None and owner != device:
            return httpx.Response(403, json={"error": "not yours"})
        if request.method == "POST":
            body = request.content
            self.bodies.append((path, auth, body))
            if path.endswith("/telemetry"):
                doc: dict[str, Any] = orjson.loads(body)
                seqs = [r["seq"] for r in doc["records"]]
                return httpx.Response(200, json={"stored": len(seqs), "duplicates": 0,
                                                 "acked_through": max(seqs),
                                                 "status": "recorded"})  # fmt: skip
            return httpx.Response(200, json={"applied_rollbacks": []})
        hub_path = "trust-root.json" if path == "api/v1/trust-root" else path
        data = self.files.get(hub_path)
        if data is None:
            return httpx.Response(404, json={"error": "no such file"})
        start = 0
        rng = request.headers.get("range")
        if rng and self.supports_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            body = data[start:]
            if self.cut_after is not None:
                body, self.cut_after = body[: self.cut_after], None
            return httpx.Response(206, content=body)
        body = data
        if self.cut_after is not None and path.startswith("tuf/catalog/targets/"):
            cut, self.cut_after = self.cut_after, None
            return httpx.Response(200, stream=_CutStream(data[:cut], request))
        return httpx.Response(200, content=body)


class _CutStream(httpx.AsyncByteStream):
    """A body that breaks off after its bytes (a dropped link)."""

    def __init__(self, data: bytes, request: httpx.Request) -> None:
        self._data = data
        self._request = request

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield self._data
        raise httpx.ReadError("link dropped", request=self._request)
