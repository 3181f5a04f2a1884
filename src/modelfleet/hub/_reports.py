"""What the hub reads of a device's check-in report: the changes that go to the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from modelfleet.hub._values import JSONDict

_MAX_EVENTS_LOGGED = 20


def _running(report: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    models = report.get("models")
    if not isinstance(models, Mapping):
        return out
    for name, slots in models.items():
        if not isinstance(slots, Mapping):
            continue
        entry: dict[str, Any] = {}
        for slot in ("active", "candidate", "previous"):
            rec = slots.get(slot)
            entry[slot] = rec.get("version") if isinstance(rec, Mapping) else None
        entry["mode"], entry["share"] = slots.get("mode"), slots.get("share")
        out[str(name)] = entry
    return out


def report_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> JSONDict:
    """What changed between two device reports, for the audit log (pure).

    Returns:
        Only the keys that changed among ``running`` (per model: active, candidate and
        previous versions, mode, share), ``applied_serial`` and ``last_refusal``, plus
        ``new_events`` (events not in the old report, at most 20); empty if nothing did.
    """
    changes: JSONDict = {}
    if _running(new) != _running(old):
        changes["running"] = _running(new)
    for key in ("applied_serial", "last_refusal"):
        if new.get(key) != old.get(key):
            changes[key] = new.get(key)
    old_events = old.get("events") if isinstance(old.get("events"), list) else []
    new_events = new.get("events") if isinstance(new.get("events"), list) else []
    seen = {orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in old_events or []}
    fresh = [
        e for e in new_events or [] if orjson.dumps(e, option=orjson.OPT_SORT_KEYS) not in seen
    ]
    if fresh:
        changes["new_events"] = fresh[-_MAX_EVENTS_LOGGED:]
    return changes


_MAX_SERVED = 64


def served_versions(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(model, slot, version)`` for each version a report says the device serves now
    (slots ``active`` and ``candidate``; pure). At most 64 entries, names cut to the
    column widths, so a malformed report cannot flood the ``device_serving`` table."""
    out: list[tuple[str, str, str]] = []
    for name, entry in _running(report).items():
        for slot in ("active", "candidate"):
            version = entry.get(slot)
            if version is not None and not isinstance(version, bool | dict | list):
                out.append((name[:128], slot, str(version)[:64]))
    return out[:_MAX_SERVED]
