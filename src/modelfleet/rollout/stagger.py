"""Staggered pulls (issue 11, ADR 0038): when a device starts downloading a new desired state.

Pure; ``now`` is passed in. 5,000 devices that see serial 12 within one poll must not pull
200 MB each at once: each one waits a deterministic offset ``u * spread``, where
``u = position(device_id, serial)`` in [0, 1) comes from sha256 (the same device and serial
always wait the same share; another serial reshuffles the order), so the fleet's pulls are
spread uniformly over the window.

With an off-shift period (``"22:00-06:00"``, may wrap past midnight) the pulls land inside
it. Off-shift times are **UTC** (no DST: a 22:00-06:00 period is always eight hours long; a
site sets its local quiet hours in UTC). The spread is ``window_s`` (or the whole period
when no window is given), never longer than the period. A device that sees the serial
inside a period spreads from ``now``; if its slot would fall past the period's end, it
takes its slot in the next period instead, so the pull rate stays ``N / spread`` either way.

:func:`pull_at` returns ``now`` when neither a window nor an off-shift period is configured.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from modelfleet.errors import ConfigError, InvalidInputError

__all__ = ["MAX_PULL_WINDOW_S", "OffShift", "parse_off_shift", "position", "pull_at"]

#: The longest pull window: one week.
MAX_PULL_WINDOW_S = 7 * 86400.0

_PERIOD = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class OffShift:
    """A daily off-shift period in UTC, ``start`` inclusive to ``end`` exclusive; ``end``
    before ``start`` wraps past midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ConfigError("an off-shift period must not start and end at the same time")

    @property
    def length(self) -> timedelta:
        """How long the period lasts each day."""
        minutes = (self.end.hour - self.start.hour) * 60 + self.end.minute - self.start.minute
        return timedelta(minutes=minutes % 1440)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_off_shift(text: str) -> OffShift:
    """Parse ``"HH:MM-HH:MM"`` (UTC, 24 h; ``"22:00-06:00"`` wraps past midnight).

    Raises:
        ConfigError: malformed, an hour above 23 or a minute above 59, or an empty period.
    """
    match = _PERIOD.match(text.strip())
    if match is None:
        raise ConfigError(
            f"off-shift {text!r} is not HH:MM-HH:MM in UTC (00:00 to 23:59, e.g. 22:00-06:00)"
        )
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    return OffShift(time(h1, m1), time(h2, m2))


def position(device_id: str, serial: int) -> float:
    """The device's deterministic share of the window for ``serial``, in [0, 1)."""
    digest = hashlib.sha256(f"{device_id}\x00{serial}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64)


def pull_at(
    device_id: str,
    serial: int,
    now: datetime,
    window_s: float | None,
    off_shift: OffShift | None = None,
) -> datetime:
    """The earliest instant this device should start downloading desired state ``serial``.

    Args:
        device_id: the device's id.
        serial: the desired state's serial (each serial is spread afresh).
        now: when the device first saw ``serial`` (aware).
        window_s: the spread in seconds (0 or None: none; with ``off_shift``: the whole
            period); at most :data:`MAX_PULL_WINDOW_S`.
        off_shift: the UTC period pulls must start in (None: any time).

    Returns:
        ``now`` without a window or period, else an aware UTC instant at or after ``now``
        (inside ``off_shift`` when one is given).

    Raises:
        InvalidInputError: ``now`` is naive, or ``window_s`` is negative or too long.
    """
    if now.tzinfo is None:
        raise InvalidInputError("pull_at needs an aware time, not a naive one")
    window = float(window_s or 0.0)
    if not 0.0 <= window <= MAX_PULL_WINDOW_S:
        raise InvalidInputError(f"pull window {window_s} s is outside [0, {MAX_PULL_WINDOW_S:.0f}]")
    now = now.astimezone(UTC)
    u = position(device_id, serial)
    if off_shift is None:
        return now + timedelta(seconds=u * window) if window else now
    length = off_shift.length
    spread = min(timedelta(seconds=window), length) if window else length
    start, end = _current_or_next(off_shift, now)
    base = max(start, now)
    slot = base + u * spread
    if slot < end:
        return slot
    return start + _DAY + u * spread  # its slot in this period is gone: the next period's


def _at(day: datetime, t: time) -> datetime:
    return day.replace(hour=t.hour, minute=t.minute, second=0, microsecond=0)


def _current_or_next(period: OffShift, now: datetime) -> tuple[datetime, datetime]:
    """The period (start, end) that ``now`` is in, else the next one."""
    length = period.length
    # The period that began on the day before today may still run (wrap past midnight).
    for offset in (-1, 0, 1):
        start = _at(now + offset * _DAY, period.start)
        if now < start + length:
            return start, start + length
    raise AssertionError("unreachable: a period starts every day")  # pragma: no cover
