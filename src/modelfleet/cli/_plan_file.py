"""Rollout plans as the operator writes them: a YAML file, or a few command-line options.

The CLI reads the file (``yaml.safe_load`` semantics) and hands the hub the document as
written; checking the plan's fields is :func:`modelfleet.rollout.plan.parse_plan`'s job,
on the hub and, before anything is sent, here. Two YAML 1.1 traps are closed in the loader:
a key given twice is an error (safe_load keeps the last one silently), and a clock time
such as ``14:00`` stays a string (YAML 1.1 reads it as the base-60 number 840).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from modelfleet.cli._errors import UsageError
from modelfleet.errors import InvalidInputError
from modelfleet.rollout.plan import DEFAULT_STAGES, RolloutPlan, parse_plan
from modelfleet.rollout.plan import parse_duration as plan_duration

__all__ = [
    "MAX_PLAN_BYTES",
    "check_plan",
    "load_plan_file",
    "parse_duration",
    "plan_from_options",
    "with_ticket",
]

MAX_PLAN_BYTES = 4 << 20
"""The hub's limit on a plan (one naming 10,000 devices explicitly is about 250 KB)."""


def parse_duration(text: str, option: str) -> float:
    """Seconds in ``text``: a number of seconds, or ``30s``, ``30m``, ``1h``, ``2d``, ``1h30m``
    (the plan's own rule, :func:`modelfleet.rollout.plan.parse_duration`).

    Raises:
        UsageError: anything else, naming ``option``.
    """
    try:
        return plan_duration(text, option)
    except InvalidInputError as e:
        raise UsageError(str(e)) from None


def check_plan(doc: Mapping[str, Any], source: str) -> RolloutPlan:
    """The plan ``doc`` parsed as the hub will parse it, so that a mistake is reported
    before anything is sent.

    Raises:
        InvalidInputError: ``source: field.path: what is wrong``.
    """
    try:
        return parse_plan(doc)
    except InvalidInputError as e:
        raise InvalidInputError(f"{source}: {e}") from None


class _PlanLoader(yaml.SafeLoader):  # type: ignore[misc]
    """``yaml.SafeLoader`` that refuses duplicate keys and keeps ``HH:MM`` a string."""


# The resolver table is per class: copy SafeLoader's before changing it.
_PlanLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CLOCK_TIME = re.compile(r"^[0-9]{1,2}:[0-5][0-9](?::[0-5][0-9])?$")
for _digit in "0123456789":
    # First in the list: it wins over YAML 1.1's sexagesimal int and float.
    _PlanLoader.yaml_implicit_resolvers.setdefault(_digit, []).insert(
        0, ("tag:yaml.org,2002:str", _CLOCK_TIME)
    )


def _mapping_without_duplicates(loader: _PlanLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


_PlanLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: what is wrong and where (1-based line and column)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = e.problem or e.context or "malformed"
        return f"{what}{where}"
    return " ".join(str(e).split())


def load_plan_file(path: str) -> dict[str, Any]:
    """The plan document in the YAML (or JSON) file ``path`` (``-``: standard input).

    Returns:
        The mapping as written (keys and values unchecked: the plan parser checks them).

    Raises:
        UsageError: no such file, unreadable, too large, not YAML, or not a mapping.
    """
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_PLAN_BYTES + 1)
        else:
            with Path(path).open("rb") as f:
                raw = f.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read {name}: {e.strerror or e}") from e
    if len(raw) > MAX_PLAN_BYTES:
        raise UsageError(f"{name} is over {MAX_PLAN_BYTES} bytes: not a rollout plan")
    try:
        text = raw.decode("utf-8")
        doc = yaml.load(text, Loader=_PlanLoader)
    except UnicodeDecodeError:
        raise UsageError(f"{name} is not UTF-8 text: not a rollout plan") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{name} is not valid YAML: {_yaml_problem(e)}") from e
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else f"a {type(doc).__name__}"
        raise UsageError(
            f"{name}: a rollout plan is a mapping (model, version, target, stages, …), not {kind}"
        )
    return doc


def with_ticket(doc: dict[str, Any], ticket: str | None) -> dict[str, Any]:
    """``doc`` with its change ticket (``change.ticket``) set to ``ticket``: the option
    wins over the file. A ``change`` that is not a mapping is left for the plan parser to
    refuse."""
    if not ticket:
        return doc
    change = doc.get("change")
    if change is None:
        return {**doc, "change": {"ticket": ticket}}
    if isinstance(change, dict):
        return {**doc, "change": {**change, "ticket": ticket}}
    return doc


def _percents(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--stages wants percents like 1,9,90,100, not {text!r}") from None
    if not values:
        raise UsageError("--stages wants percents like 1,9,90,100")
    return values


def _stage_names(percents: Sequence[float]) -> list[str]:
    if tuple(percents) == tuple(st.percent for st in DEFAULT_STAGES):
        return [st.name for st in DEFAULT_STAGES]
    names = [f"stage-{i + 1}" for i in range(len(percents))]
    names[0] = "canary"
    if len(names) > 1 and percents[-1] == 100:
        names[-1] = "full"
    return names


def plan_from_options(
    model: str,
    version: int,
    *,
    all_devices: bool,
    sites: Sequence[str],
    tags: Sequence[str],
    groups: Sequence[str],
    devices: Sequence[str],
    stages: str | None,
    soak: str | None,
    on_failure: str | None,
    ticket: str | None,
    name: str | None = None,
) -> dict[str, Any]:
    """The plan document for ``rollout create MODEL VERSION --all|--site …``.

    Stages: ``stages`` percents (default 1, 9, 90, 100: canary, early, stable, full); each
    stage below 100 % soaks ``soak``, the 100 % stage none (as the default plan: nothing is
    left to compare with there, so the rollout completes). Both left to the plan's
    defaults when neither is given.

    Raises:
        UsageError: no target, ``--all`` with a filter, a malformed percent list, duration
            or failure policy.
    """
    filters = {"sites": sites, "tags": tags, "groups": groups, "devices": devices}
    given = {k: list(v) for k, v in filters.items() if v}
    if all_devices and given:
        raise UsageError(
            "--all takes every device: give it alone, or --site/--tag/--group/--device"
        )
    if not all_devices and not given:
        raise UsageError("name the target: --all, or --site, --tag, --group, --device (repeatable)")
    doc: dict[str, Any] = {
        "model": model,
        "version": version,
        "target": {"all": True} if all_devices else given,
    }
    if name:
        doc["name"] = name
    if stages is not None or soak is not None:
        percents = (
            _percents(stages) if stages is not None else [st.percent for st in DEFAULT_STAGES]
        )
        soak_s = parse_duration(soak, "--soak") if soak is not None else None
        doc["stages"] = [
            {"name": n, "percent": int(p) if p.is_integer() else p}
            | ({"soak": soak_s if p < 100 else 0} if soak_s is not None else {})
            for n, p in zip(_stage_names(percents), percents, strict=True)
        ]
    if on_failure is not None:
        if on_failure not in ("pause", "rollback"):
            raise UsageError(f"--on-failure is pause or rollback, not {on_failure!r}")
        doc["on_failure"] = on_failure
    if ticket:
        doc["change"] = {"ticket": ticket}
    return doc
