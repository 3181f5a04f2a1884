"""The stateful shell around the pure SLO guard.

The serving path reports every request here (latency, error, top-class confidence) and
every shadow comparison. Per model the monitor watches one version — the candidate when
there is one, otherwise a production that still has a previous version to fall back to —
and evaluates :func:`modelfleet.monitoring.guard.evaluate` at most every
``eval_interval`` seconds of traffic. A breach calls ``on_breach`` once; the monitor then
stays disarmed for that model until :meth:`GuardMonitor.watch` is called again for a new
route, so a rollback can never flap back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelfleet.monitoring.guard import SloPolicy, Verdict, evaluate
from modelfleet.monitoring.window import SlidingWindow

__all__ = ["GuardMonitor", "Watch"]

BreachHandler = Callable[[str, str, Verdict], None]


@dataclass
class Watch:
    """What the guard watches for one model."""

    policy: SloPolicy
    watched: str  # version under watch
    baseline: str | None  # version it is compared with (production in split/shadow)
    role: str  # "candidate" or "production"
    armed: bool = True
    last_eval: float = float("-inf")
    last_verdict: Verdict = field(default_factory=lambda: Verdict(False, waiting="no traffic"))
    windows: dict[str, SlidingWindow] = field(default_factory=dict)

    def window(self, version: str) -> SlidingWindow:
        w = self.windows.get(version)
        if w is None:
            w = self.windows[version] = SlidingWindow(self.policy.window_s)
        return w


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
        self._interval = eval_interval
        self._watches: dict[str, Watch] = {}

    def watch(
        self,
        model: str,
        policy: SloPolicy,
        watched: str | None,
        baseline: str | None,
        role: str,
    ) -> None:
        """Start (or stop, with ``watched=None``) watching ``model``; resets its windows."""
        if watched is None:
            self._watches.pop(model, None)
            return
        current = self._watches.get(model)
        if current is not None and (current.watched, current.baseline) == (watched, baseline):
            current.policy = policy
            return
        self._watches[model] = Watch(policy, watched, baseline, role)

    def observe(
        self,
        model: str,
        version: str,
        latency_s: float,
        error: bool = False,
        confidence: float | None = None,
    ) -> None:
        """Record one request's outcome; may evaluate and fire."""
        w = self._watches.get(model)
        if w is None:
            return
        if version != w.watched and version != w.baseline:
            return
        now = self._now()
        w.window(version).record(now, latency_s, error, confidence)
        self._maybe_evaluate(model, w, now)

    def observe_comparison(self, model: str, version: str, disagreed: bool) -> None:
        """Record one shadow comparison of ``version`` against production."""
        w = self._watches.get(model)
        if w is None or version != w.watched:
            return
        now = self._now()
        w.window(version).record_comparison(now, disagreed)
        self._maybe_evaluate(model, w, now)

    def _maybe_evaluate(self, model: str, w: Watch, now: float) -> None:
        if not w.armed or now - w.last_eval < self._interval:
            return
        w.last_eval = now
        subject = w.window(w.watched).stats(now)
        baseline = w.window(w.baseline).stats(now) if w.baseline else None
        verdict = evaluate(w.policy, subject, baseline)
        w.last_verdict = verdict
        if verdict.breach:
            w.armed = False
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
            stats = w.window(w.watched).stats(now)
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
