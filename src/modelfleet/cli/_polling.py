"""Poll the hub until a condition holds: the loop of ``rollout status --watch`` and
``deploy --wait``, with the clock and the sleep injected (tests pass a manual clock)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from modelfleet.errors import TransportError

__all__ = ["PollResult", "poll"]

T = TypeVar("T")


@dataclass(frozen=True)
class PollResult(Generic[T]):
    """How polling ended: ``value`` is the last answer; ``done`` False means the deadline
    passed first."""

    value: T
    done: bool


def poll(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    show: Callable[[T, TransportError | None], None],
    interval_s: float,
    now: Callable[[], float],
    sleep: Callable[[float], None],
    timeout_s: float | None = None,
    outage_s: float = 60.0,
    load_factor: float = 2.0,
) -> PollResult[T]:
    """Call ``fetch`` every ``interval_s`` until ``done(answer)`` or ``timeout_s`` passed.

    The wait between fetches is at least ``load_factor`` times what the last fetch took, so
    that a slow answer (a large fleet's device list) does not keep the hub busy.

    The first fetch must succeed: a hub that is down from the start is an error at once.
    Afterwards a :class:`TransportError` is shown with the last good answer (``show(last,
    error)``) and retried, for up to ``outage_s`` seconds in a row.

    Args:
        fetch: one request to the hub.
        done: whether to stop on this answer.
        show: called after every fetch with the answer (the last good one after an error)
            and the error, if the fetch failed.
        interval_s: seconds between fetches.
        now: a monotonic clock in seconds.
        sleep: waits that many seconds.
        timeout_s: stop with ``done=False`` after this long; None waits for ever.
        outage_s: how long the hub may stay unreachable before giving up.
        load_factor: the wait is at least this many times the last fetch's duration.

    Returns:
        The last answer, and whether ``done`` held.

    Raises:
        TransportError: the first fetch failed, or the hub stayed unreachable for
            ``outage_s``. Other errors of ``fetch`` (not found, auth) pass through.
    """
    start = now()
    last = fetch()
    took = now() - start
    show(last, None)
    failing_since: float | None = None
    while True:
        if done(last):
            return PollResult(last, True)
        if timeout_s is not None and now() - start >= timeout_s:
            return PollResult(last, False)
        wait = max(interval_s, load_factor * took)
        if timeout_s is not None:
            wait = max(0.0, min(wait, start + timeout_s - now()))
        sleep(wait)
        began = now()
        try:
            last = fetch()
        except TransportError as e:
            failing_since = now() if failing_since is None else failing_since
            if now() - failing_since >= outage_s:
                raise
            show(last, e)
            continue
        finally:
            took = now() - began
        failing_since = None
        show(last, None)
