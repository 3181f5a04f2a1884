"""Edge–cloud cascade: answer locally when confident, otherwise ask an upstream OIP v2 server.

The upstream can be a site server, another agent, Triton or KServe: anything that speaks
``POST /v2/models/{m}/infer``. The request body is forwarded as received (JSON or binary
extension), so the upstream sees exactly what the caller sent.

:func:`route_for` is the pure decision; :class:`modelfleet.agent.upstream.UpstreamClient`
does the I/O with a timeout, and any failure (timeout, refused connection, non-200) makes
the caller fall back to the local answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from modelfleet.errors import ConfigError

__all__ = ["CascadeRoute", "CascadeSettings", "route_for"]


class CascadeRoute(StrEnum):
    """Where a request's answer came from."""

    LOCAL = "local"
    UPSTREAM = "upstream"
    FALLBACK = "fallback"  # upstream wanted, but slow or down: the local answer was served


@dataclass(frozen=True)
class CascadeSettings:
    """How the cascade behaves.

    Attributes:
        upstream: base URL of the upstream OIP v2 server (``http://host:port[/prefix]``).
        threshold: forward when the lowest top-class probability in the batch is below it.
        timeout_s: how long to wait for the upstream before answering locally.
        when_unhealthy: send every request upstream while the local model is unhealthy
            (its guard has breached, or it failed to answer).
        models: the models that cascade; None means all.
    """

    upstream: str
    threshold: float = 0.8
    timeout_s: float = 0.5
    when_unhealthy: bool = False
    models: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise ConfigError(f"cascade upstream must be an http(s) URL, got {self.upstream!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError("cascade threshold must be between 0 and 1")
        if not 0.001 <= self.timeout_s <= 60.0:
            raise ConfigError("cascade timeout must be between 1 ms and 60 s")

    def applies_to(self, model: str) -> bool:
        return self.models is None or model in self.models


def route_for(
    settings: CascadeSettings, top_probability: float | None, unhealthy: bool
) -> CascadeRoute:
    """Decide whether a locally computed answer is good enough.

    Args:
        settings: the cascade policy.
        top_probability: the lowest top-class probability of the batch; None when the
            model has no probability output (then only the health rule can forward).
        unhealthy: whether the local model is currently unhealthy.

    Returns:
        ``LOCAL`` to answer locally, ``UPSTREAM`` to try the upstream first.
    """
    if unhealthy and settings.when_unhealthy:
        return CascadeRoute.UPSTREAM
    if top_probability is not None and top_probability < settings.threshold:
        return CascadeRoute.UPSTREAM
    return CascadeRoute.LOCAL
