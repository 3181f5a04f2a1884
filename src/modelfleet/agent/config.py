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

    def __post_init__(self) -> None:
        if not self.device_id or "/" in self.device_id:
            raise ConfigError(f"invalid device id {self.device_id!r}")
        if not 0.05 <= self.poll_interval <= 86400:
            raise ConfigError("poll interval must be between 0.05 s and one day")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"invalid port {self.port}")
