"""Rollout plans (rollout.plan): the YAML shape, strict parsing with field paths, round trips."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
import yaml

from modelfleet.errors import InvalidInputError
from modelfleet.rollout.desired_state import Mode
from modelfleet.rollout.plan import (
    DEFAULT_GATES,
    DEFAULT_STAGES,
    ChangeWindow,
    FailurePolicy,
    GateMetric,
    GateSpec,
    RolloutPlan,
    Selector,
    StageSpec,
    parse_duration,
    parse_plan,
)

EXAMPLE = """
model: iris
version: 3
target: {sites: [plant-a], tags: [line1]}
stages:
  - {name: canary, percent: 1, soak: 30m}
  - {name: early, percent: 9, soak: 1h, mode: split, share: 0.5}
  - {name: stable, percent: 90, soak: 2h}
  - {name: full, percent: 100, soak: 0}
gates:
  - {metric: error_rate, max_delta: 0.01, min_devices: 3, min_samples: 500, consecutive: 2}
  - {metric: latency_p99, max_ratio: 1.2}
  - {metric: guard_rollbacks, max: 0}
blast_radius: {tag_prefix: "cell:"}
change: {ticket: CHG-1234, window: {tz: Europe/Berlin, days: [mon, tue, wed, thu, fri],
         start: "06:00", end: "14:00"}}
on_failure: rollback
safety_lag: 24h
slo: {latency_p99_ms: 50}
"""


def example() -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE)
    assert isinstance(doc, dict)
    return doc


def test_the_documented_yaml_parses_to_what_it_says() -> None:
    plan = parse_plan(example())
    assert (plan.model, plan.version) == ("iris", 3)
    assert plan.selector == Selector(sites=("plant-a",), tags=("line1",))
    assert plan.stages == (
        StageSpec("canary", 1.0, Mode.FULL, 0.0, 1800.0),
        StageSpec("early", 9.0, Mode.SPLIT, 0.5, 3600.0),
        StageSpec("stable", 90.0, Mode.FULL, 0.0, 7200.0),
        StageSpec("full", 100.0, Mode.FULL, 0.0, 0.0),
    )
    assert plan.gates[0] == GateSpec(
        GateMetric.ERROR_RATE, max_delta=0.01, min_devices=3, min_samples=500, consecutive=2
    )
    assert plan.gates[1].relative and not plan.gates[2].relative
    assert plan.blast_radius_tag == "cell:"
    assert plan.ticket == "CHG-1234"
    assert plan.change_window == ChangeWindow(
        "Europe/Berlin", (0, 1, 2, 3, 4), datetime.time(6), datetime.time(14)
    )
    assert plan.failure_policy is FailurePolicy.ROLLBACK
    assert plan.safety_lag_s == 86_400.0
    assert plan.slo == {"latency_p99_ms": 50.0}
    assert plan.percents == [1.0, 9.0, 90.0, 100.0]
    assert plan.stable_stage == 2
    one = parse_plan(
        {
            "model": "m",
            "version": 1,
            "target": {"all": True},
            "stages": [{"name": "all", "percent": 100}],
        }
    )
    assert one.stable_stage == 0


def test_a_minimal_plan_gets_the_defaults() -> None:
    plan = parse_plan({"model": "iris", "version": 2, "target": {"all": True}})
    assert plan.stages == DEFAULT_STAGES and plan.gates == DEFAULT_GATES
    assert [s.percent for s in DEFAULT_STAGES] == [1, 9, 90, 100]
    assert plan.failure_policy is FailurePolicy.ROLLBACK and plan.change_window is None
    assert plan.selector.all


@pytest.mark.parametrize(
    "doc",
    [
        example(),
        {"model": "m", "version": 1, "target": {"devices": ["a", "b"]}},
        {"model": "m", "version": 1, "target": {"groups": ["cellA"]}, "name": "x"},
        {
            "model": "m",
            "version": 7,
            "target": {"all": True},
            "change": {"window": {"tz": "UTC", "days": [6], "start": "22:30:15", "end": "02:00"}},
            "on_failure": "pause",
            "stages": [
                {"name": "s", "percent": 50, "mode": "shadow", "share": 0.1},
                {"name": "all", "percent": 100},
            ],
            "gates": [{"metric": "confidence_shift", "max": 0.05, "min_samples": 0}],
        },
    ],
    ids=["example", "devices", "groups", "window-over-midnight"],
)
def test_to_dict_round_trips_through_parse_plan_and_yaml(doc: dict[str, Any]) -> None:
    plan = parse_plan(doc)
    assert parse_plan(plan.to_dict()) == plan
    assert parse_plan(yaml.safe_load(yaml.safe_dump(plan.to_dict()))) == plan


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("2d", 172_800.0),
        ("1h30m", 5400.0),
        ("0.5h", 1800.0),
        ("45", 45.0),
        (" 2H ", 7200.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "abc", "1w", "-5m", "5 m", -1, True, None, [], "400d", float("inf")]
)
def test_bad_durations_name_the_field(value: object) -> None:
    with pytest.raises(InvalidInputError, match=r"^stages\[0\]\.soak: "):
        parse_duration(value, "stages[0].soak")


def _with(path: str, value: object) -> dict[str, Any]:
    """The example with one field set (dotted path, [i] for list items); DELETE removes it."""
    doc = copy.deepcopy(example())
    node: Any = doc
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("colour", "red", r"^colour: unknown key"),
        ("model", DELETE, r"^model: required"),
        ("model", "", r"^model: expected a non-empty string"),
        ("version", "3", r"^version: expected an integer"),
        ("version", 0, r"^version: must be at least 1"),
        ("version", True, r"^version: expected an integer"),
        ("target", DELETE, r"^target: required"),
        ("target", {}, r"^target: name the devices"),
        ("target", {"all": True, "sites": ["a"]}, r"^target: all: true goes alone"),
        ("target.sites", "plant-a", r"^target\.sites: expected a list of strings"),
        ("target.tags", ["a", 3], r"^target\.tags\[1\]: expected a non-empty string"),
        ("target.where", 1, r"^target\.where: unknown key"),
        ("stages", [], r"^stages: expected 1 to 20 stages"),
        ("stages[1].percent", 0.5, r"^stages\[1\]\.percent: must be greater than"),
        ("stages[1].percent", 1, r"^stages\[1\]\.percent: must be greater than"),
        ("stages[3].percent", 95, r"^stages\[3\]\.percent: the last stage must be 100"),
        ("stages[0].percent", 0, r"^stages\[0\]\.percent: must be in \(0, 100\]"),
        ("stages[0].percent", "1%", r"^stages\[0\]\.percent: expected a number"),
        ("stages[2].name", "canary", r"^stages\[2\]\.name: duplicate stage name"),
        ("stages[2].mode", "blue", r"^stages\[2\]\.mode: expected one of full, split, shadow"),
        ("stages[1].share", 0, r"^stages\[1\]\.share: split needs a share in \(0, 1\]"),
        ("stages[1].share", 1.5, r"^stages\[1\]\.share: split needs a share"),
        ("stages[0].share", 0.5, r"^stages\[0\]\.share: only split and shadow"),
        (
            "stages[3]",
            {"name": "full", "percent": 100, "mode": "split", "share": 0.5},
            r"^stages\[3\]\.mode: the last stage must be full",
        ),
        ("stages[0].soak", "soon", r"^stages\[0\]\.soak: not a duration"),
        ("stages[0].pause", True, r"^stages\[0\]\.pause: unknown key"),
        ("stages[0].name", DELETE, r"^stages\[0\]\.name: required"),
        ("gates", [], r"^gates: at least one gate"),
        ("gates[0].metric", "accuracy", r"^gates\[0\]\.metric: expected one of latency_p99"),
        ("gates[0].metric", "drift_score", r"^gates\[0\]: drift_score is against the version's"),
        ("gates[1].metric", "error_rate", r"^gates\[1\]\.metric: error_rate appears twice"),
        ("gates[2].max_ratio", 2, r"^gates\[2\]: either max \(absolute\) or max_ratio"),
        ("gates[2].max", DELETE, r"^gates\[2\]: needs a threshold"),
        ("gates[1].max_ratio", 0.5, r"^gates\[1\]\.max_ratio: must be at least 1"),
        ("gates[0].max_delta", -0.1, r"^gates\[0\]\.max_delta: must not be negative"),
        ("gates[2].max", -1, r"^gates\[2\]\.max: must not be negative"),
        ("gates[0].min_devices", 0, r"^gates\[0\]\.min_devices: must be at least 1"),
        ("gates[0].consecutive", 1.5, r"^gates\[0\]\.consecutive: expected an integer"),
        ("gates[0].threshold", 1, r"^gates\[0\]\.threshold: unknown key"),
        ("blast_radius", {"prefix": "c"}, r"^blast_radius\.prefix: unknown key"),
        ("blast_radius", {}, r"^blast_radius\.tag_prefix: required"),
        ("change.ticket", 1234, r"^change\.ticket: expected a non-empty string"),
        ("change.window.tz", "Mars/Olympus", r"^change\.window\.tz: unknown time zone"),
        ("change.window.tz", "../etc/passwd", r"^change\.window\.tz: unknown time zone"),
        ("change.window.days", [], r"^change\.window\.days: expected a non-empty list"),
        ("change.window.days[1]", "funday", r"^change\.window\.days\[1\]: expected a weekday"),
        ("change.window.days[1]", 7, r"^change\.window\.days\[1\]: expected a weekday"),
        ("change.window.days[1]", "mon", r"^change\.window\.days\[1\]: mon appears twice"),
        ("change.window.start", "25:00", r"^change\.window\.start: expected a time of day"),
        ("change.window.end", "06:00", r"^change\.window\.end: must differ from start"),
        ("change.window.end", 100_000, r"^change\.window\.end: expected a time of day"),
        ("change.window.start", DELETE, r"^change\.window\.start: required"),
        ("on_failure", "explode", r"^on_failure: expected one of pause, rollback"),
        ("safety_lag", "a while", r"^safety_lag: not a duration"),
        ("slo.latency_p99_ms", "fast", r"^slo\.latency_p99_ms: expected a number"),
    ],
)
def test_bad_plans_are_refused_naming_the_field(path: str, value: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_plan(_with(path, value))


def test_a_plan_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="expected a mapping, got list"):
        parse_plan([1, 2])  # type: ignore[arg-type]


def test_an_unquoted_yaml_time_is_read_as_minutes() -> None:
    # PyYAML (YAML 1.1) turns an unquoted 14:00 into the integer 840.
    doc = yaml.safe_load(
        "model: m\nversion: 1\ntarget: {all: true}\n"
        "change: {window: {tz: UTC, days: [mon], start: 6:30, end: 14:00}}\n"
    )
    window = parse_plan(doc).change_window
    assert window is not None
    assert (window.start, window.end) == (datetime.time(6, 30), datetime.time(14))


def test_plans_built_in_code_are_checked_too() -> None:
    with pytest.raises(InvalidInputError, match=r"stages\[1\]\.percent"):
        RolloutPlan("m", 1, Selector(all=True), stages=(StageSpec("a", 50), StageSpec("b", 40)))
    with pytest.raises(InvalidInputError, match="gates: at least one gate"):
        RolloutPlan("m", 1, Selector(all=True), gates=())


@pytest.mark.parametrize(
    ("selector", "device", "site", "tags", "expected"),
    [
        (Selector(all=True), "d", "s", [], True),
        (Selector(), "d", "s", [], False),
        (Selector(sites=("a", "b")), "d", "b", [], True),
        (Selector(sites=("a",)), "d", "b", [], False),
        (Selector(tags=("x", "y")), "d", "s", ["y", "x", "z"], True),
        (Selector(tags=("x", "y")), "d", "s", ["x"], False),
        (Selector(groups=("cellA", "cellB")), "d", "s", ["group:cellB"], True),
        (Selector(groups=("cellA",)), "d", "s", ["cellA"], False),
        (Selector(devices=("d",)), "d", "s", [], True),
        (Selector(devices=("d",), sites=("a",)), "d", "s", [], False),  # others still filter
        (Selector(sites=("a",), tags=("line1",)), "d", "a", ["line1"], True),
        (Selector(sites=("a",), tags=("line1",)), "d", "a", ["line2"], False),
    ],
)
def test_selector_matches(
    selector: Selector, device: str, site: str, tags: list[str], expected: bool
) -> None:
    assert selector.matches(device, site, tags) is expected
