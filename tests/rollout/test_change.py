"""Change windows and the safety lag (rollout.change): time zones, midnight, DST."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from datetime import datetime, timedelta

import pytest

from modelfleet.errors import InvalidInputError
from modelfleet.rollout.change import in_window, next_window_start, safety_lag_ok
from modelfleet.rollout.plan import ChangeWindow

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
UTC = dt.UTC
WEEKDAYS = ChangeWindow("Europe/Berlin", (0, 1, 2, 3, 4), dt.time(6), dt.time(14))
NIGHT = ChangeWindow("Europe/Berlin", (4,), dt.time(22), dt.time(2))  # Friday 22:00 - Sat 02:00


def berlin(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=BERLIN, fold=fold)


def test_no_window_is_always_open() -> None:
    assert in_window(None, datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (berlin(2026, 12, 2, 6, 0), True),  # Wednesday, opening instant
        (berlin(2026, 12, 2, 13, 59, 59), True),
        (berlin(2026, 12, 2, 14, 0), False),  # the end is exclusive
        (berlin(2026, 12, 2, 5, 59), False),
        (berlin(2026, 12, 5, 10, 0), False),  # Saturday
        # The same instant seen from UTC: 05:30 UTC is 06:30 in Berlin in winter.
        (datetime(2026, 12, 2, 5, 30, tzinfo=UTC), True),
        (datetime(2026, 12, 2, 4, 59, tzinfo=UTC), False),
        # In summer Berlin is UTC+2: 04:30 UTC is 06:30 local.
        (datetime(2026, 7, 1, 4, 30, tzinfo=UTC), True),
        (datetime(2026, 7, 1, 12, 0, tzinfo=UTC), False),  # 14:00 local
        # Another zone's clock: 00:30 in New York on Wednesday is 06:30 in Berlin.
        (datetime(2026, 12, 2, 0, 30, tzinfo=zoneinfo.ZoneInfo("America/New_York")), True),
    ],
)
def test_weekday_window_in_its_own_time_zone(when: datetime, expected: bool) -> None:
    assert in_window(WEEKDAYS, when) is expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (berlin(2026, 12, 4, 21, 59), False),  # Friday before
        (berlin(2026, 12, 4, 22, 0), True),
        (berlin(2026, 12, 4, 23, 59), True),
        (berlin(2026, 12, 5, 0, 0), True),  # Saturday morning belongs to Friday's window
        (berlin(2026, 12, 5, 1, 59), True),
        (berlin(2026, 12, 5, 2, 0), False),
        (berlin(2026, 12, 5, 22, 30), False),  # Saturday is not an opening day
        (berlin(2026, 12, 4, 1, 0), False),  # Friday morning: Thursday did not open
    ],
)
def test_window_over_midnight_belongs_to_the_day_it_opens(when: datetime, expected: bool) -> None:
    assert in_window(NIGHT, when) is expected


def test_window_keeps_local_hours_across_dst() -> None:
    # Berlin goes to summer time on Sunday 2026-03-29; the window is 06:00-14:00 local on
    # both sides, so in UTC it opens at 05:00 on Friday 27th and at 04:00 on Monday 30th.
    assert in_window(WEEKDAYS, datetime(2026, 3, 27, 5, 0, tzinfo=UTC))
    assert not in_window(WEEKDAYS, datetime(2026, 3, 27, 4, 30, tzinfo=UTC))
    assert in_window(WEEKDAYS, datetime(2026, 3, 30, 4, 0, tzinfo=UTC))
    assert not in_window(WEEKDAYS, datetime(2026, 3, 30, 12, 0, tzinfo=UTC))


def test_the_repeated_hour_is_inside_a_window_twice() -> None:
    # 2026-10-25 Berlin: 02:00-03:00 happens twice (CEST, then CET).
    w = ChangeWindow("Europe/Berlin", (6,), dt.time(2, 15), dt.time(2, 45))
    first = berlin(2026, 10, 25, 2, 30, fold=0)
    second = berlin(2026, 10, 25, 2, 30, fold=1)
    assert first.astimezone(UTC) + timedelta(hours=1) == second.astimezone(UTC)
    assert in_window(w, first) and in_window(w, second)
    assert not in_window(w, datetime(2026, 10, 25, 1, 0, tzinfo=UTC))  # 02:00 CET


def test_naive_now_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="time zone"):
        in_window(WEEKDAYS, datetime(2026, 12, 2, 10, 0))
    with pytest.raises(InvalidInputError, match="time zone"):
        next_window_start(WEEKDAYS, datetime(2026, 12, 2, 10, 0))


@pytest.mark.parametrize(
    ("window", "now", "expected"),
    [
        (WEEKDAYS, berlin(2026, 12, 2, 10, 0), berlin(2026, 12, 2, 10, 0)),  # open: now
        (WEEKDAYS, berlin(2026, 12, 2, 5, 0), berlin(2026, 12, 2, 6, 0)),
        (WEEKDAYS, berlin(2026, 12, 2, 15, 0), berlin(2026, 12, 3, 6, 0)),
        (WEEKDAYS, berlin(2026, 12, 4, 15, 0), berlin(2026, 12, 7, 6, 0)),  # Fri -> Mon
        (NIGHT, berlin(2026, 12, 5, 3, 0), berlin(2026, 12, 11, 22, 0)),  # a week on
        (NIGHT, berlin(2026, 12, 5, 1, 0), berlin(2026, 12, 5, 1, 0)),  # still open
        # Across the spring change: Friday 15:00 CET -> Monday 06:00 CEST.
        (WEEKDAYS, berlin(2026, 3, 27, 15, 0), berlin(2026, 3, 30, 6, 0)),
    ],
)
def test_next_window_start(window: ChangeWindow, now: datetime, expected: datetime) -> None:
    got = next_window_start(window, now)
    assert got is not None and got == expected
    assert in_window(window, got)


def test_an_opening_in_the_spring_gap_opens_when_the_gap_ends() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29; the window opens at 03:00 CEST.
    w = ChangeWindow("Europe/Berlin", (6,), dt.time(2, 30), dt.time(4, 0))
    got = next_window_start(w, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert got is not None
    assert got.astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # A window entirely inside the gap does not open that day: the next Sunday it does.
    gap = ChangeWindow("Europe/Berlin", (6,), dt.time(2, 10), dt.time(2, 50))
    got = next_window_start(gap, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert got == berlin(2026, 4, 5, 2, 10)


def test_next_window_start_from_many_instants_is_the_first_open_instant() -> None:
    # Property over a year of instants, 17 h 29 min apart (both DST changes), four windows.
    windows = [
        WEEKDAYS,
        NIGHT,
        ChangeWindow("America/Sao_Paulo", (2, 6), dt.time(23, 30), dt.time(0, 30)),
        ChangeWindow("Australia/Lord_Howe", (0, 6), dt.time(1, 45), dt.time(2, 45)),
    ]
    t = datetime(2026, 1, 1, tzinfo=UTC)
    step = timedelta(hours=17, minutes=29)
    for _ in range(500):
        for w in windows:
            got = next_window_start(w, t)
            assert got is not None and got >= t and in_window(w, got)
            if got > t:
                # Nothing open in between: probe every 15 minutes and the second before.
                probe = t
                while probe < got - timedelta(seconds=1):
                    assert not in_window(w, probe), (w, t, probe)
                    probe += timedelta(minutes=15)
                assert not in_window(w, got - timedelta(seconds=1))
        t += step


def test_safety_lag() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert safety_lag_ok(0, [], now)
    assert not safety_lag_ok(3600, [], now)
    assert not safety_lag_ok(3600, [now - timedelta(minutes=59)], now)
    assert safety_lag_ok(3600, [now - timedelta(minutes=59), now - timedelta(hours=1)], now)
    other_zone = now.astimezone(BERLIN) - timedelta(days=2)
    assert safety_lag_ok(86_400, [other_zone], now)
    with pytest.raises(InvalidInputError):
        safety_lag_ok(60, [datetime(2026, 1, 1)], now)
