"""Change control in time: change windows and the safety lag. Pure; ``now`` is passed in.

Windows are local wall-clock times in an explicit IANA time zone (:mod:`zoneinfo`): across a
DST change a 06:00-14:00 window stays 06:00-14:00 local. A window opening at a wall time that
does not exist that day (spring forward) opens at the first instant after the gap; in the
repeated hour (fall back) both instants with a wall time inside the window are inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from modelfleet.rollout.plan import ChangeWindow

__all__ = ["in_window", "next_window_start", "safety_lag_ok"]


def in_window(window: ChangeWindow | None, now: datetime) -> bool:
    """True when ``now`` is inside the window (always, for None).

    Raises:
        InvalidInputError: ``now`` is naive (no time zone).
    """
    raise NotImplementedError


def next_window_start(window: ChangeWindow, now: datetime) -> datetime | None:
    """The first instant at or after ``now`` inside the window: ``now`` itself when the window
    is open, else the next opening (aware, in the window's time zone); None when it never opens
    in the next two weeks.

    Raises:
        InvalidInputError: ``now`` is naive.
    """
    raise NotImplementedError


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
    raise NotImplementedError
