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
      - {metric: drift_score, max: 0.25, min_samples: 1000}  # issue 9, optional
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
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from modelfleet.rollout import _fields as fields
from modelfleet.rollout._fields import fail
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
    DRIFT_SCORE = "drift_score"  # issue 9: the stage's merged drift score (absolute max only)
    OVERRIDE_RATE = "override_rate"  # answers humans overrode / those they judged (issue 9)


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
        if not (self.all or self.sites or self.tags or self.groups or self.devices):
            return False
        if self.sites and site not in self.sites:
            return False
        if self.devices and device_id not in self.devices:
            return False
        if not (self.tags or self.groups):
            return True
        have = tags if isinstance(tags, set | frozenset) else set(tags)
        if self.tags and not have.issuperset(self.tags):
            return False
        return not self.groups or any("group:" + g in have for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        """The ``target`` mapping: only the filters that are set."""
        out: dict[str, Any] = {}
        if self.all:
            out["all"] = True
        for key in ("sites", "tags", "groups", "devices"):
            values = getattr(self, key)
            if values:
                out[key] = list(values)
        return out


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

    def __post_init__(self) -> None:
        # The same checks as parse_plan, for plans built in code.
        if not self.model:
            raise fail("model", "required")
        if isinstance(self.version, bool) or self.version < 1:
            raise fail("version", f"must be at least 1, got {self.version}")
        if not (self.selector.all or self.selector.to_dict()):
            raise fail("target", "name the devices: all: true, or sites, tags, groups or devices")
        _check_stages(self.stages, "stages")
        _check_gates(self.gates, "gates")
        if self.change_window is not None:
            _check_window(self.change_window, "change.window")
        if not 0.0 <= self.safety_lag_s <= MAX_DURATION_S:
            raise fail("safety_lag", f"must be in [0, {MAX_DURATION_S:.0f}] s")

    @property
    def percents(self) -> list[float]:
        """The stages' cumulative percents, as :func:`.cohorts.plan_cohorts` takes them."""
        return [s.percent for s in self.stages]

    @property
    def stable_stage(self) -> int:
        """Index of the stable stage: the last one below 100 % (0 when there is only one).

        Reaching it (or completing) starts the safety lag of other rollouts of the version.
        """
        return max(0, len(self.stages) - 2)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data in the YAML shape; ``parse_plan(p.to_dict()) == p``."""
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "target": self.selector.to_dict(),
            "stages": [
                {
                    "name": st.name,
                    "percent": st.percent,
                    "mode": st.mode.value,
                    "share": st.share,
                    "soak": st.soak_s,
                }
                for st in self.stages
            ],
            "gates": [_gate_dict(g) for g in self.gates],
            "on_failure": self.failure_policy.value,
            "safety_lag": self.safety_lag_s,
            "slo": dict(self.slo),
        }
        if self.blast_radius_tag is not None:
            out["blast_radius"] = {"tag_prefix": self.blast_radius_tag}
        change: dict[str, Any] = {}
        if self.ticket is not None:
            change["ticket"] = self.ticket
        if self.change_window is not None:
            w = self.change_window
            change["window"] = {
                "tz": w.tz,
                "days": [_DAY_NAMES[d] for d in w.days],
                "start": _format_time(w.start),
                "end": _format_time(w.end),
            }
        if change:
            out["change"] = change
        if self.name is not None:
            out["name"] = self.name
        return out


_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAYS = {name: i for i, name in enumerate(_DAY_NAMES)} | {
    full: i
    for i, full in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
}
MAX_DURATION_S = fields.MAX_DURATION_S
"""Longest soak or safety lag accepted (a year)."""
MAX_PLAN_STAGES = 20
"""Most stages a plan may list."""


def _gate_dict(g: GateSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"metric": g.metric.value}
    for key in ("max", "max_ratio", "max_delta"):
        value = getattr(g, key)
        if value is not None:
            out[key] = value
    out |= {"min_devices": g.min_devices, "min_samples": g.min_samples}
    out["consecutive"] = g.consecutive
    return out


def _format_time(t: datetime.time) -> str:
    return t.strftime("%H:%M:%S" if t.second else "%H:%M")


def parse_duration(value: object, path: str = "duration") -> float:
    """Seconds from a number or a string like ``"30s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1h30m"``.

    Raises:
        InvalidInputError: naming ``path``: not a duration, negative, or not finite.
    """
    return fields.duration(value, path)


def parse_plan(doc: Mapping[str, Any]) -> RolloutPlan:
    """Parse and check a plan document (YAML after ``safe_load``, or ``to_dict()`` output).

    Required: ``model``, ``version``, ``target``. Everything else has the defaults above.

    Raises:
        InvalidInputError: naming the field path: an unknown key, a wrong type, percents that
            do not increase to 100, a bad mode/share, a gate with no or two threshold styles,
            a duplicate stage name or gate metric, a relative ``drift_score`` or
            ``confidence_shift`` gate, an unknown time zone or weekday, a bad time of day.
    """
    top = fields.mapping(doc, "", _TOP_KEYS)
    for key in ("model", "version", "target"):
        if key not in top:
            raise fail(key, "required")
    stages = DEFAULT_STAGES if top.get("stages") is None else _stages(top["stages"], "stages")
    gates = DEFAULT_GATES if top.get("gates") is None else _gates(top["gates"], "gates")
    blast: str | None = None
    if top.get("blast_radius") is not None:
        br = fields.mapping(top["blast_radius"], "blast_radius", ("tag_prefix",))
        if "tag_prefix" not in br:
            raise fail("blast_radius.tag_prefix", "required")
        blast = fields.text(br["tag_prefix"], "blast_radius.tag_prefix")
    ticket: str | None = None
    window: ChangeWindow | None = None
    if top.get("change") is not None:
        ch = fields.mapping(top["change"], "change", ("ticket", "window"))
        ticket = fields.optional_text(ch, "ticket", "change.ticket")
        if ch.get("window") is not None:
            window = _window(ch["window"], "change.window")
    policy = FailurePolicy.ROLLBACK
    if top.get("on_failure") is not None:
        policy = fields.enum(FailurePolicy, top["on_failure"], "on_failure")
    lag = 0.0
    if top.get("safety_lag") is not None:
        lag = parse_duration(top["safety_lag"], "safety_lag")
    slo: dict[str, float] = {}
    if top.get("slo") is not None:
        raw = top["slo"]
        if not isinstance(raw, Mapping):
            raise fail("slo", f"expected a mapping, got {fields.kind(raw)}")
        for k, v in raw.items():
            slo[fields.text(k, "slo")] = fields.number(v, f"slo.{k}")
    return RolloutPlan(
        model=fields.text(top["model"], "model"),
        version=fields.integer(top["version"], "version", 1),
        selector=_selector(top["target"], "target"),
        stages=stages,
        gates=gates,
        blast_radius_tag=blast,
        ticket=ticket,
        change_window=window,
        failure_policy=policy,
        safety_lag_s=lag,
        slo=slo,
        name=fields.optional_text(top, "name", "name"),
    )


_TOP_KEYS = (
    "model",
    "version",
    "target",
    "stages",
    "gates",
    "blast_radius",
    "change",
    "on_failure",
    "safety_lag",
    "slo",
    "name",
)


def _selector(value: object, path: str) -> Selector:
    d = fields.mapping(value, path, ("all", "sites", "tags", "groups", "devices"))
    everything = d.get("all", False)
    if not isinstance(everything, bool):
        raise fail(f"{path}.all", f"expected true or false, got {fields.kind(everything)}")
    lists = {
        k: fields.texts(d[k], f"{path}.{k}")
        for k in ("sites", "tags", "groups", "devices")
        if d.get(k) is not None
    }
    if everything and any(lists.values()):
        raise fail(path, "all: true goes alone (drop it to filter by sites, tags, groups, devices)")
    if not everything and not any(lists.values()):
        raise fail(path, "name the devices: all: true, or sites, tags, groups or devices")
    return Selector(all=everything, **lists)


def _stages(value: object, path: str) -> tuple[StageSpec, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise fail(path, f"expected a list of stages, got {fields.kind(value)}")
    if not 1 <= len(value) <= MAX_PLAN_STAGES:
        raise fail(path, f"expected 1 to {MAX_PLAN_STAGES} stages, got {len(value)}")
    out: list[StageSpec] = []
    for i, raw in enumerate(value):
        p = f"{path}[{i}]"
        d = fields.mapping(raw, p, ("name", "percent", "mode", "share", "soak"))
        for key in ("name", "percent"):
            if key not in d:
                raise fail(f"{p}.{key}", "required")
        mode = Mode.FULL if d.get("mode") is None else fields.enum(Mode, d["mode"], f"{p}.mode")
        share = 0.0 if d.get("share") is None else fields.number(d["share"], f"{p}.share")
        soak = 3600.0 if d.get("soak") is None else parse_duration(d["soak"], f"{p}.soak")
        out.append(
            StageSpec(
                fields.text(d["name"], f"{p}.name"),
                fields.number(d["percent"], f"{p}.percent"),
                mode,
                share,
                soak,
            )
        )
    _check_stages(tuple(out), path)
    return tuple(out)


def _check_stages(stages: tuple[StageSpec, ...], path: str) -> None:
    if not stages:
        raise fail(path, "at least one stage")
    names: set[str] = set()
    for i, st in enumerate(stages):
        p = f"{path}[{i}]"
        if st.name in names:
            raise fail(f"{p}.name", f"duplicate stage name {st.name!r}")
        names.add(st.name)
        if not 0.0 < st.percent <= 100.0:
            raise fail(f"{p}.percent", f"must be in (0, 100], got {st.percent:g}")
        if i and st.percent <= stages[i - 1].percent:
            raise fail(
                f"{p}.percent",
                f"must be greater than {path}[{i - 1}].percent ({stages[i - 1].percent:g}): "
                "percents are cumulative shares of the fleet",
            )
        if st.mode is Mode.FULL:
            if st.share != 0.0:
                raise fail(f"{p}.share", "only split and shadow stages take a share")
        elif not 0.0 < st.share <= 1.0:
            raise fail(f"{p}.share", f"{st.mode.value} needs a share in (0, 1], got {st.share:g}")
        if not 0.0 <= st.soak_s <= MAX_DURATION_S:
            raise fail(f"{p}.soak", f"must be in [0, {MAX_DURATION_S:.0f}] s")
    last = len(stages) - 1
    if stages[last].percent != 100.0:
        raise fail(
            f"{path}[{last}].percent", f"the last stage must be 100, got {stages[last].percent:g}"
        )
    if stages[last].mode is not Mode.FULL:
        raise fail(
            f"{path}[{last}].mode", "the last stage must be full (the version becomes production)"
        )


def _gates(value: object, path: str) -> tuple[GateSpec, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise fail(path, f"expected a list of gates, got {fields.kind(value)}")
    out: list[GateSpec] = []
    keys = ("metric", "max", "max_ratio", "max_delta", "min_devices", "min_samples", "consecutive")
    for i, raw in enumerate(value):
        p = f"{path}[{i}]"
        d = fields.mapping(raw, p, keys)
        if "metric" not in d:
            raise fail(f"{p}.metric", "required")

        def num(key: str, d: Mapping[str, Any] = d, p: str = p) -> float | None:
            return None if d.get(key) is None else fields.number(d[key], f"{p}.{key}")

        def count(key: str, default: int, d: Mapping[str, Any] = d, p: str = p) -> int:
            low = 0 if key == "min_samples" else 1
            return default if d.get(key) is None else fields.integer(d[key], f"{p}.{key}", low)

        out.append(
            GateSpec(
                fields.enum(GateMetric, d["metric"], f"{p}.metric"),
                max=num("max"),
                max_ratio=num("max_ratio"),
                max_delta=num("max_delta"),
                min_devices=count("min_devices", 1),
                min_samples=count("min_samples", 100),
                consecutive=count("consecutive", 2),
            )
        )
    _check_gates(tuple(out), path)
    return tuple(out)


def _check_gates(gates: tuple[GateSpec, ...], path: str) -> None:
    if not gates:
        raise fail(path, "at least one gate (a stage never passes blind)")
    seen: set[GateMetric] = set()
    for i, g in enumerate(gates):
        p = f"{path}[{i}]"
        if g.metric in seen:
            raise fail(f"{p}.metric", f"{g.metric.value} appears twice")
        seen.add(g.metric)
        relative = g.max_ratio is not None or g.max_delta is not None
        if g.max is not None and relative:
            raise fail(p, "either max (absolute) or max_ratio/max_delta (relative), not both")
        if g.max is None and not relative:
            raise fail(p, "needs a threshold: max, or max_ratio and/or max_delta")
        if g.max is not None and g.max < 0:
            raise fail(f"{p}.max", f"must not be negative, got {g.max:g}")
        if g.max_ratio is not None and g.max_ratio < 1:
            raise fail(f"{p}.max_ratio", f"must be at least 1, got {g.max_ratio:g}")
        if g.max_delta is not None and g.max_delta < 0:
            raise fail(f"{p}.max_delta", f"must not be negative, got {g.max_delta:g}")
        if g.metric is GateMetric.CONFIDENCE_SHIFT and relative:
            raise fail(p, "confidence_shift is already against the control: use max")
        if g.metric is GateMetric.DRIFT_SCORE and relative:
            raise fail(p, "drift_score is against the version's reference profile: use max")
        if g.min_devices < 1 or g.consecutive < 1 or g.min_samples < 0:
            raise fail(p, "min_devices and consecutive must be at least 1, min_samples at least 0")


def _window(value: object, path: str) -> ChangeWindow:
    d = fields.mapping(value, path, ("tz", "days", "start", "end"))
    for key in ("tz", "days", "start", "end"):
        if key not in d:
            raise fail(f"{path}.{key}", "required")
    tz = fields.text(d["tz"], f"{path}.tz")
    raw_days = d["days"]
    if isinstance(raw_days, str) or not isinstance(raw_days, Sequence) or not raw_days:
        raise fail(f"{path}.days", "expected a non-empty list of weekdays (mon..sun or 0..6)")
    days: list[int] = []
    for i, day in enumerate(raw_days):
        p = f"{path}.days[{i}]"
        if isinstance(day, str) and day.lower() in _DAYS:
            n = _DAYS[day.lower()]
        elif isinstance(day, int) and not isinstance(day, bool) and 0 <= day <= 6:
            n = day
        else:
            raise fail(p, f"expected a weekday (mon..sun or 0 = Monday..6), got {day!r}")
        if n in days:
            raise fail(p, f"{_DAY_NAMES[n]} appears twice")
        days.append(n)
    w = ChangeWindow(
        tz,
        tuple(sorted(days)),
        fields.time_of_day(d["start"], f"{path}.start"),
        fields.time_of_day(d["end"], f"{path}.end"),
    )
    _check_window(w, path)
    return w


def _check_window(w: ChangeWindow, path: str) -> None:
    try:
        zoneinfo.ZoneInfo(w.tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise fail(
            f"{path}.tz", f"unknown time zone {w.tz!r} (use an IANA name such as Europe/Berlin)"
        ) from None
    if not w.days or any(not 0 <= d <= 6 for d in w.days):
        raise fail(f"{path}.days", "weekdays are 0 (Monday) to 6 (Sunday)")
    if w.start == w.end:
        raise fail(f"{path}.end", "must differ from start")
