"""Telemetry windows on the device: counts per (model, version, role), closed on clock time.

:class:`WindowRecorder` is a request observer of the agent's fan-out (it matches
``modelfleet.agent.observers.RequestObserver`` structurally; telemetry never imports the
agent). The request path only increments in-memory counters here: O(1), no I/O, one
uncontended lock so that :meth:`WindowRecorder.close`, called by the closer thread, swaps the
whole table at once and never loses or splits a request between two windows.

A closed window is a wire-format v1 record (:mod:`modelfleet.telemetry.wire`) without its
``seq``: the buffer assigns that when it appends the record.

Every routed version gets a window each period even when it served nothing (production
always, a candidate or shadow while assigned), so the hub can tell "no traffic" from "no
data" (issue 7).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from modelfleet.monitoring.histogram import LATENCY_EDGES_S, Histogram
from modelfleet.telemetry.wire import CONFIDENCE_EDGES, OUTCOME_KEYS, encode_histogram

__all__ = ["Attach", "ProductionOf", "RolloutOf", "Routed", "WindowRecorder"]

#: (model, version) -> the rollout id the version is served under, or None.
RolloutOf = Callable[[str, str], "str | None"]
#: () -> the (model, version, role) triples routed right now (idle windows are emitted for them).
Routed = Callable[[], Iterable[tuple[str, str, str]]]
#: (model) -> the production version routed for ``model`` now, or None.
ProductionOf = Callable[[str], "str | None"]
#: (the keys a close emits) -> extra fields per (model, version, role) for this window,
#: e.g. the drift profile counts (issue 9); keys it adds get a window too.
Attach = Callable[[list[tuple[str, str, str]]], Mapping[tuple[str, str, str], Mapping[str, Any]]]

_log = logging.getLogger("modelfleet.telemetry")

_OUTCOME_INDEX: Final[dict[str, int]] = {k: i for i, k in enumerate(OUTCOME_KEYS)}
_LAT: Final = LATENCY_EDGES_S
_CONF: Final = CONFIDENCE_EDGES
_CASCADE: Final = {
    "local": "local",
    "upstream": "upstream",
    "fallback": "failed",
    "failed": "failed",
}


class _Counts:
    """One window's counts of one (model, version, role)."""

    __slots__ = (
        "cascade",
        "compute",
        "confidence",
        "guard",
        "latency",
        "overrides",
        "queue",
        "refusals",
        "requests",
        "shadow",
        "updates",
    )

    def __init__(self) -> None:
        self.requests = [0, 0, 0, 0]
        self.latency = Histogram(_LAT)
        self.compute = Histogram(_LAT)
        self.queue = Histogram(_LAT)
        self.confidence = Histogram(_CONF)
        self.guard = {"breaches": 0, "rollbacks": 0}
        self.shadow = {"compared": 0, "disagreed": 0, "dropped": 0}
        self.cascade = {"local": 0, "upstream": 0, "failed": 0}
        self.overrides = {"overridden": 0, "confirmed": 0}
        self.refusals = 0
        self.updates = 0

    def to_record(self) -> dict[str, Any]:
        return {
            "requests": dict(zip(OUTCOME_KEYS, self.requests, strict=True)),
            "latency_s": encode_histogram(self.latency, "latency_s.v1"),
            "compute_s": encode_histogram(self.compute, "latency_s.v1"),
            "queue_s": encode_histogram(self.queue, "latency_s.v1"),
            "confidence": encode_histogram(self.confidence, "confidence.v1"),
            "guard": dict(self.guard),
            "shadow": dict(self.shadow),
            "cascade": dict(self.cascade),
            "overrides": dict(self.overrides),
            "refusals": self.refusals,
            "updates": self.updates,
        }


class WindowRecorder:
    """Counts what the agent serves into the current window; :meth:`close` ends it.

    Thread-safety: every method may be called from any thread; the request path (the event
    loop) holds the lock only for a few increments, the closer only for a dict swap.

    Args:
        device_id: this device's id (every record carries it).
        opened_at: device time at which the first window opens.
        rollout_of: the rollout id a version is served under (None when none).
        routed: the (model, version, role) triples routed now.
        production_of: the production version of a model now (where update events and
            refusals of that model are counted), or None when it serves none.
        attach: called at each close, after the swap, with the keys it closes; the fields
            it returns are added to those windows (new wire fields, kept by older hubs as
            unknown fields). A failing ``attach`` adds nothing (logged).
    """

    #: The fan-out computes the top-class confidence only when an observer wants it.
    wants_confidence = True

    def __init__(
        self,
        device_id: str,
        opened_at: datetime,
        rollout_of: RolloutOf = lambda model, version: None,
        routed: Routed = lambda: (),
        production_of: ProductionOf = lambda model: None,
        attach: Attach | None = None,
    ) -> None:
        self.device_id = device_id
        self.attach = attach
        self._rollout_of = rollout_of
        self._routed = routed
        self._production_of = production_of
        self._lock = threading.Lock()
        self._table: dict[tuple[str, str, str], _Counts] = {}
        self._opened_at = opened_at

    @property
    def opened_at(self) -> datetime:
        """Device time at which the current window opened."""
        return self._opened_at

    # -- the request path (event loop) ----------------------------------------------------

    def on_request(
        self,
        model: str,
        version: str,
        role: str,
        outcome: str,
        compute_s: float | None,
        queue_s: float | None,
        confidence: float | None,
        caller: str,
    ) -> None:
        """Count one finished request (see the agent's ``RequestObserver``).

        Raises:
            KeyError: ``outcome`` is not one of :data:`~modelfleet.telemetry.wire.OUTCOME_KEYS`.
        """
        index = _OUTCOME_INDEX[outcome]
        key = (model, version, role)
        with self._lock:
            c = self._table.get(key)
            if c is None:
                c = self._table[key] = _Counts()
            c.requests[index] += 1
            if compute_s is not None:
                h = c.compute
                h.counts[bisect_left(_LAT, compute_s)] += 1
                h.total += compute_s
            if queue_s is not None:
                h = c.queue
                h.counts[bisect_left(_LAT, queue_s)] += 1
                h.total += queue_s
                total = queue_s if compute_s is None else queue_s + compute_s
                h = c.latency
                h.counts[bisect_left(_LAT, total)] += 1
                h.total += total
            if confidence is not None:
                h = c.confidence
                h.counts[bisect_left(_CONF, confidence)] += 1
                h.total += confidence

    def on_comparison(self, model: str, candidate_version: str, comparison: Any) -> None:
        """Count one shadow comparison in the candidate's ``shadow`` window."""
        disagreed = bool(getattr(comparison, "disagreed", comparison))
        with self._lock:
            c = self._counts(model, candidate_version, "shadow")
            c.shadow["compared"] += 1
            if disagreed:
                c.shadow["disagreed"] += 1

    # -- rarer events (any thread) --------------------------------------------------------

    def on_cascade(self, model: str, route: str) -> None:
        """Count one cascaded request by route (``local``, ``upstream``, ``fallback``).

        The route is counted in the production window of ``model``; ``fallback`` (the
        upstream was wanted but failed) is the wire's ``failed``.
        """
        name = _CASCADE.get(str(route))
        if name is None:
            return
        version = self._production_of(model)
        if version is None:
            return
        with self._lock:
            self._counts(model, version, "production").cascade[name] += 1

    def on_override(self, model: str, version: str, role: str, outcome: str) -> None:
        """Count one answer of ``version`` (served as ``role``) that a human ``overridden``
        or ``confirmed`` (issue 9; the agent's override endpoint resolved the version).

        Raises:
            KeyError: ``outcome`` is neither.
        """
        with self._lock:
            counts = self._counts(model, version, role).overrides
            if outcome not in counts:
                raise KeyError(outcome)
            counts[outcome] += 1

    def on_shadow_dropped(self, model: str, candidate_version: str) -> None:
        """Count one shadow request dropped at a full queue."""
        with self._lock:
            self._counts(model, candidate_version, "shadow").shadow["dropped"] += 1

    def on_guard(
        self, model: str, version: str, *, breach: bool, rolled_back: bool, role: str | None
    ) -> None:
        """Count a local-guard breach of ``version`` and/or the rollback it caused.

        ``role`` is the role the version served under (None: the one it had in this
        window, else the one routed now).
        """
        role = role or self._role_of(model, version)
        with self._lock:
            c = self._counts(model, version, role)
            if breach:
                c.guard["breaches"] += 1
            if rolled_back:
                c.guard["rollbacks"] += 1

    def on_update_event(self, kind: str, model: str | None, version: str | None) -> None:
        """Count an update event (``switch``, ``rollback``, ``refused``...) for ``model``.

        Refusals are counted as ``refusals``, everything else as ``updates``, in the window
        of the model's production version (or of ``version`` when the model serves none).
        """
        if model is None:
            return
        target = self._production_of(model) or version
        if target is None:
            return
        with self._lock:
            c = self._counts(model, target, "production")
            if kind == "refused":
                c.refusals += 1
            else:
                c.updates += 1

    # -- the closer -----------------------------------------------------------------------

    def close(self, now: datetime) -> list[dict[str, Any]]:
        """End the current window at ``now``; return its records (no ``seq`` yet).

        A window is returned for every key that counted something and for every version
        routed now (possibly all zeros). The next window opens at ``now``.
        """
        with self._lock:
            table, self._table = self._table, {}
            opened, self._opened_at = self._opened_at, now
        keys = set(table)
        with contextlib.suppress(Exception):  # a route read must never stop a window closing
            keys.update(self._routed())
        extra: Mapping[tuple[str, str, str], Mapping[str, Any]] = {}
        if self.attach is not None:
            try:
                extra = self.attach(sorted(keys))
                keys.update(extra)
            except Exception:  # nor may the extra fields
                _log.exception("telemetry window fields failed")
        opened_s = opened.isoformat()
        closed_s = max(now, opened).isoformat()
        out: list[dict[str, Any]] = []
        for key in sorted(keys):
            model, version, role = key
            counts = table.get(key) or _Counts()
            try:
                rollout = self._rollout_of(model, version)
            except Exception:
                rollout = None
            record: dict[str, Any] = {
                "kind": "window",
                "device_id": self.device_id,
                "model": model,
                "version": version,
                "role": role,
                "rollout_id": rollout or None,
                "opened_at": opened_s,
                "closed_at": closed_s,
            }
            record.update(counts.to_record())
            fields = extra.get(key)
            if fields:
                record.update(fields)
            out.append(record)
        return out

    # -- internals ------------------------------------------------------------------------

    def _counts(self, model: str, version: str, role: str) -> _Counts:
        key = (model, version, role)
        c = self._table.get(key)
        if c is None:
            c = self._table[key] = _Counts()
        return c

    def _role_of(self, model: str, version: str) -> str:
        """The role ``version`` served under in this window, else the one routed now."""
        for m, v, role in list(self._table):
            if m == model and v == version and role != "shadow":
                return role
        try:
            for m, v, role in self._routed():
                if m == model and v == version:
                    return role
        except Exception:
            pass
        return "production"
