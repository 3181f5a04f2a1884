"""Drift counts on the device: answered requests counted into their version's reference profile.

Issue 9. Each loaded version whose signed manifest carries a reference profile is
*watched* (:meth:`ProfileObserver.watch`, called by the model loader before the version
is routed). The infer endpoint hands every answered request of a watched version to
:meth:`ProfileObserver.on_batch` — the request path keeps the bytes of each profiled tensor
of the request (``ndarray.tobytes``: the request's arrays die with the request, as without
counts; see :class:`_Slot`); every ``block_rows`` rows (1024) the block is sealed, joined
and counted vectorised (:class:`~modelfleet.monitoring.profile_counts.ProfileCounter`) in
the request that seals it (ADR 0042).

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

#: Rows kept (as each request's bytes) before they are sealed into a block and counted.
DEFAULT_BLOCK_ROWS: Final = 1024

Tensors = Mapping[str, npt.NDArray[Any]]
Key = tuple[str, str, str]


_UNFIT: Final = (InvalidInputError, KeyError, ValueError, TypeError)


def _log_unfit(rows: int, error: Exception) -> None:
    log.warning("drift counts: %d rows not counted, they do not fit the profile: %s", rows, error)


class _Slot:
    """One profiled tensor's pending rows in the open block.

    A tensor of plain numbers (bool, int, uint, float) is kept as each request's bytes
    (``ndarray.tobytes``, ~0.15 µs a one-row tensor): the request's array dies in the
    request, as without counts, and a bytes object costs the block's join and its
    freeing ~0.03 µs. Kept arrays cost ~0.3 µs each to free later, cache-cold (an ONNX
    Runtime output's capsule frees its tensor): ~1 ms for a block of one-row requests.
    Any other tensor (strings, objects), or one whose dtype changes within a block, is
    kept as array references and concatenated.
    """

    __slots__ = ("columns", "dtype", "name", "parts")

    def __init__(self, name: str, columns: int, dtype: np.dtype[Any] | None) -> None:
        self.name = name
        self.columns = columns
        #: The dtype of the block's bytes; None: the parts are arrays.
        self.dtype = dtype
        self.parts: list[Any] = []

    def odd(self, array: npt.NDArray[Any]) -> None:
        """Keep ``array``, whose dtype is not (identically) the block's."""
        dtype = array.dtype
        if self.dtype is None:
            self.parts.append(array)
        elif not self.parts and dtype.kind in _FLAT_KINDS:  # a new block's first request
            self.dtype = dtype
            self.parts.append(array.tobytes())
        elif dtype == self.dtype:  # an equal dtype object (byte order written otherwise)
            self.parts.append(array.tobytes())
        else:  # another dtype within the block: arrays from now on, joined by NumPy
            if self.parts:
                self.parts = [np.frombuffer(b"".join(self.parts), self.dtype)]
            self.dtype = None
            self.parts.append(array)

    def take(self, rows: int) -> npt.NDArray[Any]:
        """The block's ``rows`` rows as one ``rows × columns`` array; the slot is emptied.

        Raises:
            ValueError: the parts do not hold ``rows`` rows of this tensor's columns.
        """
        parts, self.parts = self.parts, []
        if self.dtype is not None:
            values = np.frombuffer(b"".join(parts), self.dtype)
        else:
            cols = self.columns  # each part's values row-major, as PackageProfile.batch reads
            values = np.concatenate([np.reshape(a, (-1, cols)) for a in parts])
        if values.size != rows * self.columns:
            raise ValueError(
                f"tensor {self.name!r}: {values.size} values for {rows} rows of "
                f"{self.columns} columns"
            )
        return values.reshape(rows, self.columns)


class _Series:
    """One window's pending rows and counter of one (model, version, role).

    The request path keeps each profiled tensor of a request in that tensor's
    :class:`_Slot` (its bytes, for plain numbers). A full block is *sealed*: the request
    that fills it joins its slots and counts them (:meth:`_count`, ADR 0042);
    :meth:`flush` (a window's close) counts the partial block. Every row is counted once,
    into this series' counter.
    """

    __slots__ = (
        "counter",
        "fill",
        "first",
        "in_fast",
        "in_slots",
        "out_fast",
        "out_slots",
        "profile",
    )

    def __init__(self, profile: PackageProfile, counter: ProfileCounter) -> None:
        self.profile = profile
        self.counter = counter
        self.first = profile.inputs[0].tensor
        self.in_slots = [_Slot(t.tensor, t.columns, _NO_BLOCK) for t in profile.inputs]
        self.out_slots = [_Slot(t.tensor, t.columns, _NO_BLOCK) for t in profile.outputs]
        self.fill = 0
        self._bind()

    def _bind(self) -> None:
        """The request path's view of the slots: (name, bytes dtype, parts.append)."""
        self.in_fast = [(s.name, s.dtype, s.parts.append) for s in self.in_slots]
        self.out_fast = [(s.name, s.dtype, s.parts.append) for s in self.out_slots]

    def _open(self) -> tuple[list[_Slot], list[_Slot]]:
        """Fresh slots for the next block (each keeping its dtype); the old ones."""
        old = self.in_slots, self.out_slots
        self.in_slots = [_Slot(s.name, s.columns, _reopen(s.dtype)) for s in old[0]]
        self.out_slots = [_Slot(s.name, s.columns, _reopen(s.dtype)) for s in old[1]]
        self.fill = 0
        self._bind()
        return old

    def add(self, inputs: Tensors, outputs: Tensors, block: int) -> int:
        """Keep one request's profiled tensors; seal and count the block when it is full.

        Returns:
            Rows that could not be counted (0 unless tensors did not fit the profile, or
            one was missing: then the pending block is dropped).
        """
        try:
            first = inputs[self.first]
            for name, dtype, append in self.in_fast:
                array = inputs[name]
                if array.dtype is dtype:
                    append(array.tobytes())
                else:
                    self._odd(self.in_slots, name, array)
            for name, dtype, append in self.out_fast:
                array = outputs[name]
                if array.dtype is dtype:
                    append(array.tobytes())
                else:
                    self._odd(self.out_slots, name, array)
        except KeyError as e:  # cannot happen for an answered request: drop, never raise
            rows = self.fill + 1
            self._open()
            _log_unfit(rows, e)
            return rows
        rows = first.shape[0] if first.ndim else 1
        self.fill += rows
        if self.fill >= block:
            return self._seal()
        return 0

    def _odd(self, slots: list[_Slot], name: str, array: npt.NDArray[Any]) -> None:
        for slot in slots:
            if slot.name == name:
                slot.odd(array)
        self._bind()

    def _seal(self) -> int:
        """Count the pending rows now (fresh slots take the next requests); returns the
        rows that could not be counted."""
        rows = self.fill
        ins, outs = self._open()
        return self._count(rows, ins, outs)

    def flush(self) -> int:
        """Count every pending row now.

        Returns:
            Rows that could not be counted (the partial block's, when it does not fit
            the profile; they are logged too), for :attr:`ProfileObserver.dropped_rows`.
        """
        return self._seal() if self.fill else 0

    def _count(self, rows: int, ins: list[_Slot], outs: list[_Slot]) -> int:
        """Count one sealed block; returns the rows that could not be counted."""
        profile = self.profile
        try:
            joined_in = {slot.name: slot.take(rows) for slot in ins}
            joined_out = {slot.name: slot.take(rows) for slot in outs}
            counted_outputs = profile.batch(joined_out, "outputs") if profile.outputs else None
            batch = profile.batch(joined_in, "inputs")
            self.counter.count(batch, counted_outputs)
        except _UNFIT as e:
            _log_unfit(rows, e)
            return rows
        return 0


#: Kinds kept as bytes (plain values: no object pointers, one width per dtype).
_FLAT_KINDS: Final = "biuf"
#: A slot's dtype before its first request: no array's dtype is it.
_NO_BLOCK: Final[Any] = np.dtype([("none", np.void, 0)])


def _reopen(dtype: np.dtype[Any] | None) -> np.dtype[Any] | None:
    """The next block's dtype: the last one's bytes dtype (or none yet)."""
    return _NO_BLOCK if dtype is None else dtype


class ProfileObserver:
    """Counts the answered requests of watched versions; :meth:`close` ends a window.

    Thread-safety: :meth:`on_batch` runs on the event loop, :meth:`watch` on the updater's
    thread, :meth:`close` on the telemetry closer; one lock guards the table (the request
    path holds it for a few appends, and the request that seals a block while it counts
    the block). :meth:`close` swaps the table under the lock and counts the old series'
    pending rows outside it: no request touches them after the swap, so the request path
    never waits for a window's count.

    Args:
        sketches: keep KLL sketches (for KS) as the profiles ask; False counts bins only.
        block_rows: rows gathered before they are counted (1 … 65536).
    """

    def __init__(
        self,
        sketches: bool = False,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> None:
        if not 1 <= block_rows <= 65536:
            raise InvalidInputError("block_rows must be between 1 and 65536")
        self.sketches = sketches
        self.block_rows = block_rows
        self._profiles: dict[tuple[str, str], PackageProfile] = {}
        self._series: dict[Key, _Series] = {}
        self._lock = threading.Lock()
        #: Rows that could not be counted (tensors that did not fit the profile), in a
        #: block a request sealed or one a window's close flushed.
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
        """One answered request of a watched version: its tensors are kept for the
        window's block; a full block is sealed and counted in this request (ADR 0042).

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
            dropped = series.add(inputs, outputs, self.block_rows)
            if dropped:
                self.dropped_rows += dropped

    # -- the closer -------------------------------------------------------------------------

    def close(self, keys: Iterable[Key] = ()) -> dict[Key, dict[str, Any]]:
        """End the window: ``{(model, version, role): {"profile": wire}}`` for every
        series that counted something, and an empty one for each of ``keys`` (the windows
        the recorder closes) whose version is watched and served nothing. Shadow windows
        get none: a shadow candidate's mirrored requests are not counted.

        Every row a request handed over before the swap is in the window it returns; the
        next request's rows go to the next window."""
        with self._lock:
            table, self._series = self._series, {}
            profiles = dict(self._profiles)
        out: dict[Key, dict[str, Any]] = {}
        dropped = 0
        for key, series in table.items():
            dropped += series.flush()  # the pending rows
            out[key] = {"profile": series.counter.snapshot().to_wire()}
        if dropped:  # under the lock: the request path adds its own drops concurrently
            with self._lock:
                self.dropped_rows += dropped
        for key in keys:
            profile = profiles.get(key[:2])
            if key in out or profile is None or key[2] == "shadow":
                continue
            counter = ProfileCounter(profile.profile, 1, sketches=self.sketches)
            out[key] = {"profile": counter.snapshot().to_wire()}
        return out
