"""Shadow mirroring: the candidate sees a copy of a request after the caller has its answer.

Off the request path: the handler only puts a job on a bounded queue (dropping it when the
queue is full) and one worker task runs the candidate on a dedicated thread, so a slow
candidate can neither delay callers nor pile up memory (Envoy's request mirroring and the
TFS/Triton reports on a second model raising the primary's tail latency).

A disagreement is a different *decision* (issue 6, defect 16): per the candidate's declared
:class:`~modelfleet.catalog.schema.OutputDecision` of each output, a different label, a
different top-1 class, or a regression value beyond its relative tolerance. How far the
scores moved is reported apart, as ``score_shift``, and never counts as a disagreement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import numpy as np

from modelfleet.catalog.schema import OutputDecision, TensorSpec, infer_decision
from modelfleet.errors import InvalidTensorError
from modelfleet.serving.model import Servable

__all__ = ["Comparison", "ShadowMirror", "compare_outputs"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of one shadow comparison.

    Attributes:
        disagreed: the candidate decided differently on some row (or failed, or refused
            what production accepted, or left out or reshaped an output).
        score_shift: mean absolute change of the argmax (score) outputs' values, or None
            when no argmax output was compared.

    ``bool(comparison)`` is ``disagreed``, so callbacks written for the former plain
    ``disagreed: bool`` argument keep working.
    """

    disagreed: bool
    score_shift: float | None = None

    def __bool__(self) -> bool:
        return self.disagreed


#: The comparison of a candidate that failed or refused what production accepted.
FAILED: Final = Comparison(True, None)

_NUMERIC: Final = frozenset("iuf")  # booleans are labels whatever was declared


def _decision(
    decisions: Mapping[str, OutputDecision], name: str, want: np.ndarray
) -> OutputDecision:
    found = decisions.get(name)
    if found is not None:
        return found
    datatype = "FP64" if want.dtype.kind == "f" else "INT64"  # only float-or-not matters
    return infer_decision(TensorSpec(name, datatype, tuple(want.shape)))


def compare_outputs(
    production: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    decisions: Mapping[str, OutputDecision],
) -> Comparison:
    """Judge the candidate's outputs against production's, output by output.

    Args:
        production: production's outputs (the ones compared).
        candidate: the candidate's outputs for the same request.
        decisions: what each output decides; an output it does not name gets the decision
            inferred from its values' kind and shape.

    Returns:
        ``disagreed``: ``label`` outputs differ anywhere; an ``argmax`` output's top-1 class
        differs on some row; a ``regression`` output is not ``isclose`` within its
        rtol/atol (NaN equal to NaN); a compared output is missing or has another shape.
        ``ignore`` outputs are skipped. ``score_shift``: mean absolute difference over the
        argmax outputs (mean of each output's mean), None without one.
    """
    disagreed = False
    shifts: list[float] = []
    for name, want in production.items():
        decision = _decision(decisions, name, want)
        kind = decision.kind
        if kind == "ignore":
            continue
        got = candidate.get(name)
        if got is None or got.shape != want.shape:
            disagreed = True
        elif want.dtype.kind not in _NUMERIC or got.dtype.kind not in _NUMERIC:
            disagreed = disagreed or not np.array_equal(want, got)
        elif kind == "argmax":
            if want.ndim and want.size:
                if not np.array_equal(np.argmax(want, axis=-1), np.argmax(got, axis=-1)):
                    disagreed = True
                shift = float(np.mean(np.abs(want.astype(np.float64) - got)))
                if math.isfinite(shift):
                    shifts.append(shift)
        elif kind == "regression":
            if not np.allclose(got, want, rtol=decision.rtol, atol=decision.atol, equal_nan=True):
                disagreed = True
        elif not np.array_equal(want, got):  # label
            disagreed = True
    score_shift = sum(shifts) / len(shifts) if shifts else None
    return Comparison(disagreed, score_shift)


@dataclass(frozen=True, slots=True)
class _Job:
    candidate: Servable
    inputs: Mapping[str, np.ndarray]
    production_outputs: Mapping[str, np.ndarray]


class ShadowMirror:
    """A bounded queue of shadow comparisons and the one worker that drains it.

    The candidate's :attr:`~modelfleet.serving.model.Servable.decisions` say what counts as
    a disagreement (see :func:`compare_outputs`).

    Args:
        on_result: called on the event loop with the candidate and the :class:`Comparison`.
        on_drop: called when a job is dropped because the queue is full.
        on_drop_of: also called then, with the candidate whose job was dropped (telemetry
            counts drops per version).
        queue_size: jobs that may wait; more are dropped.
        tolerance: ignored since issue 6 (each output's declared decision carries its own
            tolerance); accepted so that existing callers keep constructing the mirror.

    Raises:
        ValueError: ``queue_size`` below 1.
    """

    def __init__(
        self,
        on_result: Callable[[Servable, Comparison], None],
        on_drop: Callable[[], None],
        *,
        queue_size: int = 64,
        tolerance: float | None = None,
        on_drop_of: Callable[[Servable], None] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._on_result = on_result
        self._on_drop = on_drop
        self._on_drop_of = on_drop_of
        self._queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def submit(
        self,
        candidate: Servable,
        inputs: Mapping[str, np.ndarray],
        production_outputs: Mapping[str, np.ndarray],
    ) -> bool:
        """Queue one comparison; must be called on the event loop. False if it was dropped."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None:
            self._start(loop)
        assert self._queue is not None
        try:
            self._queue.put_nowait(_Job(candidate, inputs, production_outputs))
        except asyncio.QueueFull:
            self._on_drop()
            if self._on_drop_of is not None:
                self._on_drop_of(candidate)
            return False
        return True

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # A new event loop (tests, a restarted server) gets a fresh queue and worker.
        self._loop = loop
        self._queue = asyncio.Queue(self._queue_size)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelfleet-shadow")
        self._task = loop.create_task(self._work(self._queue, self._executor))

    def _compare(self, job: _Job) -> Comparison:
        try:
            got = job.candidate.infer(job.inputs, list(job.production_outputs))
        except InvalidTensorError as e:
            _log.info("shadow %s refused a request production accepted: %s", job.candidate, e)
            return FAILED
        return compare_outputs(job.production_outputs, got, job.candidate.decisions)

    async def _work(self, queue: asyncio.Queue[_Job], executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await queue.get()
            try:
                try:
                    comparison = await loop.run_in_executor(executor, self._compare, job)
                except Exception:
                    _log.exception("shadow inference on %s failed", job.candidate)
                    comparison = FAILED
                self._on_result(job.candidate, comparison)
            finally:
                queue.task_done()

    async def join(self) -> None:
        """Wait until every queued comparison is done (for tests and orderly shutdown)."""
        if self._queue is not None and self._loop is asyncio.get_running_loop():
            await self._queue.join()

    async def close(self) -> None:
        """Stop the worker and its thread; queued jobs are discarded."""
        if self._task is not None:
            self._task.cancel()
            # RuntimeError: the task belonged to an event loop that is gone
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
            self._task = None
        self._queue = None
        self._loop = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
