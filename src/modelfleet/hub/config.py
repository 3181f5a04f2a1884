"""Hub configuration: a typed, bounded config object read from ``HOME/config.toml``.

The environment is read only at the process edge: :func:`load_hub_config` takes the
variables as a mapping, and only the CLI / server entry point passes ``os.environ``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.trust.repository import ExpiryPolicy, SiteExpiry

__all__ = [
    "ENV_DATABASE_URL",
    "ENV_HSM_PIN",
    "ENV_KEY_PASSPHRASE",
    "ENV_KEY_PASSPHRASE_FILE",
    "HubConfig",
    "HubHome",
    "format_duration",
    "load_hub_config",
    "parse_duration",
    "render_config_toml",
]

ENV_DATABASE_URL = "MODELFLEET_DATABASE_URL"
# --- issue 10: keys ---
ENV_KEY_PASSPHRASE = "MODELFLEET_KEY_PASSPHRASE"
ENV_KEY_PASSPHRASE_FILE = "MODELFLEET_KEY_PASSPHRASE_FILE"
ENV_HSM_PIN = "MODELFLEET_HSM_PIN"
# --- end issue 10: keys ---
_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class HubHome:
    """Where a hub keeps its state; every path is derived from ``root``."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def database_file(self) -> Path:
        return self.root / "hub.db"

    @property
    def artefacts(self) -> Path:
        return self.root / "artefacts"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def tuf(self) -> Path:
        return self.root / "tuf"

    @property
    def trust_root(self) -> Path:
        return self.root / "trust-root.json"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin.token"

    def is_initialised(self) -> bool:
        """True if ``init`` has run here (the config file and the keys exist)."""
        return self.config_file.is_file() and self.keys.is_dir()


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Settings of one hub process.

    Attributes:
        home: the hub home folder (see :class:`HubHome`).
        database_url: SQLAlchemy URL; SQLite in the home folder unless set
            (``postgresql+psycopg://user:pass@host/db`` for PostgreSQL).
        host: address the API listens on.
        port: TCP port the API listens on.
        max_upload_bytes: largest blob accepted by ``POST /api/v1/blobs``.
        max_report_bytes: largest device report accepted.
        refresh_interval_s: how often the background task re-signs expiring metadata.
        audit_page_limit: most audit entries returned by one request.
        max_telemetry_bytes: largest telemetry batch body accepted (issue 7).
        stale_after_s: a device whose last check-in is older than this is ``stale``
            in the ``modelfleet_hub_devices`` gauge.
        metrics_token_required: ``/metrics`` asks for a viewer token when True.
        metrics_cache_s: how long ``/metrics`` reuses the gauges it read from the
            database (a scrape storm costs one set of queries per period).
        telemetry_raw_days: raw telemetry records (and device reports but each device's
            newest) are kept this many days after they were received; older windows
            are merged into hourly roll-ups.
        telemetry_rollup_days: hourly roll-ups are kept this many days.
        retention_batch: most raw records (and reports) one upkeep round rolls up or
            deletes, so a round stays short however far behind it is.
        review_queue_limit: most pending review samples kept per model (issue 9); the
            sample that fills the queue records a ``review.queue_full`` event, later ones
            are dropped until labels empty it.
        review_days: review samples (and their labels) received more than this many days
            ago are deleted by the retention round.
        event_days: outbox events, and webhook deliveries delivered or dead, older than
            this many days are deleted (an event only once every subscription is past it
            and no delivery of it is pending).
        override_expected_rate: the override-rate layer's baseline where no previous
            version has enough judged answers at the site (ADR 0040).
        override_min_judged: judged answers an hour needs to move the override-rate state.
        key_passphrase: decrypts the key files (``MODELFLEET_KEY_PASSPHRASE`` or the file
            ``MODELFLEET_KEY_PASSPHRASE_FILE`` names; issue 10).
        hsm_pin: the PIN of a PKCS#11 token holding a key (``MODELFLEET_HSM_PIN``).
        release_threshold: release signatures a package version needs before the
            catalog lists it, once release keys are registered (issue 10, ADR 0027).
        safety_release_threshold: the same for versions of safety-classified models.
        expiry: TUF lifetimes, global and per site (the ``[expiry]`` and
            ``[expiry.sites.<site>]`` tables; issue 11, ADR 0037).
    """

    home: Path
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8700
    max_upload_bytes: int = 512 * _MIB
    max_report_bytes: int = 1 * _MIB
    refresh_interval_s: float = 300.0
    audit_page_limit: int = 1000
    max_telemetry_bytes: int = 8 * _MIB
    stale_after_s: float = 300.0
    metrics_token_required: bool = False
    metrics_cache_s: float = 5.0
    telemetry_raw_days: int = 14
    telemetry_rollup_days: int = 400
    retention_batch: int = 200_000
    review_queue_limit: int = 10_000
    review_days: int = 400
    event_days: int = 30
    override_expected_rate: float = 0.05
    override_min_judged: int = 50
    release_threshold: int = 1
    safety_release_threshold: int = 2
    extra: dict[str, Any] = field(default_factory=dict)
    expiry: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    # issue 10 (ADR 0025): secrets, only ever from the environment, never in config.toml
    key_passphrase: bytes | None = field(default=None, repr=False, compare=False)
    hsm_pin: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.home / 'hub.db'}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0..65535")
        if self.max_upload_bytes < 1 or self.max_report_bytes < 1:
            raise ConfigError("upload and report limits must be positive")
        if not 1.0 <= self.refresh_interval_s <= 86400.0:
            raise ConfigError("refresh_interval_s must be between 1 and 86400 seconds")
        if not 1 <= self.audit_page_limit <= 100_000:
            raise ConfigError("audit_page_limit must be between 1 and 100000")
        if not 1024 <= self.max_telemetry_bytes <= 1024 * _MIB:
            raise ConfigError("max_telemetry_bytes must be between 1 KiB and 1 GiB")
        if not 1.0 <= self.stale_after_s <= 30 * 86400.0:
            raise ConfigError("stale_after_s must be between 1 second and 30 days")
        if not 0.0 <= self.metrics_cache_s <= 300.0:
            raise ConfigError("metrics_cache_s must be between 0 and 300 seconds")
        if not 1 <= self.telemetry_raw_days <= 3650:
            raise ConfigError("telemetry_raw_days must be between 1 and 3650")
        if not self.telemetry_raw_days <= self.telemetry_rollup_days <= 36500:
            raise ConfigError(
                "telemetry_rollup_days must be at least telemetry_raw_days and at most 36500"
            )
        if not 100 <= self.retention_batch <= 10_000_000:
            raise ConfigError("retention_batch must be between 100 and 10000000")
        if not 1 <= self.review_queue_limit <= 10_000_000:
            raise ConfigError("review_queue_limit must be between 1 and 10000000")
        if not 1 <= self.review_days <= 36500:
            raise ConfigError("review_days must be between 1 and 36500")
        if not 1 <= self.event_days <= 36500:
            raise ConfigError("event_days must be between 1 and 36500")
        if not 0.0 <= self.override_expected_rate < 1.0:
            raise ConfigError("override_expected_rate must be in [0, 1)")
        if not 1 <= self.override_min_judged <= 1_000_000:
            raise ConfigError("override_min_judged must be between 1 and 1000000")
        if not 1 <= self.release_threshold <= self.safety_release_threshold <= 16:
            raise ConfigError(
                "release thresholds must satisfy 1 <= release_threshold <= "
                "safety_release_threshold <= 16"
            )

        # issue 11: upkeep must come round before any timestamp reaches its margin
        shortest = min(
            [self.expiry.timestamp]
            + [lives["timestamp"] for lives in self.expiry.site_lifetimes().values()]
        )
        if self.refresh_interval_s >= (shortest * self.expiry.refresh_margin).total_seconds():
            raise ConfigError(
                f"refresh_interval_s ({self.refresh_interval_s:g}) must be shorter than "
                f"refresh_margin x the shortest timestamp lifetime ({shortest})"
            )

    @property
    def paths(self) -> HubHome:
        return HubHome(self.home)


_KEYS = {f.name for f in fields(HubConfig)} - {
    "home",
    "extra",
    "expiry",
    "key_passphrase",
    "hsm_pin",
}

# -- issue 11: [expiry] and [expiry.sites.<site>] (ADR 0037) --------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^([1-9][0-9]{0,9})([smhdw])$")
MIN_LIFETIME = timedelta(minutes=1)
MAX_LIFETIME = timedelta(days=400)
_GLOBAL_EXPIRY = ("timestamp", "snapshot", "director_targets", "catalog_targets", "root")
_SITE_EXPIRY = ("timestamp", "snapshot", "targets")
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_duration(key: str, value: object) -> timedelta:
    """A lifetime from its config text: a whole number and one unit, ``s`` ``m`` ``h``
    ``d`` or ``w`` (``"90s"``, ``"12h"``, ``"60d"``, ``"8w"``).

    Args:
        key: the dotted config key, for the message.
        value: what the file holds there.

    Raises:
        ConfigError: not such a string, or outside 1 minute .. 400 days.
    """
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f'{key} must be a duration such as "1d" (a whole number and one unit of '
            f"s, m, h, d, w), not {value!r}"
        )
    lifetime = timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise ConfigError(f"{key} = {value!r} is outside 1 minute .. 400 days")
    return lifetime


def format_duration(value: timedelta) -> str:
    """The config text of a lifetime (the largest unit that divides it)."""
    seconds = int(value.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def _expiry_policy(table: object, where: Path) -> ExpiryPolicy:
    """The ``[expiry]`` table as a policy; unknown keys are errors (a typo'd lifetime
    would otherwise sign with the default unnoticed)."""
    if table is None:
        return ExpiryPolicy()
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [expiry] must be a table")
    known: dict[str, Any] = {}
    for key, value in table.items():
        if key in _GLOBAL_EXPIRY:
            known[key] = parse_duration(f"expiry.{key}", value)
        elif key == "refresh_margin":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"expiry.refresh_margin must be a number, not {value!r}")
            if not 0.05 <= value <= 0.9:
                raise ConfigError("expiry.refresh_margin must be between 0.05 and 0.9")
            known[key] = float(value)
        elif key != "sites":
            raise ConfigError(
                f"{where}: unknown key expiry.{key} (known: "
                f"{', '.join((*_GLOBAL_EXPIRY, 'refresh_margin', 'sites'))})"
            )
    sites = table.get("sites", {})
    if not isinstance(sites, dict):
        raise ConfigError(f"{where}: expiry.sites must be a table of [expiry.sites.<site>]")
    known["sites"] = {name: _site_expiry(name, value, where) for name, value in sites.items()}
    return ExpiryPolicy(**known)


def _site_expiry(name: str, table: object, where: Path) -> SiteExpiry:
    if not _SITE_NAME.match(name):
        raise ConfigError(
            f"{where}: expiry.sites.{name!r}: a site name is letters, digits, '.', '_', '-'"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expiry.sites.{name} must be a table")
    unknown = sorted(set(table) - set(_SITE_EXPIRY))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key expiry.sites.{name}.{unknown[0]} "
            f"(a site sets only {', '.join(_SITE_EXPIRY)})"
        )
    return SiteExpiry(
        **{k: parse_duration(f"expiry.sites.{name}.{k}", v) for k, v in table.items()}
    )


def load_hub_config(home: Path, env: Mapping[str, str] | None = None) -> HubConfig:
    """Read ``HOME/config.toml`` (the ``[hub]`` table) and apply environment overrides.

    Args:
        home: the hub home folder.
        env: environment variables (only ``MODELFLEET_DATABASE_URL`` is read); pass
            ``os.environ`` at the process edge, nothing in library code.

    Returns:
        The config; unknown keys are kept in ``extra``.

    Raises:
        ConfigError: the file is missing, not TOML, or a value has the wrong type.
    """
    hub_home = HubHome(Path(home))
    try:
        raw = tomllib.loads(hub_home.config_file.read_text("utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(
            f"{hub_home.root} is not a hub home (no config.toml); run `modelfleet init HOME`"
        ) from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {hub_home.config_file}: {e}") from e
    table = raw.get("hub", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{hub_home.config_file}: [hub] must be a table")
    known = {k: v for k, v in table.items() if k in _KEYS}
    extra = {k: v for k, v in table.items() if k not in _KEYS}
    if env and env.get(ENV_DATABASE_URL):
        known["database_url"] = env[ENV_DATABASE_URL]
    known.update(_secrets(env or {}))
    known["expiry"] = _expiry_policy(raw.get("expiry"), hub_home.config_file)
    try:
        return HubConfig(home=hub_home.root, extra=extra, **known)
    except TypeError as e:
        raise ConfigError(f"{hub_home.config_file}: {e}") from e


def _secrets(env: Mapping[str, str]) -> dict[str, Any]:
    """The key passphrase and HSM PIN the environment gives (issue 10)."""
    out: dict[str, Any] = {}
    if env.get(ENV_KEY_PASSPHRASE):
        out["key_passphrase"] = env[ENV_KEY_PASSPHRASE].encode("utf-8")
    elif env.get(ENV_KEY_PASSPHRASE_FILE):
        path = Path(env[ENV_KEY_PASSPHRASE_FILE])
        try:
            out["key_passphrase"] = path.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise ConfigError(f"cannot read the key passphrase file {path}: {e}") from e
    if env.get(ENV_HSM_PIN):
        out["hsm_pin"] = env[ENV_HSM_PIN]
    return out


def render_config_toml(config: HubConfig) -> str:
    """TOML text of ``config`` (the SQLite default URL is left implicit)."""
    lines = ["[hub]"]
    if config.database_url != HubConfig(config.home).database_url:
        lines.append(f"database_url = {_toml_str(config.database_url)}")
    lines += [
        f"host = {_toml_str(config.host)}",
        f"port = {config.port}",
        f"max_upload_bytes = {config.max_upload_bytes}",
        f"max_report_bytes = {config.max_report_bytes}",
        f"refresh_interval_s = {config.refresh_interval_s}",
        f"audit_page_limit = {config.audit_page_limit}",
        f"max_telemetry_bytes = {config.max_telemetry_bytes}",
        f"stale_after_s = {config.stale_after_s}",
        f"metrics_token_required = {'true' if config.metrics_token_required else 'false'}",
        f"telemetry_raw_days = {config.telemetry_raw_days}",
        f"telemetry_rollup_days = {config.telemetry_rollup_days}",
    ]
    if config.expiry != ExpiryPolicy():
        lines += _render_expiry(config.expiry)
    return "\n".join(lines) + "\n"


def _render_expiry(policy: ExpiryPolicy) -> list[str]:
    lines = ["", "[expiry]"]
    lines += [f'{k} = "{format_duration(getattr(policy, k))}"' for k in _GLOBAL_EXPIRY]
    lines.append(f"refresh_margin = {policy.refresh_margin}")
    for name, site in policy.sites.items():
        lines += ["", f"[expiry.sites.{name}]"]
        lines += [
            f'{k} = "{format_duration(v)}"'
            for k in _SITE_EXPIRY
            if (v := getattr(site, k)) is not None
        ]
    return lines


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
