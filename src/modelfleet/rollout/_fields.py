"""Typed readers for plan documents: each names the field path in its error.

Private to :mod:`modelfleet.rollout.plan`; every reader raises
:class:`~modelfleet.errors.InvalidInputError` as ``"<path>: <what is wrong>"``.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, TypeVar

from modelfleet.errors import InvalidInputError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")
MAX_DURATION_S = 365 * 86400.0
"""Longest soak or safety lag accepted (a year)."""


def fail(path: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"{path}: {message}" if path else message)


def mapping(value: object, path: str, known: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(path, f"expected a mapping, got {kind(value)}")
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        where = ", ".join(f"{path}.{k}" if path else k for k in unknown)
        raise fail("", f"{where}: unknown key; known here: {', '.join(known)}")
    return value


def kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(path, f"expected a number, got {kind(value)}")
    f = float(value)
    if not math.isfinite(f):
        raise fail(path, f"must be finite, got {value}")
    return f


def integer(value: object, path: str, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, f"expected an integer, got {kind(value)}")
    if value < minimum:
        raise fail(path, f"must be at least {minimum}, got {value}")
    return value


def text(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(path, f"expected a non-empty string, got {kind(value)}")
    return value


def texts(value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise fail(path, f"expected a list of strings, got {kind(value)}")
    out = tuple(text(v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(set(out)) != len(out):
        raise fail(path, "duplicate entries")
    return out


def optional_text(doc: Mapping[str, Any], key: str, path: str) -> str | None:
    value = doc.get(key)
    return None if value is None else text(value, path)


E = TypeVar("E", bound=StrEnum)


def enum(cls: type[E], value: object, path: str) -> E:
    choices = ", ".join(m.value for m in cls)
    if not isinstance(value, str):
        raise fail(path, f"expected one of {choices}, got {kind(value)}")
    try:
        return cls(value.lower())
    except ValueError:
        raise fail(path, f"expected one of {choices}, got {value!r}") from None


def time_of_day(value: object, path: str) -> datetime.time:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 (PyYAML) reads an unquoted 14:00 as the sexagesimal integer 840: minutes.
        if 0 <= value < 1440:
            return datetime.time(value // 60, value % 60)
        raise fail(path, f'expected a time of day "HH:MM" (quote it in YAML), got {value!r}')
    m = _TIME.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise fail(path, f"expected a time of day HH:MM, got {value!r}")
    return datetime.time(int(m[1]), int(m[2]), int(m[3] or 0))


def duration(value: object, path: str) -> float:
    """Seconds from a number or a duration string; see :func:`.plan.parse_duration`."""
    if isinstance(value, str):
        raw = value.strip().lower()
        parts = _DURATION.findall(raw)
        if not raw or "".join(n + u for n, u in parts) != raw:
            if re.fullmatch(r"\d+(?:\.\d+)?", raw):
                seconds = float(raw)
            else:
                raise fail(path, f"not a duration: {value!r} (use seconds or 30s, 30m, 1h, 2d)")
        else:
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        seconds = number(value, path)
    if seconds < 0:
        raise fail(path, f"must not be negative, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise fail(path, f"must be at most {MAX_DURATION_S:.0f} s (a year), got {value!r}")
    return seconds
