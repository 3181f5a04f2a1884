"""The device time floor (issue 11, ADR 0036): expiry is checked against
``max(clock, floor)``, so a clock set back (a year, or to 1970) cannot make expired
metadata valid again, and the floor never decreases."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelfleet.errors import MetadataExpiredError
from modelfleet.trust import DeviceTrustClient
from modelfleet.trust._time_floor import FLOOR_FILE, TimeFloor
from tests.trust._trust_support import TOKEN, Hub, make_hub, serve

START = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
DEVICE = "dev-1"


class WallClock:
    """The device's wall clock, which an operator (or a dead RTC battery) can set."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def signed_hub(tmp_path: Path) -> Hub:
    hub = make_hub(tmp_path / "hub", start=START)
    hub.assign(DEVICE, hub.publish("iris", 1))
    return hub


@pytest.fixture
def url(signed_hub: Hub) -> Iterator[str]:
    with serve(signed_hub) as u:
        yield u


def _client(
    tmp_path: Path, url: str, hub: Hub, clock: WallClock, bundle: bool = True
) -> DeviceTrustClient:
    root = hub.trust.trust_root_bundle() if bundle else None
    return DeviceTrustClient(tmp_path / "dev", url, TOKEN, root, now=clock.now)


def _floor(tmp_path: Path) -> datetime | None:
    return TimeFloor(tmp_path / "dev" / FLOOR_FILE).floor


def test_floor_file_persists_and_never_decreases(tmp_path: Path) -> None:
    path = tmp_path / FLOOR_FILE
    floor = TimeFloor(path)
    assert floor.floor is None and floor.reference(START) == START
    assert floor.advance(START + DAY)
    assert not floor.advance(START)  # never lowered
    again = TimeFloor(path)
    assert again.floor == START + DAY
    assert again.reference(START - 365 * DAY) == START + DAY
    assert again.reference(START + 2 * DAY) == START + 2 * DAY


def test_malformed_floor_file_is_logged_and_read_as_no_floor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FLOOR_FILE
    path.write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="modelfleet.trust"):
        assert TimeFloor(path).floor is None
    assert "malformed" in caplog.text


def test_floor_survives_a_new_client_and_a_clock_set_back(
    tmp_path: Path, signed_hub: Hub, url: str
) -> None:
    clock = WallClock(START + timedelta(hours=1))
    assert _client(tmp_path, url, signed_hub, clock).fetch_desired_state(DEVICE) is not None
    assert _floor(tmp_path) == START + timedelta(hours=1)
    clock.at = START - DAY  # set back, then the agent restarts
    later = _client(tmp_path, url, signed_hub, clock, bundle=False)
    assert later.reference_time() == START + timedelta(hours=1)
    assert later.fetch_desired_state(DEVICE) is not None  # still valid at the floor
    assert _floor(tmp_path) == START + timedelta(hours=1)  # not lowered


def test_clock_set_back_a_year_after_expiry_is_still_refused_as_expired(
    tmp_path: Path, signed_hub: Hub, url: str
) -> None:
    clock = WallClock(START)
    client = _client(tmp_path, url, signed_hub, clock)
    assert client.fetch_desired_state(DEVICE) is not None
    clock.at = START + 2 * DAY  # the site got no fresh metadata: the timestamp expired
    with pytest.raises(MetadataExpiredError, match=r"metadata expired.*timestamp expired"):
        client.fetch_desired_state(DEVICE)
    floor = _floor(tmp_path)
    assert floor == START + DAY  # the signed expiry it saw pass, not the clock
    clock.at = START + 2 * DAY - timedelta(days=365)  # "fixed" by setting the clock back
    with pytest.raises(MetadataExpiredError) as refused:
        client.fetch_desired_state(DEVICE)
    assert refused.value.repo == "director" and refused.value.role == "timestamp"
    assert refused.value.expires == START + DAY
    assert _floor(tmp_path) == floor  # unchanged
    times = client.metadata_times(DEVICE)
    assert times.reference == floor and "director" in times.expired


def test_clock_reset_to_1970_with_a_floor_present_is_still_expired(
    tmp_path: Path, signed_hub: Hub, url: str
) -> None:
    clock = WallClock(START)
    _client(tmp_path, url, signed_hub, clock).fetch_desired_state(DEVICE)
    clock.at = START + 3 * DAY
    with pytest.raises(MetadataExpiredError):
        _client(tmp_path, url, signed_hub, clock, bundle=False).fetch_desired_state(DEVICE)
    clock.at = datetime(1970, 1, 1, tzinfo=UTC)  # dead RTC battery, after a reboot
    rebooted = _client(tmp_path, url, signed_hub, clock, bundle=False)
    with pytest.raises(MetadataExpiredError, match="expired"):
        rebooted.fetch_desired_state(DEVICE)
    with pytest.raises(MetadataExpiredError, match="catalog"):
        rebooted.refresh_catalog()


def test_fresh_metadata_after_expiry_is_accepted_even_with_the_clock_set_back(
    tmp_path: Path, signed_hub: Hub, url: str
) -> None:
    clock = WallClock(START)
    client = _client(tmp_path, url, signed_hub, clock)
    client.fetch_desired_state(DEVICE)
    clock.at = START + 2 * DAY
    with pytest.raises(MetadataExpiredError):
        client.fetch_desired_state(DEVICE)
    signed_hub.clock.advance(2 * DAY.total_seconds())  # the hub re-signs (a fresh bundle)
    signed_hub.trust.refresh_expiring()
    signed_hub.assign(DEVICE, signed_hub.publish("iris", 2))
    clock.at = START - 365 * DAY  # and the clock is wrong the other way too
    assert client.fetch_desired_state(DEVICE) is not None
    client.refresh_catalog()
    assert client.metadata_times(DEVICE).expired == []


def test_clock_set_forward_cannot_push_the_floor_past_a_signed_expiry(
    tmp_path: Path, signed_hub: Hub, url: str
) -> None:
    clock = WallClock(START)
    client = _client(tmp_path, url, signed_hub, clock)
    client.fetch_desired_state(DEVICE)
    clock.at = START + 3650 * DAY  # a clock set ten years forward
    with pytest.raises(MetadataExpiredError):
        client.fetch_desired_state(DEVICE)
    assert _floor(tmp_path) == START + DAY  # the earliest expiry passed, not 2036
    clock.at = START + timedelta(hours=2)  # put right
    with pytest.raises(MetadataExpiredError):  # the metadata it saw expire stays expired
        client.fetch_desired_state(DEVICE)
    signed_hub.clock.advance(timedelta(hours=2).total_seconds())  # the next re-signing
    signed_hub.assign(DEVICE, signed_hub.publish("iris", 2))
    assert client.fetch_desired_state(DEVICE) is not None
