"""Operator overrides (issue 9, ADR 0021): the application tells the agent that a human
overrode or confirmed an answer the model gave.

Two ways in, one meaning:

* ``POST /v2/models/{model}[/versions/{version}]/overrides`` with a JSON body
  ``{"outcome": "overridden" | "confirmed", "version"?: str, "request_id"?: str,
  "label"?: str | number}``;
* on any OIP v2 inference request, the request parameter
  ``"parameters": {"modelfleet_override": {...the same object...}}``, reporting on a
  *previous* answer while asking for the next one (one round trip for an application
  that already sends a request per item).

The version is the path's, else the body's ``version`` (the ``model_version`` of the
answer being judged, as the OIP response gave it), else the production version now. It
must be a version the agent has loaded (production, candidate or previous); a shadow
candidate's answers never reach the application, so it cannot be overridden. Only counts
leave the device (the window's ``overrides`` counters per (model, version, role));
``request_id`` and ``label`` are checked and logged at debug level, never stored or sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from modelfleet.errors import ConflictError, InvalidInputError, NotFoundError
from modelfleet.rollout.desired_state import Mode
from modelfleet.serving.router import Route

__all__ = [
    "OUTCOMES",
    "OVERRIDE_PARAMETER",
    "Override",
    "OverrideSink",
    "parse_override",
    "resolve_override",
]

#: What a human did with an answer.
OUTCOMES: Final = ("overridden", "confirmed")
#: The OIP v2 request parameter that carries an override of a previous answer.
OVERRIDE_PARAMETER: Final = "modelfleet_override"
#: Told (model, version, role, outcome) of each override (the telemetry window recorder).
OverrideSink = Callable[[str, str, str, str], None]

_MAX_TEXT: Final = 256
_KEYS: Final = frozenset({"outcome", "version", "request_id", "label"})


@dataclass(frozen=True, slots=True)
class Override:
    """One checked override report."""

    outcome: str
    version: str | None = None
    request_id: str | None = None
    label: str | float | None = None


def _text(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT or "\x00" in value:
        raise InvalidInputError(f"override {key!r} must be a string of 1 to {_MAX_TEXT} characters")
    return value


def parse_override(doc: Any) -> Override:
    """Check an override object (the endpoint's body or the request parameter's value).

    Raises:
        InvalidInputError: not an object, an unknown field, an outcome other than
            ``overridden``/``confirmed``, or a field of the wrong type or too long.
    """
    if not isinstance(doc, Mapping):
        raise InvalidInputError("an override must be a JSON object with an 'outcome'")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise InvalidInputError(
            f"unknown override field(s) {', '.join(map(repr, unknown))}; "
            "use outcome, version, request_id, label"
        )
    outcome = doc.get("outcome")
    if outcome not in OUTCOMES:
        raise InvalidInputError(
            f"override 'outcome' must be 'overridden' or 'confirmed', not {outcome!r}"
        )
    label = doc.get("label")
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, str | int | float):
            raise InvalidInputError("override 'label' must be a string or a number")
        if isinstance(label, str):
            label = _text(doc, "label")
        elif not math.isfinite(label):
            raise InvalidInputError("override 'label' must be a finite number")
    return Override(str(outcome), _text(doc, "version"), _text(doc, "request_id"), label)


def resolve_override(
    route: Route | None, model: str, override: Override, path_version: str | None = None
) -> tuple[str, str]:
    """The ``(version, role)`` an override is counted under.

    Raises:
        NotFoundError: the model is not served, or the version is not loaded.
        InvalidInputError: the path and the body name different versions.
        ConflictError: the version is a shadow candidate (its answers never reach the
            application).
    """
    if route is None:
        raise NotFoundError(f"unknown model {model!r}")
    if path_version is not None and override.version not in (None, path_version):
        raise InvalidInputError(
            f"the path names version {path_version!r} but the override {override.version!r}"
        )
    version = path_version or override.version
    if version is None:
        return route.production.version, "production"
    found = route.find(version)
    if found is None:
        raise NotFoundError(f"model {model!r} has no loaded version {version!r}")
    if found is route.production:
        return version, "production"
    if found is route.candidate:
        if route.mode is Mode.SHADOW:
            raise ConflictError(
                f"version {version!r} of {model!r} runs in shadow: its answers are never "
                "returned, so none can be overridden"
            )
        return version, "candidate"
    return version, "production"  # the previous version: it served as production
