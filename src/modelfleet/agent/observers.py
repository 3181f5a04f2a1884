"""What the request path tells the rest of the agent: one fan-out to every observer.

The infer endpoint reports each finished request and each shadow comparison once, to an
:class:`ObserverFanout`; metrics, the local guard and (later) telemetry are observers of it
(issue 6, contract 7). The endpoint itself knows none of them.

Observers are called on the serving event loop: they must be quick and must not block. An
observer that raises is logged and skipped; it never fails the request nor starves the
observers after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Final, Literal, Protocol

__all__ = [
    "OUTCOMES",
    "OUTCOME_CLIENT_ERROR",
    "OUTCOME_OK",
    "OUTCOME_SERVER_ERROR",
    "OUTCOME_TIMEOUT",
    "ComparisonResult",
    "ObserverFanout",
    "Outcome",
    "RequestObserver",
]

_log = logging.getLogger("modelfleet.agent.observers")

Outcome = Literal["ok", "client_error", "server_error", "timeout"]

#: Answered (2xx).
OUTCOME_OK: Final = "ok"
#: Refused as the caller's fault (4xx), or the caller went away or sent its body too slowly.
OUTCOME_CLIENT_ERROR: Final = "client_error"
#: Failed inside the server (5xx).
OUTCOME_SERVER_ERROR: Final = "server_error"
#: The server did not finish the inference in time (503).
OUTCOME_TIMEOUT: Final = "timeout"
OUTCOMES: Final[tuple[Outcome, ...]] = ("ok", "client_error", "server_error", "timeout")


class ComparisonResult(Protocol):
    """One shadow comparison (:class:`modelfleet.serving.shadow.Comparison` satisfies it)."""

    @property
    def disagreed(self) -> bool:
        """The candidate decided differently from production."""
        ...

    @property
    def score_shift(self) -> float | None:
        """How far the scores moved (mean absolute change), None when not measured."""
        ...


class RequestObserver(Protocol):
    """Told of every inference request the agent finished and every shadow comparison."""

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
        """One request that ``version`` of ``model`` answered (or failed).

        Args:
            model: the model name.
            version: the version that served it.
            role: ``"production"`` or ``"candidate"`` (what the route made of ``version``).
            outcome: one of :data:`OUTCOMES`.
            compute_s: seconds inside the model runtime; None when it never ran.
            queue_s: server-side seconds outside the runtime, from the whole body having
                arrived to the answer being ready (decode, wait for a worker, encode):
                never the client's upload time. None when the body never arrived.
            confidence: mean top-class probability, when the model has such an output.
            caller: the peer address (host, without port) the request came from.
        """
        ...

    def on_comparison(
        self, model: str, candidate_version: str, comparison: ComparisonResult
    ) -> None:
        """One finished shadow comparison of ``candidate_version`` against production."""
        ...


class ObserverFanout:
    """Calls each observer in turn; the one object the request path reports to.

    Args:
        observers: the observers, called in this order.
    """

    __slots__ = ("_observers", "_request_handlers", "wants_confidence")

    def __init__(self, observers: Iterable[RequestObserver] = ()) -> None:
        self._observers: tuple[RequestObserver, ...] = ()
        self._request_handlers: tuple[Callable[..., None], ...] = ()
        #: Whether an observer has ``wants_confidence = True``: only then does the request
        #: path compute the top-class confidence (a few µs per request).
        self.wants_confidence = False
        for observer in observers:
            self.add(observer)

    @property
    def observers(self) -> tuple[RequestObserver, ...]:
        return self._observers

    def add(self, observer: RequestObserver) -> None:
        """Add an observer after the existing ones (at startup, before serving)."""
        self._observers = (*self._observers, observer)
        self._request_handlers = tuple(o.on_request for o in self._observers)  # bound once
        self.wants_confidence = self.wants_confidence or bool(
            getattr(observer, "wants_confidence", False)
        )

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
        """Report one request to every observer."""
        for on_request in self._request_handlers:
            try:
                on_request(model, version, role, outcome, compute_s, queue_s, confidence, caller)
            except Exception:  # a broken observer must not fail the request
                _log.exception("request observer %r failed", on_request)

    def on_comparison(
        self, model: str, candidate_version: str, comparison: ComparisonResult
    ) -> None:
        """Report one shadow comparison to every observer."""
        for observer in self._observers:
            try:
                observer.on_comparison(model, candidate_version, comparison)
            except Exception:
                _log.exception("comparison observer %r failed", observer)
