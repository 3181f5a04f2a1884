"""Drift counts on the device: answered requests counted into their version's reference profile.

Issue 9. Each loaded version whose signed manifest carries a reference profile is
*watched* (:meth:`ProfileObserver.watch`, called by the model loader before the version
is routed). The infer endpoint hands every answered request of a watched version to
:meth:`ProfileObserver.on_batch` — the request path only keeps references to the request's
input tensors and the model's outputs (a dict lookup and a list append); every
``block_rows`` rows (1024) the block is concatenated and counted at once
(:class:`~modelfleet.monitoring.profile_counts.ProfileCounter`, vectorised), so the
per-request cost stays a few hundred nanoseconds and the counting ~1 µs per row.

At each telemetry window close (:meth:`ProfileObserver.close`, the closer thread) the
counts of each (model, version, role) become the window record's ``"profile"`` field
(:meth:`~modelfleet.monitoring.profile_counts.ProfileWindow.to_wire`, which names the
profile's digest); a watched version that served nothing gets an empty one. A version
without a profile gets no field.

Sketches (KLL, for KS) are off by default: they cost CPU on the device and grow a window
from ~1 KB to tens of KB (``docs/telemetry-format.md``); ``--drift-sketches`` turns them on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.profile_counts import ProfileCounter
from modelfleet.packaging.reference import PackageProfile

__all__ = ["DEFAULT_BLOCK_ROWS", "ProfileObserver"]

log = logging.getLogger("modelfleet.agent.profiles")

#: Rows kept (as tensor references) before they are counted at once.
DEFAULT_BLOCK_ROWS: Final = 1024

Tensors = Mapping[str, npt.NDArray[Any]]
Key = tuple[str, str, str]


class _Series:
    """One window's pending tensors and counter of one (model, version, role)."""

    __slots__ = ("counter", "pending", "rows")

    def __init__(self, counter: ProfileCounter) -> None:
        self.counter = counter
        self.pending: list[tuple[Tensors, Tensors]] = []
        self.rows = 0


class ProfileObserver:
    """Counts the answered requests of watched versions; :meth:`close` ends a window.

    Thread-safety: :meth:`on_batch` runs on the event loop, :meth:`watch` on the updater's
    thread, :meth:`close` on the telemetry closer; one lock guards the table (the request
    path holds it for an append, and for the count of a full block).

    Args:
        sketches: keep KLL sketches (for KS) as the profiles ask; False counts bins only.
        block_rows: rows gathered before they are counted (1 … 65536).
    """

    def __init__(self, sketches: bool = False, block_rows: int = DEFAULT_BLOCK_ROWS) -> None:
        if not 1 <= block_rows <= 65536:
            raise InvalidInputError("block_rows must be between 1 and 65536")
        self.sketches = sketches
        self.block_rows = block_rows
        self._profiles: dict[tuple[str, str], PackageProfile] = {}
        self._series: dict[Key, _Series] = {}
        self._lock = threading.Lock()
        #: Blocks that could not be counted (tensors that did not fit the profile).
        self.dropped_rows = 0

    # -- the loader (updater thread) --------------------------------------------------------

    def watch(self, model: str, version: str, profile: PackageProfile | None) -> None:
        """Count ``version`` of ``model`` against ``profile`` from now on (None: stop)."""
        with self._lock:
            if profile is None:
                self._profiles.pop((model, version), None)
            else:
                self._profiles[(model, version)] = profile

    def watches(self, model: str, version: str) -> bool:
        """Whether answers of ``version`` are counted (the request path asks first: it
        then keeps every output, which the counts need)."""
        return (model, version) in self._profiles

    @property
    def watched(self) -> list[tuple[str, str, str]]:
        """``(model, version, digest)`` of every watched version."""
        return sorted((m, v, p.digest) for (m, v), p in list(self._profiles.items()))

    # -- the request path (event loop) ------------------------------------------------------

    def on_batch(
        self, model: str, version: str, role: str, inputs: Tensors, outputs: Tensors
    ) -> None:
        """One answered request of a watched version: its tensors are kept, and counted
        with the next full block. The arrays must not be changed afterwards (the request
        path never does: they are the request's and the runtime's own)."""
        profile = self._profiles.get((model, version))
        if profile is None:
            return
        first = inputs.get(profile.inputs[0].tensor)
        rows = 1 if first is None or not first.ndim else int(first.shape[0])
        key = (model, version, role)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(
                    ProfileCounter(profile.profile, self.block_rows, sketches=self.sketches)
                )
            series.pending.append((inputs, outputs))
            series.rows += rows
            if series.rows >= self.block_rows:
                self._count(profile, series)

    # -- the closer -------------------------------------------------------------------------

    def close(self, keys: Iterable[Key] = ()) -> dict[Key, dict[str, Any]]:
        """End the window: ``{(model, version, role): {"profile": wire}}`` for every
        series that counted something, and an empty one for each of ``keys`` (the windows
        the recorder closes) whose version is watched and served nothing. Shadow windows
        get none: a shadow candidate's mirrored requests are not counted."""
        with self._lock:
            table, self._series = self._series, {}
            profiles = dict(self._profiles)
        out: dict[Key, dict[str, Any]] = {}
        for key, series in table.items():
            profile = profiles.get(key[:2])
            if profile is None:
                continue
            self._count(profile, series)
            out[key] = {"profile": series.counter.snapshot().to_wire()}
        for key in keys:
            profile = profiles.get(key[:2])
            if key in out or profile is None or key[2] == "shadow":
                continue
            counter = ProfileCounter(profile.profile, 1, sketches=self.sketches)
            out[key] = {"profile": counter.snapshot().to_wire()}
        return out

    # -- internals --------------------------------------------------------------------------

    def _count(self, profile: PackageProfile, series: _Series) -> None:
        """Count the pending tensors of ``series`` as one block."""
        pending, series.pending, series.rows = series.pending, [], 0
        if not pending:
            return
        try:
            inputs = _concat([p[0] for p in pending], [t.tensor for t in profile.inputs])
            outputs = None
            if profile.outputs:
                outputs = profile.batch(
                    _concat([p[1] for p in pending], [t.tensor for t in profile.outputs]),
                    "outputs",
                )
            series.counter.count(profile.batch(inputs, "inputs"), outputs)
        except (InvalidInputError, KeyError, ValueError) as e:
            rows = sum(_rows(p[0], profile) for p in pending)
            self.dropped_rows += rows
            log.warning("drift counts: %d rows not counted: %s", rows, e)


def _concat(parts: list[Tensors], names: list[str]) -> dict[str, npt.NDArray[Any]]:
    if len(parts) == 1:
        return {n: parts[0][n] for n in names}
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def _rows(tensors: Tensors, profile: PackageProfile) -> int:
    first = tensors.get(profile.inputs[0].tensor)
    return 1 if first is None or not first.ndim else int(first.shape[0])
