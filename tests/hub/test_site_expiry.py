"""Per-site expiry of director metadata (issue 11, ADR 0037): a media-fed site's devices get
director metadata that outlives the gap between two deliveries, the shared catalog lives
as long as the longest site policy, and upkeep re-signs each device by its own site's
margin."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tuf.api.metadata import Metadata

from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError
from modelfleet.hub import db
from modelfleet.hub.app import build_hub_app
from modelfleet.hub.config import (
    HubConfig,
    format_duration,
    load_hub_config,
    parse_duration,
    render_config_toml,
)
from modelfleet.hub.service import HubService
from modelfleet.trust.repository import ExpiryPolicy, SiteExpiry
from tests.hub._support import auth

_DAY = timedelta(days=1)
_MEDIA = '[expiry.sites.quarry]\ntimestamp = "60d"\n'


def _home_with(home: Path, text: str) -> Path:
    config = home / "config.toml"
    config.write_text(config.read_text() + "\n" + text)
    return home


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text("[hub]\n" + text)
    return tmp_path


# -- config ----------------------------------------------------------------------------


def test_expiry_tables_are_read_into_the_policy(tmp_path: Path) -> None:
    config = load_hub_config(
        _write(
            tmp_path,
            '[expiry]\ntimestamp = "2d"\nsnapshot = "5w"\nrefresh_margin = 0.25\n'
            '[expiry.sites.quarry]\ntimestamp = "60d"\n'
            '[expiry.sites.ship-7]\ntimestamp = "12h"\nsnapshot = "40d"\ntargets = "90d"\n',
        )
    )
    policy = config.expiry
    assert (policy.timestamp, policy.snapshot, policy.refresh_margin) == (
        2 * _DAY,
        35 * _DAY,
        0.25,
    )
    assert policy.director_targets == 7 * _DAY  # not set: the default
    assert policy.sites["quarry"] == SiteExpiry(timestamp=60 * _DAY)
    # a site that sets only its timestamp gets a snapshot and targets at least as long
    assert policy.device_lifetimes("quarry") == {
        "timestamp": 60 * _DAY,
        "snapshot": 60 * _DAY,
        "targets": 60 * _DAY,
    }
    assert policy.device_lifetimes("ship-7") == {
        "timestamp": timedelta(hours=12),
        "snapshot": 40 * _DAY,
        "targets": 90 * _DAY,
    }
    assert policy.device_lifetimes("elsewhere") == policy.device_lifetimes(None)


def test_no_expiry_table_keeps_the_coded_defaults(tmp_path: Path) -> None:
    assert load_hub_config(_write(tmp_path, "port = 8701\n")).expiry == ExpiryPolicy()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('[expiry]\ntimestamp = "1y"\n', "expiry.timestamp must be", id="bad-unit"),
        pytest.param('[expiry]\ntimestamp = "1.5d"\n', "expiry.timestamp must be", id="fraction"),
        pytest.param("[expiry]\ntimestamp = 86400\n", "expiry.timestamp must be", id="bare-int"),
        pytest.param('[expiry]\nsnapshot = "d"\n', "expiry.snapshot must be", id="no-number"),
        pytest.param('[expiry]\ntimestamp = "30s"\n', "outside 1 minute", id="too-short"),
        pytest.param('[expiry]\nroot = "401d"\n', "expiry.root = '401d' is outside", id="too-long"),
        pytest.param(
            '[expiry.sites.quarry]\ntimestamp = "58w"\n',
            "expiry.sites.quarry.timestamp = '58w' is outside",
            id="site-too-long",
        ),
        pytest.param(
            '[expiry.sites.quarry]\ntimestap = "60d"\n',
            "unknown key expiry.sites.quarry.timestap",
            id="site-key-typo",
        ),
        pytest.param(
            '[expiry.sites.quarry]\nroot = "60d"\n',
            "unknown key expiry.sites.quarry.root",
            id="site-sets-root",
        ),
        pytest.param('[expiry]\ntimestmp = "2d"\n', "unknown key expiry.timestmp", id="typo"),
        pytest.param(
            '[expiry.sites.quarry]\ntimestamp = "60d"\nsnapshot = "30d"\n',
            "expiry.sites.quarry.snapshot",
            id="snapshot-shorter-than-timestamp",
        ),
        pytest.param("[expiry]\nrefresh_margin = 1.5\n", "refresh_margin", id="margin"),
        pytest.param('[expiry]\nsites = "quarry"\n', "expiry.sites must be a table", id="sites"),
        pytest.param(
            '[expiry.sites.quarry]\ntimestamp = "2m"\n',
            "refresh_interval_s (300) must be shorter",
            id="upkeep-slower-than-margin",
        ),
    ],
)
def test_a_bad_expiry_value_is_a_config_error_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_hub_config(_write(tmp_path, text))


def test_durations_round_trip_through_their_text() -> None:
    for text in ("90s", "15m", "12h", "60d", "8w"):
        assert format_duration(parse_duration("k", text)) == text
    assert format_duration(timedelta(days=14)) == "2w"


def test_a_rendered_config_reads_back_with_its_site_policies(tmp_path: Path) -> None:
    policy = ExpiryPolicy(
        timestamp=2 * _DAY, sites={"quarry": SiteExpiry(timestamp=60 * _DAY, targets=90 * _DAY)}
    )
    (tmp_path / "config.toml").write_text(render_config_toml(HubConfig(tmp_path, expiry=policy)))
    assert load_hub_config(tmp_path).expiry == policy


# -- signing ---------------------------------------------------------------------------


@pytest.fixture
def media_service(hub_home: tuple[Path, str], clock: ManualClock) -> Iterator[HubService]:
    svc = HubService(load_hub_config(_home_with(hub_home[0], _MEDIA)), clock)
    svc.add_device("cam-q", "quarry", [], actor="admin:admin")
    svc.add_device("cam-o", "office", [], actor="admin:admin")
    yield svc
    svc.close()


def _timestamp_life(svc: HubService, clock: ManualClock, device_id: str) -> timedelta:
    md = Metadata.from_bytes(svc.director.metadata(device_id, "timestamp.json"))
    return md.signed.expires - clock.now()


def test_a_media_fed_sites_device_gets_director_metadata_for_its_sites_lifetime(
    media_service: HubService, clock: ManualClock, onnx_bytes: bytes
) -> None:
    media_service.register_version("iris", onnx_bytes, actor="admin:admin")
    media_service.deploy("iris", 1, ["cam-q", "cam-o"], actor="admin:admin")
    assert _timestamp_life(media_service, clock, "cam-q") == 60 * _DAY
    assert _timestamp_life(media_service, clock, "cam-o") == _DAY
    held = media_service.director.device_roles("cam-q")
    assert held is not None
    for role in ("snapshot", "targets"):
        raw = media_service.director.metadata("cam-q", f"{getattr(held, role)}.{role}.json")
        assert Metadata.from_bytes(raw).signed.expires - clock.now() == 60 * _DAY
    roles = media_service.director.device_roles("cam-o")
    assert roles is not None and roles.targets_expires == clock.now() + 7 * _DAY


def test_the_shared_catalog_lasts_at_least_as_long_as_the_longest_site(
    media_service: HubService, clock: ManualClock
) -> None:
    policy = media_service.config.expiry
    assert policy.lifetimes("catalog")["timestamp"] == 60 * _DAY
    assert policy.lifetimes("catalog")["snapshot"] == 60 * _DAY
    assert policy.lifetimes("director")["timestamp"] == _DAY  # the shared director's own
    # The catalog was signed at init under the 1-day default: its 1 day left is within a
    # third of the new 60 days, so the first upkeep round re-signs it with the site's.
    done = media_service.refresh_expiring()
    assert any(d.startswith("catalog/timestamp") for d in done), done
    assert _catalog_life(media_service, clock, "timestamp.json") == 60 * _DAY
    # the snapshot signed at init (30 days) is re-signed once within a third of 60 days
    assert _catalog_life(media_service, clock, "snapshot") == 30 * _DAY
    clock.advance(timedelta(days=10, seconds=1).total_seconds())
    done = media_service.refresh_expiring()
    assert any(d.startswith("catalog/snapshot") for d in done), done
    assert _catalog_life(media_service, clock, "snapshot") == 60 * _DAY
    assert _catalog_life(media_service, clock, "timestamp.json") == 60 * _DAY


def _catalog_life(svc: HubService, clock: ManualClock, name: str) -> timedelta:
    if name == "snapshot":
        name = f"{_catalog_snapshot(svc)}.snapshot.json"
    path = svc.trust.metadata_path("catalog", name)
    assert path is not None, name
    return Metadata.from_bytes(path.read_bytes()).signed.expires - clock.now()


def _catalog_snapshot(svc: HubService) -> int:
    path = svc.trust.metadata_path("catalog", "timestamp.json")
    assert path is not None
    version: int = Metadata.from_bytes(path.read_bytes()).signed.snapshot_meta.version
    return version


def test_upkeep_resigns_a_media_fed_device_only_within_its_own_margin(
    media_service: HubService, clock: ManualClock
) -> None:
    media_service.director.publish()
    before = media_service.director.device_roles("cam-q")
    assert before is not None
    clock.advance(timedelta(hours=17).total_seconds())  # the online device's margin
    media_service.director.refresh_expiring()
    after = media_service.director.device_roles("cam-q")
    online = media_service.director.device_roles("cam-o")
    assert after == before  # 59 days left of 60: not due
    assert online is not None and online.timestamp_expires == clock.now() + _DAY
    clock.advance((timedelta(days=39) - timedelta(hours=17)).total_seconds())  # 21 d left
    media_service.director.refresh_expiring()
    assert media_service.director.device_roles("cam-q") == before  # still > 20 d (1/3)
    clock.advance(timedelta(days=1, seconds=1).total_seconds())  # < 1/3 of 60 d left
    media_service.director.refresh_expiring()
    resigned = media_service.director.device_roles("cam-q")
    assert resigned is not None and resigned.timestamp == before.timestamp + 1
    assert resigned.timestamp_expires == clock.now() + 60 * _DAY
    assert _timestamp_life(media_service, clock, "cam-q") == 60 * _DAY


def test_a_device_whose_site_policy_was_dropped_is_rescheduled_by_the_new_one(
    hub_home: tuple[Path, str], clock: ManualClock
) -> None:
    home = hub_home[0]
    original = (home / "config.toml").read_text()
    svc = HubService(load_hub_config(_home_with(home, _MEDIA)), clock)
    svc.add_device("cam-q", "quarry", [], actor="admin:admin")  # signed for 60 days
    svc.close()
    (home / "config.toml").write_text(original)  # the hub restarts without the policy
    svc = HubService(load_hub_config(home), clock)
    try:
        before = svc.director.device_roles("cam-q")
        assert before is not None
        clock.advance(timedelta(days=41).total_seconds())  # past the old re-sign time
        assert svc.director.refresh_expiring() == 0  # 19 d left: not due by 1 d / 30 d / 7 d
        with svc.context.read() as s:
            resign_at = s.scalar(
                select(db.DirectorDevice.resign_at).where(db.DirectorDevice.device_id == "cam-q")
            )
        assert resign_at is not None
        assert before.snapshot_expires is not None
        # moved to the new policy's time (snapshot: 1/3 of 30 d before it expires), so it
        # is not read again every round
        assert resign_at.replace(tzinfo=UTC) == before.snapshot_expires - 10 * _DAY
        clock.advance((resign_at.replace(tzinfo=UTC) - clock.now()).total_seconds() + 1)
        assert svc.director.refresh_expiring() == 1
        after = svc.director.device_roles("cam-q")
        assert after is not None and after.timestamp_expires == clock.now() + _DAY
    finally:
        svc.close()


def test_the_device_api_reports_each_devices_director_expiry(
    media_service: HubService, clock: ManualClock, hub_home: tuple[Path, str]
) -> None:
    media_service.director.publish()
    with TestClient(build_hub_app(media_service, refresh_interval_s=0)) as http:
        r = http.get("/api/v1/devices/cam-q", headers=auth(hub_home[1]))
    assert r.status_code == 200, r.text
    director = r.json()["director"]
    expected = clock.now() + 60 * _DAY
    assert datetime.fromisoformat(director["timestamp"]["expires"]) == expected
    assert director["timestamp"]["version"] >= 1
    assert set(director) == {"targets", "snapshot", "timestamp"}
