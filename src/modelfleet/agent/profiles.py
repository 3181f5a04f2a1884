"""Drift counts on the device: answered requests counted into their version's reference profile.

Issue 9. Each loaded version whose signed manifest carries a reference profile is
*watched* (:meth:`ProfileObserver.watch`, called by the model loader before the version
is routed). The infer endpoint hands every answered request of a watched version to
:meth:`ProfileObserver.on_batch` — the request path appends each profiled tensor of the
request to a list (no copy; numpy arrays are no work for the garbage collector); every
``block_rows`` rows (1024) the block is sealed and counted vectorised
(:class:`~modelfleet.monitoring.profile_counts.ProfileCounter`) in steps of ~5–50 µs, one
step in each following request, so no request pays the ~1 ms of a whole block (ADR 0042).

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
from collections.abc import Generator, Iterable, Mapping
from operator import attrgetter
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.profile_counts import ProfileCounter
from modelfleet.packaging.reference import PackageProfile

__all__ = ["DEFAULT_BLOCK_ROWS", "DEFAULT_STEP_VALUES", "ProfileObserver"]

log = logging.getLogger("modelfleet.agent.profiles")

#: Rows kept (as tensor references) before they are sealed into a block and counted.
DEFAULT_BLOCK_ROWS: Final = 1024
#: Compared values per counting step that a request runs (~5–15 µs on the benchmark box;
#: one edge rank of a 1,024-row block of 10 columns).
DEFAULT_STEP_VALUES: Final = 16384

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
    block is *sealed*: its lists are handed to a counting generator (:meth:`_count`) and
    the next requests each run one step of it (a part of the join, one edge rank of the
    compare, the bincount: ~30 steps of 5–50 µs for the benchmark model's block) until
    it is done, so no request pays the whole block (~1 ms; issue 9, ADR 0042). A request
    of ``n`` rows runs ``1 + n // 32`` steps. A block sealed while the previous one is
    still being counted first finishes that one; :meth:`flush` (a window's close)
    finishes both. Every row is counted once, into this series' counter.
    """

    __slots__ = (
        "counter",
        "fill",
        "first",
        "in_names",
        "in_slots",
        "out_names",
        "out_slots",
        "profile",
        "step_values",
        "work",
    )

    def __init__(self, profile: PackageProfile, counter: ProfileCounter, step_values: int) -> None:
        self.profile = profile
        self.counter = counter
        self.step_values = step_values
        self.first = profile.inputs[0].tensor
        self.in_names = [t.tensor for t in profile.inputs]
        self.out_names = [t.tensor for t in profile.outputs]
        self.work: Generator[None, None, int] | None = None
        self._open()

    def _open(self) -> None:
        """Fresh lists for the next block."""
        self.in_slots: list[tuple[str, list[npt.NDArray[Any]]]] = [
            (name, []) for name in self.in_names
        ]
        self.out_slots: list[tuple[str, list[npt.NDArray[Any]]]] = [
            (name, []) for name in self.out_names
        ]
        self.fill = 0

    def add(self, inputs: Tensors, outputs: Tensors, block: int) -> int:
        """Keep one request's profiled tensors; seal the block when it is full, else run
        one step of the block being counted, if any.

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
            self._open()
            _log_unfit(rows, e)
            return rows
        rows = first.shape[0] if first.ndim else 1
        self.fill += rows
        if self.fill >= block:
            return self._seal()
        if self.work is None:
            return 0
        dropped = self.step()
        for _ in range(rows >> 5):  # a batch runs more steps: done before the next seal
            if self.work is None:
                break
            dropped += self.step()
        return dropped

    def step(self) -> int:
        """Run one step of the block being counted; returns rows that could not be."""
        work = self.work
        if work is None:
            return 0
        try:
            next(work)
        except StopIteration as done:
            self.work = None
            return int(done.value)
        return 0

    def _finish(self) -> int:
        dropped = 0
        while self.work is not None:
            dropped += self.step()
        return dropped

    def _seal(self) -> int:
        """Hand the pending rows to a counting generator (finishing the previous one
        first) and run its first step."""
        dropped = self._finish()
        rows, ins, outs = self.fill, self.in_slots, self.out_slots
        self._open()
        self.work = self._count(rows, ins, outs)
        return dropped + self.step()

    def flush(self) -> int:
        """Count every pending row now; returns the rows that could not be counted."""
        dropped = self._finish()
        if self.fill:
            self._seal()
            dropped += self._finish()
        return dropped

    def _count(
        self,
        rows: int,
        ins: list[tuple[str, list[npt.NDArray[Any]]]],
        outs: list[tuple[str, list[npt.NDArray[Any]]]],
    ) -> Generator[None, None, int]:
        """Count one sealed block in steps; returns the rows that could not be counted."""
        profile = self.profile
        try:
            joined_in = {}
            for name, parts in ins:
                joined_in[name] = yield from _joined(parts)
            joined_out = {}
            for name, parts in outs:
                joined_out[name] = yield from _joined(parts)
            del ins, outs  # the parts may go
            counted_outputs = profile.batch(joined_out, "outputs") if profile.outputs else None
            yield from self.counter.count_steps(
                profile.batch(joined_in, "inputs"), counted_outputs, self.step_values
            )
        except _UNFIT as e:
            _log_unfit(rows, e)
            return rows
        return 0


#: Tensors joined per step: ~5–15 µs of ``bytes.join`` and checks for one-row tensors.
_JOIN_PARTS: Final = 128
#: Kinds whose C-contiguous arrays are joined as bytes (plain values: no object pointers).
_FLAT_KINDS: Final = "biufUS"
_dtype_of = attrgetter("dtype")
_shape_of = attrgetter("shape")


def _joined(parts: list[npt.NDArray[Any]]) -> Generator[None, None, npt.NDArray[Any]]:
    """The parts joined along their first axis, in steps (a new array: parts may go).

    One-row requests make a block of ~1,000 tiny arrays, which ``np.concatenate`` joins at
    ~0.3 µs each; ``bytes.join`` over their buffers takes ~0.05 µs, once every part is
    known to share the first's dtype and trailing shape and to be C-contiguous (a
    non-contiguous one refuses its buffer: then ``np.concatenate`` does it).
    """
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    dtype, tail = first.dtype, first.shape[1:]
    if first.ndim and dtype.kind in _FLAT_KINDS:
        chunks: list[bytes] = []
        for i in range(0, len(parts), _JOIN_PARTS):
            if i:
                yield
            chunk = parts[i : i + _JOIN_PARTS]
            if not _alike(chunk, dtype, first.shape):
                break
            try:
                chunks.append(b"".join(chunk))  # type: ignore[arg-type]
            except TypeError:  # not C-contiguous: no buffer
                break
        else:
            return np.frombuffer(b"".join(chunks), dtype).reshape(-1, *tail)
        yield
    return np.concatenate(parts)


def _alike(chunk: list[npt.NDArray[Any]], dtype: np.dtype[Any], shape: tuple[int, ...]) -> bool:
    """Whether every array of ``chunk`` has ``dtype`` and ``shape``'s trailing shape (and
    at least one axis)."""
    dtypes = list(map(_dtype_of, chunk))
    if dtypes.count(dtype) != len(dtypes):
        return False
    shapes = list(map(_shape_of, chunk))
    if shapes.count(shape) == len(shapes):
        return True
    tail = shape[1:]
    return all(len(s) == len(shape) and s[1:] == tail for s in set(shapes))


class ProfileObserver:
    """Counts the answered requests of watched versions; :meth:`close` ends a window.

    Thread-safety: :meth:`on_batch` runs on the event loop, :meth:`watch` on the updater's
    thread, :meth:`close` on the telemetry closer; one lock guards the table (the request
    path holds it for a few appends and one counting step). :meth:`close` swaps the table
    under the lock and finishes the old series' counts outside it: no request touches
    them after the swap, so the request path never waits for a window's count.

    Args:
        sketches: keep KLL sketches (for KS) as the profiles ask; False counts bins only.
        block_rows: rows gathered before they are counted (1 … 65536).
        step_values: compared values of a sealed block's count that one request runs
            (≥ 1; a value above ``block_rows`` × columns counts a block in the request
            that seals it, as before ADR 0042).
    """

    def __init__(
        self,
        sketches: bool = False,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        step_values: int = DEFAULT_STEP_VALUES,
    ) -> None:
        if not 1 <= block_rows <= 65536:
            raise InvalidInputError("block_rows must be between 1 and 65536")
        if step_values < 1:
            raise InvalidInputError("step_values must be at least 1")
        self.sketches = sketches
        self.block_rows = block_rows
        self.step_values = step_values
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
        """One answered request of a watched version: its tensors are kept for the
        window's block; a full block is sealed and counted over the next requests, one
        step each (ADR 0042).

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
                    self.step_values,
                )
            self.dropped_rows += series.add(inputs, outputs, self.block_rows)

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
            dropped += series.flush()  # the pending rows and any block still being counted
            out[key] = {"profile": series.counter.snapshot().to_wire()}
        if dropped:
            with self._lock:
                self.dropped_rows += dropped
        for key in keys:
            profile = profiles.get(key[:2])
            if key in out or profile is None or key[2] == "shadow":
                continue
            counter = ProfileCounter(profile.profile, 1, sketches=self.sketches)
            out[key] = {"profile": counter.snapshot().to_wire()}
        return out
