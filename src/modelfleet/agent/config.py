"""Agent configuration: a typed object with bounded defaults.

The environment (``MODELFLEET_*``) is read only by the CLI, at the process edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelfleet.errors import ConfigError
from modelfleet.serving.cascade import CascadeSettings

__all__ = ["AgentConfig"]


@dataclass(frozen=True)
class AgentConfig:
    """How one device agent runs.

    Attributes:
        hub_url: base URL of the hub (``http://host:port``).
        device_id: this device's enrolled id.
        token: the device token printed by ``modelfleet device add``.
        state_dir: where slots, state and TUF caches live; survives restarts.
        host: address the inference server binds (loopback by default).
        port: inference server port (0 picks a free one).
        poll_interval: seconds between update checks (1 s to 1 day).
        trust_root: file with the hub's trust-root bundle; when absent the agent uses the
            root cached in ``state_dir``, or fetches it once over the token-authenticated API
            (trust on first use, logged as a warning).
        keep_previous_loaded: keep the previous version in memory so rollback is a switch.
        cascade: forward unconfident requests to an upstream OIP v2 server (None: off).
        max_body_bytes: largest inference request body (413 above).
        max_batch: largest batch (first dimension) per request (413 above).
        request_timeout_s: limit for a body to arrive or an off-loop inference (503).
    """

    hub_url: str
    device_id: str
    token: str
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    poll_interval: float = 10.0
    trust_root: Path | None = None
    keep_previous_loaded: bool = True
    cascade: CascadeSettings | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 4096
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.device_id or "/" in self.device_id:
            raise ConfigError(f"invalid device id {self.device_id!r}")
        if not 0.05 <= self.poll_interval <= 86400:
            raise ConfigError("poll interval must be between 0.05 s and one day")
        if not 1.0 <= self.request_timeout_s <= 3600:
            raise ConfigError("request timeout must be between 1 s and 1 h")
        if self.max_body_bytes < 1024 or self.max_batch < 1:
            raise ConfigError("body limit must be at least 1 KiB and batch at least 1")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"invalid port {self.port}")
