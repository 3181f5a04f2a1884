"""What the request path tells the rest of the agent: one fan-out to every observer.

The infer endpoint reports each finished request and each shadow comparison once, to an
:class:`ObserverFanout`; metrics, the local guard and (later) telemetry are observers of it
(issue 6, contract 7). The endpoint itself knows none of them.

Observers are called on the serving event loop: they must be quick and must not block. An
observer that raises is logged and skipped; it never fails the request nor starves the
observers after it.

An observer that needs the top-class confidence says so with ``wants_confidence``; one whose
need changes while serving (the guard: only while a watched version has a confidence rule)
also offers ``subscribe_wants_confidence(callback)``, and calls ``callback()`` whenever its
``wants_confidence`` changes, so the fan-out re-reads it.

A :class:`RequestTracer` (one, optional, for a tracing exporter) is told the stage times of
the requests it samples; without one the request path pays one ``is None`` check.

A :class:`BatchObserver` (one, optional) is told the tensors of every answered request of the
versions it watches; without one the request path pays one ``is None`` check too. Several
(issue 9: the drift profile counts, the anomaly scorer, the review sampler) are composed by
a :class:`BatchFanout`, itself a batch observer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Literal, Protocol

import numpy as np

__all__ = [
    "OUTCOMES",
    "OUTCOME_CLIENT_ERROR",
    "OUTCOME_OK",
    "OUTCOME_SERVER_ERROR",
    "OUTCOME_TIMEOUT",
    "BatchFanout",
    "BatchObserver",
    "ComparisonResult",
    "ObserverFanout",
    "Outcome",
    "RequestObserver",
    "RequestTracer",
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


class BatchObserver(Protocol):
    """Told the tensors of each answered request of a version it watches (at most one per
    app). Called on the serving event loop: both methods must be quick and never block."""

    def watches(self, model: str, version: str) -> bool:
        """Whether this version's answers are wanted (asked before the inference: the
        request path then computes every output, not only the ones asked for)."""
        ...

    def on_batch(
        self,
        model: str,
        version: str,
        role: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        request_id: str | None = None,
    ) -> None:
        """One answered request: the decoded inputs and every output of the model, and the
        request's OIP ``id`` when it had one. The arrays are not changed afterwards; the
        observer may keep references to them."""
        ...


class BatchFanout:
    """Several batch observers as one (the request path holds at most one).

    A version is watched when any observer watches it; each observer is then told only
    of the versions it watches itself, in order. An observer that raises is logged and
    skipped: it never fails the request nor starves the observers after it.

    Args:
        observers: the batch observers, called in this order.
    """

    __slots__ = ("observers",)

    def __init__(self, observers: Iterable[BatchObserver]) -> None:
        self.observers: tuple[BatchObserver, ...] = tuple(observers)

    def watches(self, model: str, version: str) -> bool:
        return any(o.watches(model, version) for o in self.observers)

    def on_batch(
        self,
        model: str,
        version: str,
        role: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        request_id: str | None = None,
    ) -> None:
        for o in self.observers:
            if not o.watches(model, version):
                continue
            try:
                o.on_batch(model, version, role, inputs, outputs, request_id)
            except Exception:
                _log.exception("batch observer %r failed", o)


class RequestTracer(Protocol):
    """Times the stages of sampled requests (for a tracing exporter; at most one per app).

    Called on the serving event loop, like the observers: both methods must be quick and
    must not block.
    """

    def sampled(self, role: str) -> bool:
        """Whether to trace this request: called once per request, before its work.

        Args:
            role: ``"production"`` or ``"candidate"``, as the observers are told.
        """
        ...

    def record(
        self,
        model: str,
        version: str,
        role: str,
        t_start: float,
        t_decoded: float,
        t_computed: float,
        t_encoded: float,
        outcome: Outcome,
    ) -> None:
        """One sampled request whose body arrived, after its response was encoded.

        The times are ``time.perf_counter()`` readings (the app's timer), in order: the
        whole body had arrived, it was decoded, the inference was done, the response was
        encoded. A failed request's stages that never happened carry the time it ended
        (``t_start <= t_decoded <= t_computed <= t_encoded`` always holds).
        """
        ...


class ObserverFanout:
    """Calls each observer in turn; the one object the request path reports to.

    Args:
        observers: the observers, called in this order.
    """

    __slots__ = ("_observers", "request_handlers", "wants_confidence")

    def __init__(self, observers: Iterable[RequestObserver] = ()) -> None:
        self._observers: tuple[RequestObserver, ...] = ()
        #: Each observer's bound ``on_request``, in order: what :meth:`on_request` calls (the
        #: request path may loop over them itself, reporting a failure to :meth:`failed`).
        self.request_handlers: tuple[Callable[..., None], ...] = ()
        #: Whether an observer wants the confidence now (its ``wants_confidence`` is
        #: true): only then does the request path compute the top-class confidence.
        self.wants_confidence = False
        for observer in observers:
            self.add(observer)

    @property
    def observers(self) -> tuple[RequestObserver, ...]:
        return self._observers

    def add(self, observer: RequestObserver) -> None:
        """Add an observer after the existing ones (at startup, before serving)."""
        self._observers = (*self._observers, observer)
        self.request_handlers = tuple(o.on_request for o in self._observers)  # bound once
        subscribe = getattr(observer, "subscribe_wants_confidence", None)
        if subscribe is not None:
            subscribe(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Re-read every observer's ``wants_confidence`` (an observer's need changed)."""
        self.wants_confidence = any(
            bool(getattr(o, "wants_confidence", False)) for o in self._observers
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
        for on_request in self.request_handlers:
            try:
                on_request(model, version, role, outcome, compute_s, queue_s, confidence, caller)
            except Exception:  # a broken observer must not fail the request
                self.failed(on_request)

    def failed(self, on_request: Callable[..., None]) -> None:
        """Log the exception being handled, which ``on_request`` (an observer's) raised."""
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
