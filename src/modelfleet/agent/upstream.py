"""The cascade's I/O: forward an inference request to the upstream OIP v2 server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from modelfleet.serving.cascade import CascadeSettings

__all__ = ["UpstreamAnswer", "UpstreamClient"]


@dataclass(frozen=True)
class UpstreamAnswer:
    """A 200 answer from the upstream, passed through to the caller."""

    content: bytes
    content_type: str
    header_length: str | None


class UpstreamClient:
    """Forwards inference requests to the upstream with a timeout; never raises."""

    def __init__(
        self,
        settings: CascadeSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        unhealthy: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self._base = settings.upstream.rstrip("/")
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(settings.timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self._unhealthy = unhealthy or (lambda model: False)

    def unhealthy(self, model: str) -> bool:
        """Whether the local model counts as unhealthy now."""
        return self._unhealthy(model)

    async def forward(
        self, model: str, body: bytes, header_length: bytes | None
    ) -> UpstreamAnswer | None:
        """POST the request to the upstream; None on timeout, error or a non-200 answer."""
        headers = {
            "content-type": "application/octet-stream" if header_length else "application/json"
        }
        if header_length is not None:
            headers["inference-header-content-length"] = header_length.decode("latin-1")
        try:
            r = await asyncio.wait_for(
                self._client.post(
                    f"{self._base}/v2/models/{model}/infer", content=body, headers=headers
                ),
                self.settings.timeout_s,
            )
        except (httpx.HTTPError, TimeoutError):
            return None
        if r.status_code != 200:
            return None
        return UpstreamAnswer(
            r.content,
            r.headers.get("content-type", "application/json"),
            r.headers.get("inference-header-content-length"),
        )

    async def close(self) -> None:
        await self._client.aclose()
