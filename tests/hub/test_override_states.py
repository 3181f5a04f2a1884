"""The override rate as a drift layer at the hub (ADR 0040): overrides summed exactly once
at ingest per (model, version, site, hour), a sequential state per (model, site) stepped
once per closed hour against the previous version's rate, events and gauges. Run on SQLite
here and on PostgreSQL by ``test_override_postgres``."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from sqlalchemy import select

from modelfleet.clock import ManualClock
from modelfleet.hub import db, events
from modelfleet.hub.config import load_hub_config
from modelfleet.hub.service import HubService
from tests.hub._overrides import override_window, send_overrides
from tests.hub._telemetry import batch
from tests.hub._webhook_receiver import receiver

ADMIN = "admin:admin"
HOUR = timedelta(hours=1)


@pytest.fixture
def fleet(service: HubService) -> list[str]:
    for i, site in enumerate(("plant-a", "plant-a", "plant-b")):
        service.add_device(f"cam-{i}", site, [], actor=ADMIN)
    return ["cam-0", "cam-1", "cam-2"]


def _rollups(service: HubService) -> list[tuple[str, str, datetime, int, int, int]]:
    u = db.OverrideRollup
    with service.context.read() as s:
        return [
            (r.site, r.version, r.hour, r.windows, r.overridden, r.confirmed)
            for r in s.scalars(select(u).order_by(u.site, u.version, u.hour))
        ]


def _events(service: HubService) -> list[dict[str, object]]:
    with service.context.read() as s:
        return [e for e in events.events_after(s, 0) if e["kind"] == events.OVERRIDES_STATE_CHANGED]


def test_rollups_add_each_window_once_and_a_batch_ingested_twice_counts_once(
    service: HubService, clock: ManualClock, fleet: list[str]
) -> None:
    hour = clock.now().replace(minute=0, second=0, microsecond=0)
    records = [
        override_window(1, "cam-0", hour + timedelta(minutes=5), 2, 8),
        override_window(2, "cam-0", hour + timedelta(minutes=15), 1, 9),
        override_window(3, "cam-0", hour + timedelta(minutes=65), 4, 6),  # the next hour
        override_window(4, "cam-0", hour + timedelta(minutes=20), 0, 0),  # nothing judged
        override_window(5, "cam-0", hour + timedelta(minutes=25), 3, 3, role="shadow"),
        override_window(6, "cam-0", hour + timedelta(minutes=30), 5, 5, version="2"),
    ]
    body = orjson.dumps(batch("cam-0", records, hour + timedelta(minutes=70)))
    assert service.ingest_telemetry("cam-0", body)["stored"] == 6
    again = service.ingest_telemetry("cam-0", body)  # an agent that lost the ack
    assert again["stored"] == 0 and again["duplicates"] == 6
    send_overrides(service, "cam-1", 1, hour + timedelta(minutes=40), 7, 3)  # same site
    send_overrides(service, "cam-2", 1, hour + timedelta(minutes=40), 1, 1)  # other site
    assert _rollups(service) == [
        ("plant-a", "1", hour, 3, 10, 20),
        ("plant-a", "1", hour + HOUR, 1, 4, 6),
        ("plant-a", "2", hour, 1, 5, 5),
        ("plant-b", "1", hour, 1, 1, 1),
    ]


def test_concurrent_ingest_for_one_site_loses_no_count(
    service: HubService, clock: ManualClock
) -> None:
    devices = [f"cam-{i}" for i in range(4)]
    for d in devices:
        service.add_device(d, "plant-a", [], actor=ADMIN)
    at = clock.now().replace(minute=30)
    errors: list[BaseException] = []

    def ingest(device: str) -> None:
        try:
            for seq in range(1, 11):
                send_overrides(service, device, seq, at, 1, 2)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=ingest, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ((_, _, _, windows, overridden, confirmed),) = _rollups(service)
    assert (windows, overridden, confirmed) == (40, 40, 80)


class _Hours:
    """Sends one window per device per hour and steps the states after each hour."""

    def __init__(self, service: HubService, clock: ManualClock) -> None:
        self.service, self.clock = service, clock
        self.seq: dict[str, int] = {}
        next_hour = clock.now().replace(minute=0, second=0, microsecond=0) + HOUR
        clock.advance((next_hour - clock.now()).total_seconds())

    def hour(self, counts: dict[str, tuple[int, int, str]]) -> list[dict[str, object]]:
        for device, (overridden, judged, version) in counts.items():
            self.seq[device] = self.seq.get(device, 0) + 1
            closed = self.clock.now() + timedelta(minutes=30)
            send_overrides(self.service, device, self.seq[device], closed,
                           overridden, judged - overridden, version=version)  # fmt: skip
        self.clock.advance(3600)
        changes: list[dict[str, object]] = self.service.advance_overrides()["changes"]
        return changes


def test_a_rise_from_5_to_30_percent_flips_that_site_only_and_a_stable_site_never_flags(
    service: HubService, clock: ManualClock, fleet: list[str]
) -> None:
    rng = np.random.default_rng(9)
    hours = _Hours(service, clock)
    stable_b: set[str] = set()

    def stable(version: str) -> tuple[int, int, str]:
        return int(rng.binomial(200, 0.05)), 200, version

    for _ in range(8):  # version 1 at 5 % at both sites
        hours.hour({"cam-0": stable("1"), "cam-1": stable("1"), "cam-2": stable("1")})
    (a,) = service.override_states(site="plant-a")
    assert a["version"] == "1" and a["state"] == "stable" and a["hours"] == 7
    assert a["baseline"]["source"] == "expected"
    # version 2 at both sites; at plant-a its rate rises over hours to 30 %
    rise = [0.05, 0.05, 0.1, 0.15, 0.2, 0.3] + [0.3] * 6
    for k in range(150):
        rate = rise[min(k, len(rise) - 1)]
        n = int(200 * rate)
        hours.hour({"cam-0": (n, 200, "2"), "cam-1": (n, 200, "2"), "cam-2": stable("2")})
        (b,) = service.override_states(site="plant-b")
        stable_b.add(b["state"])
    assert stable_b == {"stable"}  # 150 hours of version 2 at 5 %: never flagged
    (a,) = service.override_states(site="plant-a")
    assert a["version"] == "2" and a["state"] == "drifting" and a["last_rate"] == 0.3
    assert a["baseline"]["source"] == "previous_version" and a["baseline"]["version"] == 1
    assert 0.03 < a["baseline"]["rate"] < 0.07 and a["baseline"]["judged"] >= 2400
    (b,) = service.override_states(site="plant-b")
    assert b["version"] == "2" and b["hours"] == 149 and b["statistic"] == 0.0  # last: open
    evs = _events(service)
    assert [(e["subject"], e["payload"]["from"], e["payload"]["to"]) for e in evs] == [  # type: ignore[index]
        ("iris/plant-a", "stable", "warning"),
        ("iris/plant-a", "warning", "drifting"),
    ]
    drifting = evs[-1]["payload"]
    assert drifting["version"] == 2 and drifting["rate"] == 0.3  # type: ignore[index]
    assert drifting["baseline"]["source"] == "previous_version"  # type: ignore[index]
    assert service.drift_states() == []  # input drift is its own layer
    text = service.metrics_text().decode()
    assert 'modelfleet_override_state{model="iris",site="plant-a"} 2.0' in text
    assert 'modelfleet_override_state{model="iris",site="plant-b"} 0.0' in text
    assert 'modelfleet_override_rate{model="iris",site="plant-a"} 0.3' in text
    assert "cam-" not in text.split("# HELP modelfleet_override_rate")[1].split("# HELP")[0]


def test_a_state_change_reaches_a_subscribed_webhook_signed(
    service: HubService, clock: ManualClock, fleet: list[str]
) -> None:
    hooks = service.webhooks
    with receiver() as rcv:
        created = hooks.create(rcv.url, (events.OVERRIDES_STATE_CHANGED,), "retrain", ADMIN)
        rcv.secret = created["secret"]
        rcv.now = lambda: clock.now().timestamp()
        hours = _Hours(service, clock)
        for _ in range(2):  # the second hour is still open
            hours.hour({"cam-2": (60, 200, "1")})  # 30 % against the expected 5 %
        assert hooks.run_once().delivered == 1  # stable -> warning
    (got,) = rcv.received
    assert got.signature_ok, got.problem
    assert got.body["kind"] == "overrides.state_changed"
    assert got.body["payload"]["to"] == "warning" and got.body["payload"]["site"] == "plant-b"


def test_an_hour_with_too_few_judged_answers_is_skipped(
    service: HubService, clock: ManualClock, fleet: list[str]
) -> None:
    hours = _Hours(service, clock)
    hours.hour({"cam-2": (40, 49, "1")})  # 82 % overridden, but of 49 judged answers
    hours.hour({})
    (b,) = service.override_states()
    assert b["state"] == "stable" and b["skipped"] == 1 and b["hours"] == 0
    assert b["statistic"] == 0.0 and b["last_judged"] == 49


def test_each_closed_hour_is_stepped_once_after_its_grace(
    service: HubService, clock: ManualClock, fleet: list[str]
) -> None:
    start = clock.now().replace(minute=0) + HOUR
    clock.advance((start - clock.now()).total_seconds())
    send_overrides(service, "cam-2", 1, start + timedelta(minutes=5), 5, 95)
    clock.advance(3600)
    assert service.advance_overrides()["steps"] == 0  # not closed before its grace
    clock.advance(601)
    assert service.advance_overrides()["steps"] == 1
    assert service.advance_overrides() == {"steps": 0, "changes": []}
    # a late window of a stepped hour lands in the roll-up, not in the state
    send_overrides(service, "cam-2", 2, start + timedelta(minutes=50), 90, 10)
    assert service.advance_overrides()["steps"] == 0
    (b,) = service.override_states(model="iris", site="plant-b")
    assert b["hours"] == 1 and b["last_rate"] == 0.05
    assert service.override_states(model="other") == []


def test_the_upkeep_round_advances_the_override_states(
    service: HubService, clock: ManualClock, fleet: list[str]
) -> None:
    send_overrides(service, "cam-0", 1, clock.now(), 10, 90)
    clock.advance(2 * 3600 + 601)
    service.refresh_expiring()
    (a,) = service.override_states()
    assert a["site"] == "plant-a" and a["hours"] == 1 and a["last_rate"] == 0.1


def test_the_override_gauges_pass_promtool(
    service: HubService, clock: ManualClock, fleet: list[str]
) -> None:
    from tests.prom import promtool_check_metrics

    send_overrides(service, "cam-0", 1, clock.now(), 10, 90)
    send_overrides(service, "cam-2", 1, clock.now(), 1, 9)  # too few to count; a rate still
    clock.advance(2 * 3600)
    service.advance_overrides()
    text = service.metrics_text()
    assert text.count(b"modelfleet_override_state{") == 2
    assert text.count(b"modelfleet_override_rate{") == 2
    promtool_check_metrics(text)


def test_retention_deletes_override_rollups_with_the_telemetry_rollups(
    service: HubService, clock: ManualClock, fleet: list[str]
) -> None:
    send_overrides(service, "cam-0", 1, clock.now(), 1, 9)
    keep = service.context.config.telemetry_rollup_days
    clock.advance((keep - 1) * 86400)
    assert service.apply_retention()["override_rollups_deleted"] == 0
    clock.advance(2 * 86400)
    assert service.apply_retention()["override_rollups_deleted"] == 1
    assert _rollups(service) == []


def test_the_expected_rate_and_minimum_come_from_the_config(
    hub_home: tuple[Path, str], clock: ManualClock
) -> None:
    home = hub_home[0]
    config = home / "config.toml"
    config.write_text(
        config.read_text() + "override_expected_rate = 0.2\noverride_min_judged = 10\n"
    )
    svc = HubService(load_hub_config(home), clock)
    try:
        policy = svc.overrides.settings.policy
        assert (policy.expected_rate, policy.min_judged) == (0.2, 10)
    finally:
        svc.close()
