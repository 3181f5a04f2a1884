"""The stateful shell around the pure SLO guard.

The request path reports every request the server answered or failed (server-side latency,
error, top-class confidence, caller) and every shadow comparison here; caller mistakes
never arrive (issue 6, defect 10). Per model the monitor watches one version — the
candidate when there is one, otherwise a production that still has a previous version to
fall back to — and evaluates :func:`modelfleet.monitoring.guard.evaluate` at most every
``eval_interval`` seconds of traffic, against the version it would fall back to as
measured on this device (defect 17). A breach calls ``on_breach`` once; the monitor then
stays disarmed for that model until :meth:`GuardMonitor.watch` is called again for a new
route, so a rollback can never flap back.

Every version's requests are tallied (cumulative since the agent started, a few versions
per model), watched or not: the version a new production replaces was measured while it
served, before anything was watched.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from modelfleet.agent.observers import (
    OUTCOME_CLIENT_ERROR,
    OUTCOME_OK,
    OUTCOME_SERVER_ERROR,
    Outcome,
)
from modelfleet.monitoring.guard import SloPolicy, Verdict, evaluate
from modelfleet.monitoring.window import LATENCY_EDGES_S, SlidingWindow, Tally

__all__ = ["GuardMonitor", "Watch"]

log = logging.getLogger("modelfleet.agent.guard")

BreachHandler = Callable[[str, str, Verdict], None]

#: Versions per model whose cumulative tallies are kept (baselines for the next watch).
_TALLIED_VERSIONS: Final = 4


@dataclass
class Watch:
    """What the guard watches for one model."""

    policy: SloPolicy
    watched: str  # version under watch
    baseline: str | None  # version it is compared with (production, or the previous one)
    role: str  # "candidate" or "production"
    armed: bool = True
    last_eval: float = float("-inf")
    last_verdict: Verdict = field(default_factory=lambda: Verdict(False, waiting="no traffic"))
    window: SlidingWindow = field(init=False)

    def __post_init__(self) -> None:
        self.window = SlidingWindow(self.policy.window_s)


class GuardMonitor:
    """Feeds windows, evaluates the guard, fires a rollback on breach.

    Args:
        monotonic: the clock (seconds); injected so tests drive time.
        on_breach: called as ``on_breach(model, watched_version, verdict)`` once per breach,
            on the caller's thread (the serving event loop): it must only switch pointers.
        eval_interval: minimum seconds between evaluations of one model.
    """

    def __init__(
        self,
        monotonic: Callable[[], float],
        on_breach: BreachHandler,
        eval_interval: float = 0.02,
    ) -> None:
        self._now = monotonic
        self._on_breach = on_breach
        #: Told (model, version, role) of every breach before ``on_breach`` acts on it, on
        #: the same thread (issue 7: telemetry windows count breaches); must be quick.
        self.on_breach_seen: Callable[[str, str, str], None] | None = None
        self._interval = eval_interval
        self._watches: dict[str, Watch] = {}
        self._tallies: dict[str, dict[str, Tally]] = {}
        #: Per model, the version under watch (absent: none): the one string compared per
        #: request to know whether it feeds a window.
        self._watched: dict[str, str] = {}

    def watch(
        self,
        model: str,
        policy: SloPolicy,
        watched: str | None,
        baseline: str | None,
        role: str,
    ) -> None:
        """Start (or stop, with ``watched=None``) watching ``model``; resets its window.

        ``baseline`` is the version ``watched`` is judged against: production for a
        candidate, the previous version for a new production.
        """
        if watched is None:
            self._watches.pop(model, None)
            self._watched.pop(model, None)
            return
        current = self._watches.get(model)
        if current is not None and (current.watched, current.baseline) == (watched, baseline):
            current.policy = policy
            return
        self._watches[model] = Watch(policy, watched, baseline, role)
        self._watched[model] = watched

    def observe(
        self,
        model: str,
        version: str,
        latency_s: float,
        error: bool = False,
        confidence: float | None = None,
        caller: str = "",
    ) -> None:
        """Record one request the server answered or failed; may evaluate and fire.

        Args:
            latency_s: server-side seconds (compute + queue), never the upload.
            error: the server failed it (5xx or an inference timeout).
            caller: the peer address it came from.
        """
        outcome: Outcome = OUTCOME_SERVER_ERROR if error else OUTCOME_OK
        self.on_request(model, version, "", outcome, latency_s, None, confidence, caller)

    def on_request(
        self,
        model: str,
        version: str,
        role: str,
        outcome: Outcome,
        compute_s: float | None,
        queue_s: float | None,
        confidence: float | None,
        caller: str,
    ) -> None:
        """:meth:`observe`, called as a :class:`~modelfleet.agent.observers.RequestObserver`
        is: the request path calls it directly (one call a request, issue 6).

        A client error is the caller's mistake, not the model's: it is not counted (issue
        6, defect 10). Latency is ``compute_s + queue_s`` (a missing one counts 0).
        """
        if outcome == OUTCOME_CLIENT_ERROR:
            return
        latency_s = (compute_s or 0.0) + (queue_s or 0.0)
        error = outcome != OUTCOME_OK
        # Once per request (issue 6): integer counts and one bucket index, found once for
        # the tally and the window; quantiles and means wait for an evaluation.
        bucket = bisect_left(LATENCY_EDGES_S, latency_s)
        tallies = self._tallies.get(model)
        tally = None if tallies is None else tallies.get(version)
        if tally is None:
            tally = self._new_tally(model, version)
        tally.count += 1  # Tally.record_bucket, inlined
        tally.counts[bucket] += 1
        if error:
            tally.errors += 1
        if confidence is not None:
            tally.confidence_sum += confidence
            tally.confidence_n += 1
        if self._watched.get(model) != version:
            return
        w = self._watches[model]
        now = self._now()
        w.window.record_bucket(now, bucket, error, confidence, caller)
        if w.armed and now - w.last_eval >= self._interval:
            self._evaluate(model, w, now)

    def _new_tally(self, model: str, version: str) -> Tally:
        tallies = self._tallies.get(model)
        if tallies is None:
            tallies = self._tallies[model] = {}
        if len(tallies) >= _TALLIED_VERSIONS:
            del tallies[next(iter(tallies))]  # the oldest version seen
        tally = tallies[version] = Tally()
        return tally

    def observe_comparison(self, model: str, version: str, disagreed: bool) -> None:
        """Record one shadow comparison of ``version`` against production."""
        w = self._watches.get(model)
        if w is None or version != w.watched:
            return
        now = self._now()
        w.window.record_comparison(now, disagreed)
        self._maybe_evaluate(model, w, now)

    def measured(self, model: str, version: str) -> Tally | None:
        """Everything recorded of ``version`` since the agent started (None: nothing)."""
        return self._tallies.get(model, {}).get(version)

    def _maybe_evaluate(self, model: str, w: Watch, now: float) -> None:
        if w.armed and now - w.last_eval >= self._interval:
            self._evaluate(model, w, now)

    def _evaluate(self, model: str, w: Watch, now: float) -> None:
        w.last_eval = now
        at_least = w.policy.min_samples
        subject = w.window.stats(now, at_least)
        baseline = None
        name = "the previous version"
        if w.baseline is not None:
            name = f"v{w.baseline}"
            tally = self.measured(model, w.baseline)
            baseline = tally.stats() if tally is not None else None
        verdict = evaluate(w.policy, subject, baseline, baseline_name=name)
        if verdict.breach:  # one caller alone must not be able to make it: ask them all
            callers = w.window.caller_stats(now, at_least)
            verdict = evaluate(w.policy, subject, baseline, callers, baseline_name=name)
        w.last_verdict = verdict
        if verdict.breach:
            w.armed = False
            seen = self.on_breach_seen
            if seen is not None:
                try:
                    seen(model, w.watched, w.role)
                except Exception:  # telemetry must never stop a rollback
                    log.exception("breach hook failed")
            self._on_breach(model, w.watched, verdict)

    def is_unhealthy(self, model: str) -> bool:
        """True while the watched version of ``model`` is in breach (cheap; per request)."""
        w = self._watches.get(model)
        return w is not None and w.last_verdict.breach

    def state(self) -> dict[str, Any]:
        """Per model: watched version, role, armed, last verdict (for status and metrics)."""
        now = self._now()
        out: dict[str, Any] = {}
        for model, w in self._watches.items():
            stats = w.window.stats(now, w.policy.min_samples)
            out[model] = {
                "watched": w.watched,
                "role": w.role,
                "baseline": w.baseline,
                "armed": w.armed,
                "breach": w.last_verdict.breach,
                "reasons": list(w.last_verdict.reasons),
                "waiting": w.last_verdict.waiting,
                "samples": stats.count,
                "p99_ms": None if stats.p99_s is None else round(stats.p99_s * 1000, 3),
                "error_rate": stats.error_rate,
            }
        return out
