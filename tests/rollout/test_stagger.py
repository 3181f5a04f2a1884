"""Staggered pulls: deterministic, inside the window, uniform across a fleet, off-shift."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from modelfleet.errors import ConfigError, InvalidInputError
from modelfleet.rollout.stagger import OffShift, parse_off_shift, position, pull_at

NOW = datetime(2026, 12, 5, 14, 30, tzinfo=UTC)
IDS = [f"dev-{i:05d}" for i in range(5000)]


def test_no_window_and_no_off_shift_pulls_at_once() -> None:
    assert pull_at("dev-1", 12, NOW, None) == NOW
    assert pull_at("dev-1", 12, NOW, 0.0) == NOW


def test_the_same_device_and_serial_always_wait_the_same_and_another_serial_reshuffles() -> None:
    assert pull_at("dev-1", 12, NOW, 3600) == pull_at("dev-1", 12, NOW, 3600)
    assert position("dev-1", 12) != position("dev-1", 13)
    assert position("dev-1", 12) != position("dev-2", 12)


def test_every_pull_lands_inside_the_window() -> None:
    for device in IDS[:500]:
        at = pull_at(device, 12, NOW, 3600)
        assert NOW <= at < NOW + timedelta(seconds=3600)


def test_5000_devices_spread_evenly_over_the_window() -> None:
    buckets = [0] * 10
    for device in IDS:
        offset = (pull_at(device, 12, NOW, 1000) - NOW).total_seconds()
        buckets[int(offset // 100)] += 1
    mean = len(IDS) / 10
    assert max(buckets) <= 1.3 * mean and min(buckets) >= 0.7 * mean, buckets


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        # before tonight's period: spread from 22:00
        (datetime(2026, 12, 5, 14, 30, tzinfo=UTC), datetime(2026, 12, 5, 22, tzinfo=UTC),
         datetime(2026, 12, 6, 6, tzinfo=UTC)),
        # past midnight inside last night's period: from now to 06:00 (or the next night)
        (datetime(2026, 12, 6, 2, 0, tzinfo=UTC), datetime(2026, 12, 6, 2, tzinfo=UTC),
         datetime(2026, 12, 7, 6, tzinfo=UTC)),
        # at 23:00: inside the period before midnight
        (datetime(2026, 12, 5, 23, 0, tzinfo=UTC), datetime(2026, 12, 5, 23, tzinfo=UTC),
         datetime(2026, 12, 7, 6, tzinfo=UTC)),
    ],
    ids=["afternoon", "after-midnight", "before-midnight"],
)  # fmt: skip
def test_pulls_land_inside_an_off_shift_period_that_wraps_past_midnight(
    now: datetime, start: datetime, end: datetime
) -> None:
    period = parse_off_shift("22:00-06:00")
    for device in IDS[:500]:
        at = pull_at(device, 7, now, None, period)
        assert start <= at < end
        t = at.time()
        assert t >= time(22) or t < time(6), at


def test_a_window_shorter_than_the_period_spreads_from_the_periods_start() -> None:
    period = parse_off_shift("22:00-06:00")
    opening = datetime(2026, 12, 5, 22, tzinfo=UTC)
    for device in IDS[:500]:
        at = pull_at(device, 7, NOW, 1800, period)
        assert opening <= at < opening + timedelta(seconds=1800)


def test_a_slot_already_past_in_this_period_moves_to_the_next_period() -> None:
    period = parse_off_shift("22:00-06:00")
    late = datetime(2026, 12, 6, 5, 30, tzinfo=UTC)  # half an hour of the period left
    ats = [pull_at(d, 7, late, None, period) for d in IDS[:1000]]
    tonight = [a for a in ats if a >= datetime(2026, 12, 6, 22, tzinfo=UTC)]
    this_morning = [a for a in ats if a < datetime(2026, 12, 6, 6, tzinfo=UTC)]
    assert len(tonight) + len(this_morning) == len(ats)
    # the rate stays N / spread: about 1/16 of the fleet fits in the 30 minutes left
    assert 0 < len(this_morning) < 0.15 * len(ats)


def test_a_daytime_period_that_does_not_wrap() -> None:
    period = parse_off_shift("12:00-13:00")
    at = pull_at("dev-1", 1, NOW, None, period)  # 14:30: today's period is over
    assert datetime(2026, 12, 6, 12, tzinfo=UTC) <= at < datetime(2026, 12, 6, 13, tzinfo=UTC)
    assert period.length == timedelta(hours=1)
    assert parse_off_shift("22:00-06:00").length == timedelta(hours=8)


@pytest.mark.parametrize(
    "text", ["25:00-03:00", "22:00", "22:60-06:00", "2200-0600", "10:00-10:00", ""]
)
def test_a_malformed_off_shift_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="off-shift"):
        parse_off_shift(text)


def test_a_naive_now_or_a_negative_window_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="aware"):
        pull_at("dev-1", 1, datetime(2026, 1, 1), 60)
    with pytest.raises(InvalidInputError, match="window"):
        pull_at("dev-1", 1, NOW, -1)
    assert str(OffShift(time(22), time(6))) == "22:00-06:00"
