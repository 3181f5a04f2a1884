"""Agent configuration: a typed object with bounded defaults.

The environment (``MODELFLEET_*``) is read only by the CLI, at the process edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelfleet.agent.review import ReviewSettings
from modelfleet.delivery.http_fetcher import DownloadSettings
from modelfleet.errors import ConfigError
from modelfleet.rollout.stagger import MAX_PULL_WINDOW_S, OffShift
from modelfleet.serving.cascade import CascadeSettings
from modelfleet.serving.model import RuntimeSettings
from modelfleet.telemetry.buffer import DEFAULT_MAX_BYTES, MAX_BUFFER_BYTES, MIN_BUFFER_BYTES
from modelfleet.telemetry.device import MAX_WINDOW_S, MIN_WINDOW_S

__all__ = ["AgentConfig"]


@dataclass(frozen=True)
class AgentConfig:
    """How one device agent runs.

    Attributes:
        hub_url: base URL of the hub (``http://host:port``).
        device_id: this device's enrolled id.
        token: the device token printed by ``modelfleet device add`` (never shown in repr;
            the agent refuses a token the hub says is not this device's).
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
        heartbeat_s: longest time between two check-ins when nothing changed (5 s to 1 day).
        backoff_cap_s: longest wait between polls while the hub is unreachable (capped
            exponential backoff with full jitter from ``poll_interval``; up to one day).
        download: deadlines of every download (minimum rate, caps).
        runtime: ONNX Runtime execution providers and thread counts for every model.
        telemetry: close telemetry windows, buffer and forward them (issue 7).
        telemetry_window_s: length of a telemetry window (1 s to 1 h).
        telemetry_buffer_bytes: bound of the write-ahead telemetry buffer (64 KiB to 16 GiB;
            the default holds 72 h of windows for 8 served versions, see
            ``docs/telemetry-format.md``).
        drift: count answered requests into the reference profiles of the versions that
            have one, into each telemetry window's ``profile`` (issue 9; needs telemetry).
        drift_sketches: add KLL sketches to those counts (KS at the hub); off by default:
            they cost device CPU and make each window tens of KB larger.
        anomaly: run the anomaly scorers packages carry on answered requests (an
            ``anomaly`` histogram per window; issue 9; needs telemetry).
        hardware: the hardware tags this device declares (issue 10); a package whose signed
            ``target`` needs a tag not here is refused.
        review: the review sampler's budget and thresholds; its default budget 0 samples
            nothing (``agent run --review-budget BYTES``; needs telemetry).
        hub_ca: the hub's CA certificate (PEM): ``https://`` to the hub trusts it and no
            other CA (``agent run --hub-ca``; issue 10). None: the system's CAs.
        update_folder: update from this folder (a mounted removable-media bundle laid out
            as a site tree, :mod:`modelfleet.delivery.site_tree`) instead of the hub: the
            same TUF verification, no check-ins and no token check with the hub; telemetry
            stays buffered for ``bundle report`` (``agent run --from-folder``; issue 11).
            Needs ``trust_root`` (or one cached): nothing on a stick is a trust anchor.
        pull_window_s: staggered pulls (issue 11, ADR 0038): the download of a new serial
            starts at a deterministic offset in [0, pull_window_s) (0 to 7 days; 0: at once).
        off_shift: start those downloads inside this daily UTC period (``agent run
            --off-shift 22:00-06:00``); with no window, spread over the whole period.
    """

    hub_url: str
    device_id: str
    token: str = field(repr=False)
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
    heartbeat_s: float = 60.0
    backoff_cap_s: float = 300.0
    download: DownloadSettings = field(default_factory=DownloadSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    telemetry: bool = True
    telemetry_window_s: float = 60.0
    telemetry_buffer_bytes: int = DEFAULT_MAX_BYTES
    drift: bool = True
    drift_sketches: bool = False
    anomaly: bool = True
    review: ReviewSettings = field(default_factory=ReviewSettings)
    hardware: tuple[str, ...] = ()
    hub_ca: Path | None = None
    update_folder: Path | None = None
    pull_window_s: float = 0.0
    off_shift: OffShift | None = None

    def __post_init__(self) -> None:
        if not self.device_id or "/" in self.device_id:
            raise ConfigError(f"invalid device id {self.device_id!r}")
        if not 0.05 <= self.poll_interval <= 86400:
            raise ConfigError("poll interval must be between 0.05 s and one day")
        if not 1.0 <= self.request_timeout_s <= 3600:
            raise ConfigError("request timeout must be between 1 s and 1 h")
        if self.max_body_bytes < 1024 or self.max_batch < 1:
            raise ConfigError("body limit must be at least 1 KiB and batch at least 1")
        if not self.token:
            raise ConfigError("no device token")
        if not 5.0 <= self.heartbeat_s <= 86400:
            raise ConfigError("heartbeat must be between 5 s and one day")
        if not self.poll_interval <= self.backoff_cap_s <= 86400:
            raise ConfigError("backoff cap must be between the poll interval and one day")
        if not MIN_WINDOW_S <= self.telemetry_window_s <= MAX_WINDOW_S:
            raise ConfigError("telemetry window must be between 1 s and 1 h")
        if not MIN_BUFFER_BYTES <= self.telemetry_buffer_bytes <= MAX_BUFFER_BYTES:
            raise ConfigError("telemetry buffer must be between 64 KiB and 16 GiB")
        if not 0.0 <= self.pull_window_s <= MAX_PULL_WINDOW_S:
            raise ConfigError("pull window must be between 0 s and 7 days")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"invalid port {self.port}")
