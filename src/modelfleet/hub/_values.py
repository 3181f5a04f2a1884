"""Pure helpers shared by the hub service: the JSON dict alias, name and SLO checks, timestamps,
and ``.npy`` parsing.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from modelfleet.errors import InvalidInputError

ALL_DEVICES: Literal["all"] = "all"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JSONDict = dict[str, Any]


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInputError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (max 128)"
        )
    return value


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat() if at is not None else None


def load_npy(data: bytes) -> np.ndarray:
    """Parse ``.npy`` bytes (no pickles).

    Raises:
        InvalidInputError: not a valid ``.npy`` array of numbers or strings.
    """
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InvalidInputError(f"the sample input is not a valid .npy array: {e}") from e
    if not isinstance(array, np.ndarray):
        raise InvalidInputError("the sample input must be a single .npy array")
    return array


def _check_slo(slo: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (slo or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"SLO {key!r} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise InvalidInputError(f"SLO {key!r} must be finite")
        out[str(key)] = float(value)
    # The device enforces it: refuse here what the device's guard would not accept.
    from modelfleet.monitoring.guard import SloPolicy

    SloPolicy.from_mapping(out)
    return out
