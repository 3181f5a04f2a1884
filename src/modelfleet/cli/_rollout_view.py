"""A rollout view (the hub's ``GET /api/v1/rollouts/{id}`` answer) as people read it.

Pure: dicts in, rich renderables and strings out. Every field is read with ``.get`` so
that a view from a newer or older hub still renders (missing parts show ``-``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from modelfleet.cli._output import make_table

__all__ = [
    "TERMINAL_STATES",
    "change_key",
    "duration_text",
    "gate_threshold_text",
    "gate_value_text",
    "is_terminal",
    "render_plan",
    "render_rollout",
    "render_rollout_list",
    "summary_line",
    "time_text",
]

TERMINAL_STATES = frozenset({"completed", "rolled_back", "aborted"})
"""States a rollout never leaves."""

_STATE_STYLE = {
    "awaiting_approval": "magenta",
    "running": "cyan",
    "paused": "yellow",
    "completed": "green",
    "rolled_back": "bold red",
    "aborted": "red",
}
_VERDICT_STYLE = {"pass": "green", "hold": "yellow", "bad": "dark_orange", "fail": "bold red"}
_FRACTION_METRICS = frozenset({"error_rate", "refusals", "shadow_disagreement", "override_rate"})
_COUNT_METRICS = frozenset({"guard_rollbacks", "crashes"})
_DEVICE_STATES = ("total", "waiting", "assigned", "running", "rolled_back", "offline")


def is_terminal(view: Mapping[str, Any]) -> bool:
    """Whether the rollout is completed, rolled back or aborted."""
    return view.get("state") in TERMINAL_STATES


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def duration_text(seconds: Any) -> str:
    """``45s``, ``12m 03s``, ``30m``, ``2h 05m``, ``1h``, ``3d 04h``; ``-`` for none."""
    s = _number(seconds)
    if s is None:
        return "-"
    sign, s = ("-" if s < 0 else ""), abs(round(s))
    days, rest = divmod(int(s), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours:02d}h" if hours else f"{sign}{days}d"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m" if minutes else f"{sign}{hours}h"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s" if secs else f"{sign}{minutes}m"
    return f"{sign}{secs}s"


def time_text(value: Any) -> Any:
    """An ISO 8601 time to the second, UTC as ``Z``: ``2026-12-02T16:02:14Z``; anything
    else as it is."""
    if not isinstance(value, str):
        return value
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return value
    if t.utcoffset() == timedelta(0):
        return t.replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    return t.replace(microsecond=0).isoformat()


def gate_value_text(metric: str, value: Any) -> str:
    """A gate's value in its unit: latency in ms, rates in %, counts as counts."""
    v = _number(value)
    if v is None:
        return "-"
    if metric == "latency_p99":
        return f"{v * 1000:.1f} ms"
    if metric in _FRACTION_METRICS:
        return f"{v * 100:.2f} %"
    if metric in _COUNT_METRICS and v.is_integer():
        return str(int(v))
    return f"{v:.3g}"


def _gate_spec(view: Mapping[str, Any], metric: str) -> Mapping[str, Any] | None:
    plan = view.get("plan")
    gates = plan.get("gates") if isinstance(plan, Mapping) else None
    for g in gates if isinstance(gates, list) else []:
        if isinstance(g, Mapping) and g.get("metric") == metric:
            return g
    return None


def gate_threshold_text(view: Mapping[str, Any], gate: Mapping[str, Any]) -> str:
    """``≤ 52.0 ms``: the limit the hub computed, else the plan's rule (``≤ 1.2× control``)."""
    metric = str(gate.get("metric", ""))
    if _number(gate.get("limit")) is not None:
        return f"≤ {gate_value_text(metric, gate['limit'])}"
    spec = _gate_spec(view, metric)
    if spec is None:
        return "-"
    if _number(spec.get("max")) is not None:
        return f"≤ {gate_value_text(metric, spec['max'])}"
    parts = []
    if _number(spec.get("max_ratio")) is not None:
        parts.append(f"{spec['max_ratio']:g}× control")
    if _number(spec.get("max_delta")) is not None:
        delta = gate_value_text(metric, spec["max_delta"])
        parts.append(f"control + {delta}" if not parts else f"+ {delta}")
    return f"≤ {' '.join(parts)}" if parts else "-"


def _styled(text: Any, styles: Mapping[str, str]) -> Text:
    word = "-" if text is None else str(text)
    return Text(word, style=styles.get(word, ""))


def _stage_text(view: Mapping[str, Any]) -> str:
    stage = view.get("stage")
    count = view.get("stages")
    if not isinstance(stage, Mapping) or not isinstance(stage.get("index"), int):
        index = view.get("stage_index")
        if isinstance(index, int) and index >= 0:
            return f"stage {index + 1}/{count or '?'} {view.get('stage_name') or ''}".rstrip()
        return "not started"
    index = stage["index"]
    if index < 0:
        return "not started"
    parts = [f"stage {index + 1}/{count or '?'} {stage.get('name') or ''}".rstrip()]
    percent = _number(stage.get("percent"))
    if percent is not None:
        parts.append(f"{percent:g} %")
    mode = stage.get("mode")
    if mode and mode != "full":
        share = _number(stage.get("share"))
        parts.append(f"{mode} {share:.0%}" if share is not None else str(mode))
    return " · ".join(parts)


def _soak_text(view: Mapping[str, Any]) -> str:
    stage = view.get("stage")
    if not isinstance(stage, Mapping) or _number(stage.get("soak_s")) is None:
        return "-"
    left = _number(stage.get("soak_left_s"))
    total = duration_text(stage["soak_s"])
    if left is None or is_terminal(view):
        return total
    if left <= 0:
        return f"{total}, soaked (advances when every gate passes)"
    return f"{total}, {duration_text(left)} left"


def summary_line(view: Mapping[str, Any]) -> str:
    """One line for logs: ``ro-1 iris v3 running · stage 1/4 canary · 1 % · devices …``."""
    devices = view.get("devices")
    head = (
        f"{view.get('id')} {view.get('model')} v{view.get('version')} {view.get('state')}"
        f" · {_stage_text(view)}"
    )
    if isinstance(devices, Mapping):
        counts = ", ".join(
            f"{devices[k]} {k.replace('_', ' ')}" for k in _DEVICE_STATES if k in devices
        )
        head += f" · devices: {counts}"
    gates = view.get("gates")
    if isinstance(gates, list) and gates:
        head += " · gates: " + ", ".join(
            f"{g.get('metric')} {g.get('verdict')}" for g in gates if isinstance(g, Mapping)
        )
    reason = view.get("reason")
    return f"{head} · {reason}" if reason else head


def change_key(view: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a person watching cares about changing (not the soak clock ticking down)."""
    stage = view.get("stage")
    gates = view.get("gates")
    return (
        view.get("state"),
        stage.get("index") if isinstance(stage, Mapping) else view.get("stage_index"),
        repr(view.get("devices")),
        tuple(
            (g.get("metric"), g.get("verdict"), g.get("samples"), g.get("value"))
            for g in (gates if isinstance(gates, list) else [])
            if isinstance(g, Mapping)
        ),
        view.get("reason"),
    )


def render_rollout(view: Mapping[str, Any], *, note: str | None = None) -> RenderableType:
    """The whole view: head, stage and soak, devices per state, gates, recent history.

    Args:
        view: the hub's rollout view.
        note: a line to show under the head (e.g. "hub unreachable, retrying").
    """
    head = Text.assemble(
        (f"{view.get('id')}  ", "bold"),
        f"{view.get('model')} v{view.get('version')}",
        f" (control v{view['from_version']})  " if view.get("from_version") else "  ",
        _styled(view.get("state"), _STATE_STYLE),
    )
    parts: list[RenderableType] = [head]
    if note:
        parts.append(Text(note, style="yellow"))
    fields = {
        "stage": _stage_text(view),
        "soak": _soak_text(view),
        "verdict": _styled(view["verdict"], _VERDICT_STYLE) if view.get("verdict") else None,
        "reason": view.get("reason") or None,
        "ticket": view.get("ticket"),
        "created by": view.get("created_by"),
        "approved by": view.get("approved_by"),
        "evaluated": time_text(view.get("evaluated_at")),
        "updated": time_text(view.get("updated_at")),
        "completed": time_text(view.get("completed_at")),
    }
    parts.append(
        make_table(
            None,
            ["field", "value"],
            [(k, v) for k, v in fields.items() if v not in (None, "")],
            header=False,
        )
    )
    devices = view.get("devices")
    if isinstance(devices, Mapping):
        parts.append(
            make_table(
                "Devices",
                [k.replace("_", " ") for k in _DEVICE_STATES],
                [[devices.get(k) for k in _DEVICE_STATES]],
            )
        )
    gates = [g for g in view.get("gates") or [] if isinstance(g, Mapping)]
    if gates:
        parts.append(
            make_table(
                "Gates (this stage against the control group)",
                [
                    "metric",
                    "value",
                    "control",
                    "threshold",
                    "devices",
                    "samples",
                    "verdict",
                    "streak",
                    "why",
                ],
                [
                    (
                        g.get("metric"),
                        gate_value_text(str(g.get("metric")), g.get("value")),
                        gate_value_text(str(g.get("metric")), g.get("control")),
                        gate_threshold_text(view, g),
                        g.get("devices"),
                        g.get("samples"),
                        _styled(g.get("verdict"), _VERDICT_STYLE),
                        g.get("streak"),
                        g.get("reason") or None,
                    )
                    for g in gates
                ],
            )
        )
    history = [h for h in view.get("history") or [] if isinstance(h, Mapping)]
    if history:
        parts.append(
            make_table(
                "History (latest last)",
                ["at", "actor", "action", "detail"],
                [
                    (time_text(h.get("at")), h.get("actor"), h.get("action"), _history_detail(h))
                    for h in history[-10:]
                ],
            )
        )
    return Group(*parts)


def _history_detail(entry: Mapping[str, Any]) -> Any:
    for key in ("reason", "detail", "details"):
        if entry.get(key):
            return entry[key]
    return None


def render_rollout_list(rollouts: Sequence[Mapping[str, Any]]) -> RenderableType:
    """``rollout list`` as a table."""

    def stage(r: Mapping[str, Any]) -> str:
        index = r.get("stage_index")
        if not isinstance(index, int) or index < 0:
            return "-"
        return f"{index + 1}/{r.get('stages') or '?'} {r.get('stage_name') or ''}".rstrip()

    return make_table(
        "Rollouts",
        ["id", "model", "version", "state", "stage", "devices", "created", "updated"],
        [
            (
                r.get("id"),
                r.get("model"),
                r.get("version"),
                _styled(r.get("state"), _STATE_STYLE),
                stage(r),
                r.get("devices_total"),
                time_text(r.get("created_at")),
                time_text(r.get("updated_at")),
            )
            for r in rollouts
        ],
    )


def render_plan(plan: Mapping[str, Any]) -> RenderableType:
    """A checked plan (``RolloutPlan.to_dict()``) for ``rollout create --dry-run``."""
    target = plan.get("target")
    raw_change = plan.get("change")
    change: Mapping[str, Any] = raw_change if isinstance(raw_change, Mapping) else {}
    head = make_table(
        None,
        ["field", "value"],
        [
            ("model", f"{plan.get('model')} v{plan.get('version')}"),
            ("target", target),
            ("on failure", plan.get("on_failure")),
            ("ticket", change.get("ticket")),
            ("change window", change.get("window")),
            ("blast radius", plan.get("blast_radius")),
            ("safety lag", duration_text(plan.get("safety_lag"))),
        ],
        header=False,
    )
    stages = make_table(
        "Stages",
        ["name", "percent", "mode", "share", "soak"],
        [
            (
                s.get("name"),
                s.get("percent"),
                s.get("mode"),
                s.get("share"),
                duration_text(s.get("soak")),
            )
            for s in plan.get("stages") or []
            if isinstance(s, Mapping)
        ],
    )
    gates = make_table(
        "Gates",
        ["metric", "threshold", "min devices", "min samples", "consecutive"],
        [
            (
                g.get("metric"),
                gate_threshold_text({"plan": plan}, {"metric": g.get("metric")}),
                g.get("min_devices"),
                g.get("min_samples"),
                g.get("consecutive"),
            )
            for g in plan.get("gates") or []
            if isinstance(g, Mapping)
        ],
    )
    return Group(head, stages, gates)
