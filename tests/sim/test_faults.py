"""Fault specs and cohorts (pure)."""

from __future__ import annotations

import pytest

from modelfleet.errors import InvalidInputError
from modelfleet.sim.faults import (
    device_effects,
    in_fraction,
    parse_duration,
    parse_fault,
    parse_faults,
    version_effects,
)

GOOD = [
    ("version=3:error_rate=0.2", {"version": 3, "error_rate": 0.2}),
    ("model=m:version=2:latency_x=5", {"model": "m", "latency_x": 5.0}),
    ("version=2:crash_per_h=30:guard_crashes=1", {"crash_per_h": 30.0, "guard_crashes": 1}),
    ("fraction=0.25:drift=0.3", {"fraction": 0.25, "drift": 0.3}),
    ("fraction=0.33:offline_for=2h:offline_at=10m", {"offline_for": 7200.0, "offline_at": 600}),
    ("fraction=0.1:late=4", {"late": 4}),
    ("site=plant-a:skew=-600", {"site": "plant-a", "skew": -600.0}),
]

BAD = [
    ("version=3", "names no effect"),
    ("error_rate=2", "within [0, 1]"),
    ("versoin=3:error_rate=0.1", "unknown key 'versoin'"),
    ("version=3:offline_for=1h", "select devices by fraction or site"),
    ("fraction=0.1:late=2:drift=0.1", "mixes device effects"),
    ("error_rate", "is not KEY=VALUE"),
    ("fraction=0.1:offline_for=soon", "is not a duration"),
    ("version=3:error_rate=0.1:error_rate=0.2", "given twice"),
]


@pytest.mark.parametrize(("spec", "expected"), GOOD, ids=[g[0] for g in GOOD])
def test_a_fault_spec_parses_to_its_fields(spec: str, expected: dict[str, object]) -> None:
    fault = parse_fault(spec)
    for key, value in expected.items():
        assert getattr(fault, key) == value


@pytest.mark.parametrize(("spec", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_fault_spec_is_refused_naming_the_problem(spec: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[")):
        parse_fault(spec)


def test_durations_read_units_and_refuse_negatives() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "2m", "1.5h", "1d")] == [
        90, 30, 120, 5400, 86400,
    ]  # fmt: skip
    with pytest.raises(InvalidInputError):
        parse_duration("-5")


def test_a_fraction_picks_the_same_devices_every_run_and_about_that_many() -> None:
    ids = [f"d-{i}" for i in range(4000)]
    first = [d for d in ids if in_fraction(d, 0.25, "fault-0")]
    assert first == [d for d in ids if in_fraction(d, 0.25, "fault-0")]
    assert 900 < len(first) < 1100
    other = {d for d in ids if in_fraction(d, 0.25, "fault-1")}
    assert len(other & set(first)) < 400  # another fault's cohort is drawn independently


def test_version_effects_hit_only_their_version_and_combine() -> None:
    faults = parse_faults(
        ["version=2:latency_x=3", "version=2:error_rate=0.1", "fraction=0:drift=1"]
    )
    fx = version_effects(faults, "d-1", "s", "m", 2)
    assert (fx.latency_x, fx.error_rate, fx.drift) == (3.0, 0.1, 0.0)
    assert version_effects(faults, "d-1", "s", "m", 1).latency_x == 1.0
    assert device_effects(faults, "d-1", "s").offline == ()


def test_device_effects_place_offline_windows_in_simulated_time() -> None:
    (fault,) = parse_faults(["fraction=1:offline_for=1h:offline_at=30m"])
    fx = device_effects([fault], "d-1", "s")
    assert [fx.offline_at(t) for t in (0, 1800, 5399, 5400)] == [False, True, True, False]
