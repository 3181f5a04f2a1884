"""Rollout plans: what a rollout ships, to whom, in which stages, behind which gates.

A plan is written by people (YAML, parsed by the CLI with ``yaml.safe_load``) or sent as JSON
(:meth:`RolloutPlan.to_dict`); :func:`parse_plan` takes either as plain data and is strict:
every unknown key, bad type or bad value is an :class:`~modelfleet.errors.InvalidInputError`
naming the field path (``stages[1].percent: ...``).

YAML shape::

    model: iris
    version: 3
    target: {sites: [plant-a], tags: [line1]}   # or {all: true}, {devices: [a, b]}, {groups: [c]}
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
    change:
      ticket: CHG-1234
      window: {tz: Europe/Berlin, days: [mon, tue, wed], start: "06:00", end: "14:00"}
    on_failure: rollback        # or pause
    safety_lag: 24h
    slo: {latency_p99_ms: 50}

Percents are cumulative shares of the target fleet (they must increase; the last is 100).
Durations are seconds (a number) or a string such as ``"30s"``, ``"30m"``, ``"1h"``, ``"2d"``,
``"1h30m"``.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from modelfleet.rollout.desired_state import Mode

__all__ = [
    "DEFAULT_GATES",
    "DEFAULT_STAGES",
    "ChangeWindow",
    "FailurePolicy",
    "GateMetric",
    "GateSpec",
    "RolloutPlan",
    "Selector",
    "StageSpec",
    "parse_duration",
    "parse_plan",
]


class GateMetric(StrEnum):
    """What a gate measures over a stage's soak (see :func:`modelfleet.rollout.gates.evaluate`)."""

    LATENCY_P99 = "latency_p99"
    ERROR_RATE = "error_rate"
    GUARD_ROLLBACKS = "guard_rollbacks"
    CRASHES = "crashes"
    REFUSALS = "refusals"
    SHADOW_DISAGREEMENT = "shadow_disagreement"
    CONFIDENCE_SHIFT = "confidence_shift"
    DRIFT_SCORE = "drift_score"  # refused by parse_plan until drift monitoring lands (issue 9)


class FailurePolicy(StrEnum):
    """What a failed gate does: wait for an operator, or roll every device back."""

    PAUSE = "pause"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class StageSpec:
    """One stage.

    Attributes:
        name: unique within the plan.
        percent: cumulative share of the target fleet, in (0, 100].
        mode: how the stage's devices run the version (full, split, shadow).
        share: the candidate's share for split/shadow, in (0, 1]; 0 for full.
        soak_s: seconds the stage runs before it may advance (gates must PASS as well).
    """

    name: str
    percent: float
    mode: Mode = Mode.FULL
    share: float = 0.0
    soak_s: float = 3600.0


@dataclass(frozen=True)
class GateSpec:
    """One gate: a metric, a threshold, and how much data it needs.

    Exactly one style: absolute (``max``), or relative to the control group (``max_ratio``
    and/or ``max_delta``: stage value <= control value * max_ratio + max_delta, ratio 1 and
    delta 0 when unset).

    Attributes:
        metric: what is measured.
        max: absolute limit.
        max_ratio: relative limit, multiplier of the control's value (>= 1).
        max_delta: relative limit, added to the control's value (>= 0).
        min_devices: reporting devices (stage and control) needed for a verdict.
        min_samples: samples (requests, comparisons) needed for a verdict.
        consecutive: bad evaluations in a row before the gate fails.
    """

    metric: GateMetric
    max: float | None = None
    max_ratio: float | None = None
    max_delta: float | None = None
    min_devices: int = 1
    min_samples: int = 100
    consecutive: int = 2

    @property
    def relative(self) -> bool:
        """True for a gate against the control group."""
        return self.max is None


@dataclass(frozen=True)
class Selector:
    """Which devices a rollout targets; every filter that is set must hold.

    Attributes:
        sites: the device's site is one of these.
        tags: the device has every one of these tags.
        groups: the device is in one of these groups (tag ``group:<name>``).
        devices: the device id is one of these (the other filters still apply).
        all: the whole fleet (needed when no filter is set).
    """

    sites: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    all: bool = False

    def matches(self, device_id: str, site: str, tags: Sequence[str]) -> bool:
        """True when the device is targeted; an empty selector matches nothing."""
        raise NotImplementedError


@dataclass(frozen=True)
class ChangeWindow:
    """When stages may start: local wall-clock times on some weekdays in one time zone.

    Attributes:
        tz: IANA time zone name (``Europe/Berlin``).
        days: weekdays the window opens, 0 = Monday .. 6 = Sunday.
        start: local opening time.
        end: local closing time (exclusive); ``end < start`` runs over midnight, and the
            window belongs to the day it opens.
    """

    tz: str
    days: tuple[int, ...]
    start: datetime.time
    end: datetime.time


DEFAULT_STAGES: tuple[StageSpec, ...] = (
    StageSpec("canary", 1.0, soak_s=3600.0),
    StageSpec("early", 9.0, soak_s=3600.0),
    StageSpec("stable", 90.0, soak_s=3600.0),
    StageSpec("full", 100.0, soak_s=0.0),
)
"""1 %, 9 %, 90 %, then 100 % (issue 8), an hour's soak each before the last."""

DEFAULT_GATES: tuple[GateSpec, ...] = (
    GateSpec(GateMetric.ERROR_RATE, max_delta=0.01),
    GateSpec(GateMetric.LATENCY_P99, max_ratio=1.2),
    GateSpec(GateMetric.GUARD_ROLLBACKS, max=0.0),
)
"""Error rate at most a point above control, p99 at most 1.2x control, no guard rollback."""


@dataclass(frozen=True)
class RolloutPlan:
    """A whole rollout plan; build it with :func:`parse_plan`.

    Attributes:
        model, version: what is rolled out.
        selector: the target devices.
        stages: the stages, percents increasing to 100.
        gates: evaluated on every stage (at least one: a stage never passes blind).
        blast_radius_tag: devices sharing a tag that starts with this prefix (``cell:``) form a
            blast-radius group: never two of them added in one stage.
        ticket: change ticket (required by the hub for safety-classified models).
        change_window: stages start only inside it; None = any time.
        failure_policy: what a failed gate does.
        safety_lag_s: for safety-classified models: stages start only once another rollout of
            the same version has been at its stable stage (or done) this long.
        slo: SLO pairs handed to the devices' local guard.
        name: a label.
    """

    model: str
    version: int
    selector: Selector
    stages: tuple[StageSpec, ...] = DEFAULT_STAGES
    gates: tuple[GateSpec, ...] = DEFAULT_GATES
    blast_radius_tag: str | None = None
    ticket: str | None = None
    change_window: ChangeWindow | None = None
    failure_policy: FailurePolicy = FailurePolicy.ROLLBACK
    safety_lag_s: float = 0.0
    slo: Mapping[str, float] = field(default_factory=dict)
    name: str | None = None

    @property
    def percents(self) -> list[float]:
        """The stages' cumulative percents, as :func:`.cohorts.plan_cohorts` takes them."""
        return [s.percent for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data in the YAML shape; ``parse_plan(p.to_dict()) == p``."""
        raise NotImplementedError


def parse_duration(value: object, path: str = "duration") -> float:
    """Seconds from a number or a string like ``"30s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1h30m"``.

    Raises:
        InvalidInputError: naming ``path``: not a duration, negative, or not finite.
    """
    raise NotImplementedError


def parse_plan(doc: Mapping[str, Any]) -> RolloutPlan:
    """Parse and check a plan document (YAML after ``safe_load``, or ``to_dict()`` output).

    Required: ``model``, ``version``, ``target``. Everything else has the defaults above.

    Raises:
        InvalidInputError: naming the field path: an unknown key, a wrong type, percents that
            do not increase to 100, a bad mode/share, a gate with no or two threshold styles,
            a duplicate stage name or gate metric, ``drift_score`` (lands with drift
            monitoring, issue 9), an unknown time zone or weekday, a bad time of day.
    """
    raise NotImplementedError
