"""Change control in time: change windows and the safety lag. Pure; ``now`` is passed in.

Windows are local wall-clock times in an explicit IANA time zone (:mod:`zoneinfo`): across a
DST change a 06:00-14:00 window stays 06:00-14:00 local. A window opening at a wall time that
does not exist that day (spring forward) opens at the first instant after the gap; in the
repeated hour (fall back) both instants with a wall time inside the window are inside it.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from datetime import datetime, timedelta

from modelfleet.errors import InvalidInputError
from modelfleet.rollout.plan import ChangeWindow

__all__ = ["in_window", "next_window_start", "safety_lag_ok"]


def in_window(window: ChangeWindow | None, now: datetime) -> bool:
    """True when ``now`` is inside the window (always, for None).

    Raises:
        InvalidInputError: ``now`` is naive (no time zone).
    """
    if window is None:
        return True
    local = _aware(now, "now").astimezone(_zone(window))
    t, day = local.time(), local.weekday()
    if window.start < window.end:
        return day in window.days and window.start <= t < window.end
    # Over midnight: the evening of an opening day, or the morning after one.
    return (day in window.days and t >= window.start) or (
        (day - 1) % 7 in window.days and t < window.end
    )


def next_window_start(window: ChangeWindow, now: datetime) -> datetime | None:
    """The first instant at or after ``now`` inside the window: ``now`` itself when the window
    is open, else the next opening (aware, in the window's time zone); None when it never opens
    in the next two weeks.

    Raises:
        InvalidInputError: ``now`` is naive.
    """
    _aware(now, "now")
    if in_window(window, now):
        return now
    tz = _zone(window)
    today = now.astimezone(tz).date()
    for offset in range(-1, 15):
        day = today + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        opening = _first_instant_at(day, window.start, tz)
        if opening > now and in_window(window, opening):
            return opening
    return None


def safety_lag_ok(lag_s: float, stable_since: Sequence[datetime], now: datetime) -> bool:
    """Whether a safety-classified rollout may start its next stage.

    Args:
        lag_s: the plan's ``safety_lag_s``; 0 means no lag.
        stable_since: for the other rollouts of the same version, when each reached its stable
            stage (the last below 100 %) or completed.
        now: the current time (aware).

    Returns:
        True when ``lag_s`` is 0, or some entry is at least ``lag_s`` seconds before ``now``.

    Raises:
        InvalidInputError: a naive datetime.
    """
    _aware(now, "now")
    if lag_s <= 0:
        return True
    lag = timedelta(seconds=lag_s)
    return any(now - _aware(t, "stable_since") >= lag for t in stable_since)


def _aware(t: datetime, name: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidInputError(f"{name} must carry a time zone, got naive {t.isoformat()}")
    return t


def _zone(window: ChangeWindow) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(window.tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidInputError(f"unknown time zone {window.tz!r}") from e


def _first_instant_at(day: dt.date, at: dt.time, tz: zoneinfo.ZoneInfo) -> datetime:
    """The first instant whose local wall time on ``day`` is at or after ``at``.

    Usually ``day at`` itself (the earlier of two in a repeated hour); when that wall time
    falls into a spring-forward gap, the end of the gap.
    """
    wall = datetime.combine(day, at, tzinfo=tz)
    early = wall.replace(fold=0).astimezone(dt.UTC)
    if early.astimezone(tz).replace(tzinfo=None) == wall.replace(tzinfo=None):
        late = wall.replace(fold=1).astimezone(dt.UTC)
        return min(early, late).astimezone(tz)
    # In a gap: find the transition between the two readings by bisection, to the second.
    lo, hi = sorted(
        (int(wall.replace(fold=1).astimezone(dt.UTC).timestamp()), int(early.timestamp()))
    )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        local = datetime.fromtimestamp(mid, tz)
        if (local.date(), local.time()) >= (day, at):
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, tz)
