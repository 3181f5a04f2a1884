"""Faults of a simulated fleet, switched on per cohort (pure: no I/O, no clock).

A fault spec is ``KEY=VALUE`` pairs joined by ``:`` (the CLI's ``--fault``), e.g.
``version=3:error_rate=0.2`` or ``fraction=0.1:offline_for=2h``. Selector keys say which
devices and versions it hits; effect keys say what happens:

* selectors: ``model=NAME``, ``version=N`` (only while that version serves),
  ``fraction=F`` (a deterministic share of the devices, by a hash of the device id and the
  fault's position: the same devices every run), ``site=S``;
* version effects (need no ``version``, but are usually given one): ``latency_x=K`` (slow:
  latency times K), ``error_rate=P`` (extra share of requests answered with a server error),
  ``crash_per_h=R`` (crashes per hour of serving) with ``guard_crashes=N`` (the local guard
  rolls the version back after N crashes in one window; 0 = never; default 2),
  ``drift=D`` (the output confidence drops by D and shadow disagreement grows);
* device effects (no ``model``/``version``): ``offline_for=DURATION`` from
  ``offline_at=DURATION`` after the start (no check-ins, no telemetry sent; windows are
  buffered and sent late), ``late=N`` (telemetry goes only with every N+1-th check-in,
  the newer half of it first: late and out of order), ``skew=SECONDS`` (the device clock
  is off by that much, negative allowed: ``device_at`` and ``sent_at`` shift).

Durations are seconds or ``30s``/``30m``/``2h``/``1d``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from modelfleet.errors import InvalidInputError

__all__ = [
    "DeviceEffects",
    "Fault",
    "VersionEffects",
    "device_effects",
    "in_fraction",
    "parse_duration",
    "parse_fault",
    "parse_faults",
    "version_effects",
]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SELECTORS = ("model", "version", "fraction", "site")
_VERSION_EFFECTS = ("latency_x", "error_rate", "crash_per_h", "guard_crashes", "drift")
_DEVICE_EFFECTS = ("offline_for", "offline_at", "late", "skew")


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds of ``"90"``, ``"30s"``, ``"30m"``, ``"2h"`` or ``"1d"``.

    Raises:
        InvalidInputError: not such a duration, or negative.
    """
    raw = text.strip().lower()
    scale = 1.0
    if raw and raw[-1] in _UNITS:
        scale, raw = _UNITS[raw[-1]], raw[:-1]
    try:
        value = float(raw) * scale
    except ValueError:
        msg = f"{what}: {text!r} is not a duration (90, 30s, 30m, 2h, 1d)"
        raise InvalidInputError(msg) from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{what}: {text!r} must be a finite, non-negative duration")
    return value


@dataclass(frozen=True)
class Fault:
    """One fault switched on for a cohort. See the module docstring for the keys.

    Attributes:
        spec: the text it was parsed from (for summaries).
        index: its position among the run's faults (salts the ``fraction`` hash, so two
            faults of the same fraction pick different devices).
    """

    spec: str = ""
    index: int = 0
    model: str | None = None
    version: int | None = None
    fraction: float = 1.0
    site: str | None = None
    latency_x: float = 1.0
    error_rate: float = 0.0
    crash_per_h: float = 0.0
    guard_crashes: int = 2
    drift: float = 0.0
    offline_for: float = 0.0
    offline_at: float = 0.0
    late: int = 0
    skew: float = 0.0

    @property
    def is_device_fault(self) -> bool:
        """Whether it changes the device (offline, late, skew) rather than a version."""
        return bool(self.offline_for or self.late or self.skew)

    def selects(self, device_id: str, site: str) -> bool:
        """Whether the device is in this fault's cohort (any version)."""
        if self.site is not None and site != self.site:
            return False
        return in_fraction(device_id, self.fraction, f"fault-{self.index}")


def in_fraction(device_id: str, fraction: float, salt: str) -> bool:
    """Whether ``device_id`` is in the ``fraction`` of devices picked by ``salt``.

    Deterministic: sha256(salt, device id) read as a number in [0, 1) is below ``fraction``.
    """
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.sha256(salt.encode() + b"\0" + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _number(key: str, value: str, low: float, high: float) -> float:
    try:
        x = float(value)
    except ValueError:
        raise InvalidInputError(f"fault {key}={value!r}: not a number") from None
    if not (math.isfinite(x) and low <= x <= high):
        raise InvalidInputError(f"fault {key}={value}: must be within [{low:g}, {high:g}]")
    return x


def parse_fault(spec: str, index: int = 0) -> Fault:
    """Parse one ``--fault`` value.

    Raises:
        InvalidInputError: an unknown key, a bad value, no effect, or a device effect
            given a model or version selector.
    """
    values: dict[str, object] = {"spec": spec, "index": index}
    for part in (p.strip() for p in spec.split(":")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        value = value.strip()
        if not sep or not value:
            raise InvalidInputError(f"fault {spec!r}: {part!r} is not KEY=VALUE")
        if key in values:
            raise InvalidInputError(f"fault {spec!r}: {key} given twice")
        if key in ("model", "site"):
            values[key] = value
        elif key == "version":
            values[key] = int(_number(key, value, 1, 2**31 - 1))
        elif key == "fraction":
            values[key] = _number(key, value, 0.0, 1.0)
        elif key == "latency_x":
            values[key] = _number(key, value, 0.01, 1000.0)
        elif key == "error_rate":
            values[key] = _number(key, value, 0.0, 1.0)
        elif key == "crash_per_h":
            values[key] = _number(key, value, 0.0, 3600.0)
        elif key == "guard_crashes":
            values[key] = int(_number(key, value, 0, 10_000))
        elif key == "drift":
            values[key] = _number(key, value, 0.0, 1.0)
        elif key in ("offline_for", "offline_at"):
            values[key] = parse_duration(value, f"fault {key}")
        elif key == "late":
            values[key] = int(_number(key, value, 0, 10_000))
        elif key == "skew":
            values[key] = _number(key, value, -365 * 86400.0, 365 * 86400.0)
        else:
            known = ", ".join((*_SELECTORS, *_VERSION_EFFECTS, *_DEVICE_EFFECTS))
            raise InvalidInputError(f"fault {spec!r}: unknown key {key!r} (known: {known})")
    fault = Fault(**values)  # type: ignore[arg-type]
    effects = [k for k in (*_VERSION_EFFECTS, *_DEVICE_EFFECTS) if k in values]
    if not [k for k in effects if k not in ("guard_crashes", "offline_at")]:
        raise InvalidInputError(f"fault {spec!r}: names no effect")
    device = [k for k in _DEVICE_EFFECTS if k in values]
    version = [k for k in _VERSION_EFFECTS if k in values]
    if device and version:
        raise InvalidInputError(
            f"fault {spec!r}: mixes device effects ({', '.join(device)}) with version "
            f"effects ({', '.join(version)}); give them as two faults"
        )
    if device and (fault.model is not None or fault.version is not None):
        raise InvalidInputError(
            f"fault {spec!r}: device effects ({', '.join(device)}) select devices by "
            "fraction or site, not by model or version"
        )
    return fault


def parse_faults(specs: Iterable[str]) -> list[Fault]:
    """Parse each spec in order (its position salts its cohort)."""
    return [parse_fault(s, i) for i, s in enumerate(specs)]


@dataclass(frozen=True)
class DeviceEffects:
    """What device faults do to one device: offline windows (sim seconds from the start),
    telemetry held back, clock skew."""

    offline: tuple[tuple[float, float], ...] = ()
    late: int = 0
    skew_s: float = 0.0

    def offline_at(self, elapsed_s: float) -> bool:
        """Whether the device is offline ``elapsed_s`` simulated seconds after the start."""
        return any(start <= elapsed_s < end for start, end in self.offline)


@dataclass(frozen=True)
class VersionEffects:
    """What version faults do while one version serves on one device (combined: latency
    factors multiply, rates add, capped)."""

    latency_x: float = 1.0
    error_rate: float = 0.0
    crash_per_h: float = 0.0
    guard_crashes: int = 0
    drift: float = 0.0
    faults: tuple[str, ...] = field(default=())


NO_VERSION_EFFECTS = VersionEffects()


def device_effects(faults: Sequence[Fault], device_id: str, site: str) -> DeviceEffects:
    """The device faults that hit ``device_id`` (pure)."""
    offline: list[tuple[float, float]] = []
    late = 0
    skew = 0.0
    for f in faults:
        if not f.is_device_fault or not f.selects(device_id, site):
            continue
        if f.offline_for:
            offline.append((f.offline_at, f.offline_at + f.offline_for))
        late = max(late, f.late)
        skew += f.skew
    return DeviceEffects(tuple(offline), late, skew)


def version_effects(
    faults: Sequence[Fault], device_id: str, site: str, model: str, version: int
) -> VersionEffects:
    """The version faults that hit ``model`` ``version`` on ``device_id`` (pure)."""
    hits = [
        f
        for f in faults
        if not f.is_device_fault
        and (f.model is None or f.model == model)
        and (f.version is None or f.version == version)
        and f.selects(device_id, site)
    ]
    if not hits:
        return NO_VERSION_EFFECTS
    guards = [f.guard_crashes for f in hits if f.crash_per_h and f.guard_crashes]
    return VersionEffects(
        latency_x=math.prod(f.latency_x for f in hits),
        error_rate=min(1.0, sum(f.error_rate for f in hits)),
        crash_per_h=sum(f.crash_per_h for f in hits),
        guard_crashes=min(guards) if guards else 0,
        drift=min(1.0, sum(f.drift for f in hits)),
        faults=tuple(f.spec for f in hits),
    )
