"""Shadow mirroring: the candidate sees a copy of a request after the caller has its answer.

Off the request path: the handler only puts a job on a bounded queue (dropping it when the
queue is full) and one worker task runs the candidate on a dedicated thread, so a slow
candidate can neither delay callers nor pile up memory (Envoy's request mirroring and the
TFS/Triton reports on a second model raising the primary's tail latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from modelfleet.errors import InvalidTensorError
from modelfleet.serving.runtime import LoadedModel

__all__ = ["ShadowMirror", "outputs_disagree"]

_log = logging.getLogger(__name__)


def outputs_disagree(
    production: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], tolerance: float
) -> bool:
    """Whether the candidate's outputs differ from production's.

    Integer, boolean and string outputs (labels) must be equal; floating-point outputs may
    differ by at most ``tolerance`` (absolute) element-wise. A missing output or a different
    shape is a disagreement.
    """
    for name, want in production.items():
        got = candidate.get(name)
        if got is None or got.shape != want.shape:
            return True
        if want.dtype.kind == "f" and got.dtype.kind == "f":
            if not np.allclose(want, got, rtol=0.0, atol=tolerance, equal_nan=True):
                return True
        elif not np.array_equal(want, got):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Job:
    candidate: LoadedModel
    inputs: Mapping[str, np.ndarray]
    production_outputs: Mapping[str, np.ndarray]


class ShadowMirror:
    """A bounded queue of shadow comparisons and the one worker that drains it.

    Args:
        on_result: called on the event loop with the candidate and whether it disagreed.
        on_drop: called when a job is dropped because the queue is full.
        queue_size: jobs that may wait; more are dropped.
        tolerance: see :func:`outputs_disagree`.
    """

    def __init__(
        self,
        on_result: Callable[[LoadedModel, bool], None],
        on_drop: Callable[[], None],
        *,
        queue_size: int = 64,
        tolerance: float = 1e-4,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._on_result = on_result
        self._on_drop = on_drop
        self._queue_size = queue_size
        self.tolerance = tolerance
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def submit(
        self,
        candidate: LoadedModel,
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
            return False
        return True

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # A new event loop (tests, a restarted server) gets a fresh queue and worker.
        self._loop = loop
        self._queue = asyncio.Queue(self._queue_size)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelfleet-shadow")
        self._task = loop.create_task(self._work(self._queue, self._executor))

    def _compare(self, job: _Job) -> bool:
        try:
            got = job.candidate.infer(job.inputs, list(job.production_outputs))
        except InvalidTensorError as e:
            _log.info("shadow %s refused a request production accepted: %s", job.candidate, e)
            return True
        return outputs_disagree(job.production_outputs, got, self.tolerance)

    async def _work(self, queue: asyncio.Queue[_Job], executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await queue.get()
            try:
                try:
                    disagree = await loop.run_in_executor(executor, self._compare, job)
                except Exception:
                    _log.exception("shadow inference on %s failed", job.candidate)
                    disagree = True
                self._on_result(job.candidate, disagree)
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
