"""Drift counts on the device: answered requests counted into their version's reference profile.

Issue 9. Each loaded version whose signed manifest carries a reference profile is
*watched* (:meth:`ProfileObserver.watch`, called by the model loader before the version
is routed). The infer endpoint hands every answered request of a watched version to
:meth:`ProfileObserver.on_batch` — the request path appends each profiled tensor of the
request to a list (no copy; numpy arrays are no work for the garbage collector); every
``block_rows`` rows (1024) the block is concatenated and counted at once
(:class:`~modelfleet.monitoring.profile_counts.ProfileCounter`, vectorised).

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


_UNFIT: Final = (InvalidInputError, KeyError, ValueError, TypeError)


def _log_unfit(rows: int, error: Exception) -> None:
    log.warning("drift counts: %d rows not counted, they do not fit the profile: %s", rows, error)


class _Series:
    """One window's pending rows and counter of one (model, version, role).

    The request path appends each profiled tensor of a request to that tensor's list:
    the arrays are kept (numpy arrays are not garbage-collector containers, so the
    collector has no more objects to walk), no copy is made, no dict is kept. A full
    block is concatenated per tensor and counted at once.
    """

    __slots__ = ("counter", "fill", "first", "in_slots", "out_slots", "profile")

    def __init__(self, profile: PackageProfile, counter: ProfileCounter) -> None:
        self.profile = profile
        self.counter = counter
        self.first = profile.inputs[0].tensor
        self.in_slots: list[tuple[str, list[npt.NDArray[Any]]]] = [
            (t.tensor, []) for t in profile.inputs
        ]
        self.out_slots: list[tuple[str, list[npt.NDArray[Any]]]] = [
            (t.tensor, []) for t in profile.outputs
        ]
        self.fill = 0

    def add(self, inputs: Tensors, outputs: Tensors, block: int) -> int:
        """Keep one request's profiled tensors, counting the block when it is full.

        Returns:
            Rows that could not be counted (0 unless tensors did not fit the profile, or
            one was missing: then the pending block is dropped).
        """
        try:
            first = inputs[self.first]
            for name, part in self.in_slots:
                part.append(inputs[name])
            for name, part in self.out_slots:
                part.append(outputs[name])
        except KeyError as e:  # cannot happen for an answered request: drop, never raise
            rows = self.fill + 1
            self._clear()
            _log_unfit(rows, e)
            return rows
        self.fill += int(first.shape[0]) if first.ndim else 1
        return self.flush() if self.fill >= block else 0

    def _clear(self) -> None:
        self.fill = 0
        for _, part in (*self.in_slots, *self.out_slots):
            part.clear()

    def flush(self) -> int:
        """Count the pending rows; returns the rows that could not be counted."""
        rows = self.fill
        if not rows:
            return 0
        profile = self.profile
        try:
            ins = {name: _joined(part) for name, part in self.in_slots}
            outs = {name: _joined(part) for name, part in self.out_slots}
            self._clear()
            counted_outputs = profile.batch(outs, "outputs") if profile.outputs else None
            self.counter.count(profile.batch(ins, "inputs"), counted_outputs)
        except _UNFIT as e:
            self._clear()
            _log_unfit(rows, e)
            return rows
        return 0


def _joined(parts: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)  # a new array: parts may go


class ProfileObserver:
    """Counts the answered requests of watched versions; :meth:`close` ends a window.

    Thread-safety: :meth:`on_batch` runs on the event loop, :meth:`watch` on the updater's
    thread, :meth:`close` on the telemetry closer; one lock guards the table (the request
    path holds it for a few appends, and for the count of a full block).

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
        #: Rows that could not be counted (tensors that did not fit the profile).
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

    def profile(self, model: str, version: str) -> PackageProfile | None:
        """The reference profile ``version`` of ``model`` is counted against, if any."""
        return self._profiles.get((model, version))

    @property
    def watched(self) -> list[tuple[str, str, str]]:
        """``(model, version, digest)`` of every watched version."""
        return sorted((m, v, p.digest) for (m, v), p in list(self._profiles.items()))

    # -- the request path (event loop) ------------------------------------------------------

    def on_batch(
        self,
        model: str,
        version: str,
        role: str,
        inputs: Tensors,
        outputs: Tensors,
        request_id: str | None = None,
    ) -> None:
        """One answered request of a watched version: its rows are copied into the
        window's block buffers, counted when a block is full.

        A request whose tensors do not fit the profile (it cannot happen for a request
        the model answered) is not counted, logged and counted in :attr:`dropped_rows`.
        """
        profile = self._profiles.get((model, version))
        if profile is None:
            return
        key = (model, version, role)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(
                    profile,
                    ProfileCounter(profile.profile, self.block_rows, sketches=self.sketches),
                )
            self.dropped_rows += series.add(inputs, outputs, self.block_rows)

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
            self.dropped_rows += series.flush()
            out[key] = {"profile": series.counter.snapshot().to_wire()}
        for key in keys:
            profile = profiles.get(key[:2])
            if key in out or profile is None or key[2] == "shadow":
                continue
            counter = ProfileCounter(profile.profile, 1, sketches=self.sketches)
            out[key] = {"profile": counter.snapshot().to_wire()}
        return out
