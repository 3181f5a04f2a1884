"""Counting batches into a reference profile's bins, and the windows that merge exactly.

:class:`ProfileCounter` is what the device runs per model version: each batch of inputs
(and outputs) is counted into exactly the profile's buckets, plus a missing count per
column, plus a KLL quantile sketch per numeric column (for KS). It is vectorised per batch
(one compare per edge rank over the whole block, one ``np.bincount`` over all columns;
categorical values tallied first — ``np.unique``, or a ``Counter`` for ``str`` objects — then
a dictionary over the distinct values only) and buffers small batches (``flush_rows``), so
a single-row call costs one array copy.

:class:`ProfileWindow` is what a window carries: counts add, sketches merge, so windows,
devices and sites merge exactly at the hub (the sketches within their error bound; see
:mod:`modelfleet.monitoring._sketch`). Its wire form (:meth:`ProfileWindow.to_wire`) is
JSON-able: the counts sparse over the profile's flat bucket layout (each column's buckets
in profile order, then its missing count), the sketches base64.

Pure: no I/O, no clock. Not thread-safe by itself; owners that share one hold a lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring._columns import category_counts, columns, numeric
from modelfleet.monitoring._sketch import Sketch
from modelfleet.monitoring.profile import (
    CategoricalProfile,
    FeatureProfile,
    NumericProfile,
    ReferenceProfile,
)

__all__ = ["WINDOW_FORMAT", "FeatureCounts", "ProfileCounter", "ProfileWindow", "merge_wire"]

#: The wire format of a profile window this code writes and reads.
WINDOW_FORMAT: Final = 1

Counts = npt.NDArray[np.int64]
_GROUPS: Final = ("inputs", "outputs")


def _layout(features: tuple[FeatureProfile, ...]) -> npt.NDArray[np.int64]:
    """Offsets of each column's slots (buckets, then missing) in the flat layout; the last
    entry is the total size."""
    sizes = [f.buckets + 1 for f in features]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


@dataclass(frozen=True)
class FeatureCounts:
    """One column's counts in a window.

    Attributes:
        buckets: rows per profile bucket (numeric: underflow … overflow; categorical: each
            category, then "other").
        missing: rows where the value was missing.
        sketch: the KLL sketch of the non-missing values (numeric, sketches on), or None.
    """

    buckets: Counts
    missing: int
    sketch: Sketch | None

    @property
    def n(self) -> int:
        """Rows counted, missing ones included."""
        return int(self.buckets.sum()) + self.missing


@dataclass
class ProfileWindow:
    """Counts of one window (or of many merged) against one :class:`ReferenceProfile`.

    Attributes:
        profile: the profile the counts are in.
        counts: per group (``"inputs"``, ``"outputs"``) the flat counts (see module doc).
        sketches: per group, one sketch (or None) per column in profile order.
        windows: how many windows were merged into this one.
        sketched: False when a counter kept no sketches (an agent with sketches off,
            or a merge with such a window): then no column has a sketch, KS is not
            computed, and the wire form says ``"sketched": false``.
    """

    profile: ReferenceProfile
    counts: dict[str, Counts]
    sketches: dict[str, list[Sketch | None]]
    windows: int = 1
    _digest: str = field(default="", repr=False)
    sketched: bool = True

    def __post_init__(self) -> None:
        if not self._digest:
            self._digest = self.profile.digest

    @classmethod
    def empty(cls, profile: ReferenceProfile, digest: str = "") -> ProfileWindow:
        """A window of no rows (``windows`` = 0), to merge others into."""
        return cls(
            profile=profile,
            counts={
                g: np.zeros(int(_layout(_features(profile, g))[-1]), np.int64) for g in _GROUPS
            },
            sketches={g: [None] * len(_features(profile, g)) for g in _GROUPS},
            windows=0,
            _digest=digest,
        )

    @property
    def digest(self) -> str:
        return self._digest

    def feature(self, name: str, group: str = "inputs") -> FeatureCounts:
        """The counts of column ``name`` of ``group``.

        Raises:
            InvalidInputError: no such column.
        """
        feats = _features(self.profile, group)
        for i, f in enumerate(feats):
            if f.name == name:
                return self._at(group, i)
        raise InvalidInputError(f"the profile has no {group} column {name!r}")

    def _at(self, group: str, i: int) -> FeatureCounts:
        off = _layout(_features(self.profile, group))
        slots = self.counts[group][off[i] : off[i + 1]]
        return FeatureCounts(slots[:-1].copy(), int(slots[-1]), self.sketches[group][i])

    def columns(self, group: str = "inputs") -> list[tuple[FeatureProfile, FeatureCounts]]:
        """Each column of ``group`` with its counts, in profile order."""
        feats = _features(self.profile, group)
        off = _layout(feats)
        counts, sketches = self.counts[group], self.sketches[group]
        out = []
        for i, f in enumerate(feats):
            slots = counts[off[i] : off[i + 1]]
            out.append((f, FeatureCounts(slots[:-1].copy(), int(slots[-1]), sketches[i])))
        return out

    @property
    def rows(self) -> int:
        """Input rows counted."""
        return self._at("inputs", 0).n

    def merge(self, other: ProfileWindow) -> None:
        """Add ``other``'s counts and sketches into this window (``other`` is unchanged).

        Raises:
            InvalidInputError: the windows were counted against different profiles.
        """
        if other.digest != self.digest:
            raise InvalidInputError("windows of different reference profiles cannot be merged")
        if not other.sketched:
            self._unsketch()
        for g in _GROUPS:
            self.counts[g] = self.counts[g] + other.counts[g]
            if not self.sketched:
                continue
            mine = self.sketches[g]
            for i, s in enumerate(other.sketches[g]):
                if s is None:
                    continue
                if mine[i] is None:
                    mine[i] = s.copy()
                else:
                    mine[i].merge(s)  # type: ignore[union-attr]
        self.windows += other.windows

    def _unsketch(self) -> None:
        self.sketched = False
        self.sketches = {g: [None] * len(v) for g, v in self.sketches.items()}

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able wire form: sparse counts, base64 sketches (empty ones left out)."""
        out: dict[str, Any] = {
            "format": WINDOW_FORMAT,
            "profile": self.digest,
            "windows": self.windows,
        }
        if not self.sketched and self.profile.sketch_k is not None:
            out["sketched"] = False
        for g in _GROUPS:
            c = self.counts[g]
            nz = np.flatnonzero(c)
            out[g] = {"index": nz.tolist(), "count": c[nz].tolist()}
        out["sketches"] = {
            g: {
                f.name: s.to_text()
                for f, s in zip(_features(self.profile, g), self.sketches[g], strict=True)
                if s is not None and s.n
            }
            for g in _GROUPS
        }
        return out

    @classmethod
    def from_wire(cls, doc: Any, profile: ReferenceProfile, digest: str = "") -> ProfileWindow:
        """Read a window sent against ``profile`` (``digest``: its digest, if known).

        Raises:
            InvalidInputError: a newer format, another profile, malformed counts or
                sketches, or a sketch that does not hold the values its column counts.
        """
        return merge_wire([doc], profile, digest=digest)


def _features(profile: ReferenceProfile, group: str) -> tuple[FeatureProfile, ...]:
    if group == "inputs":
        return profile.inputs
    if group == "outputs":
        return profile.outputs
    raise InvalidInputError(f"unknown column group {group!r}")


def _sparse(obj: Any, what: str) -> tuple[list[Any], list[Any]]:
    """The index and count lists of one group of one window (checked in bulk later)."""
    if not isinstance(obj, Mapping):
        raise InvalidInputError(f"{what} must be an object with index and count lists")
    index, count = obj.get("index"), obj.get("count")
    if not isinstance(index, list) or not isinstance(count, list) or len(index) != len(count):
        raise InvalidInputError(f"{what}: index and count must be lists of one length")
    return index, count


def _ints(values: list[Any], what: str) -> npt.NDArray[np.int64]:
    if not set(map(type, values)) <= {int}:
        raise InvalidInputError(f"{what} must be integers")
    try:
        return np.asarray(values, dtype=np.int64)
    except OverflowError as e:
        raise InvalidInputError(f"{what} must fit in 64 bits") from e


def _check_counts(
    index: npt.NDArray[np.int64], count: npt.NDArray[np.int64], starts: npt.NDArray[np.int64],
    size: int, group: str,
) -> None:  # fmt: skip
    """Every window's indices increase strictly within 0 … size-1; counts ≥ 0."""
    if not index.size:
        return
    bad = (index < 0) | (index >= size) | (count < 0)
    rising = np.ones(index.size, np.bool_)
    rising[1:] = index[1:] > index[:-1]
    rising[starts[starts < index.size]] = True  # a window's first index follows no other
    bad |= ~rising
    if bad.any():
        window = int(np.searchsorted(starts, int(np.flatnonzero(bad)[0]), side="right")) - 1
        raise InvalidInputError(
            f"window {window} {group}: indices must increase within 0 … {size - 1} and "
            "counts be non-negative"
        )


def merge_wire(
    docs: Iterable[Any],
    profile: ReferenceProfile,
    *,
    sketches: bool = True,
    digest: str = "",
) -> ProfileWindow:
    """Check and merge wire windows of one profile in one pass (the hub's path).

    The counts of all windows are checked and summed in bulk (one ``np.bincount`` per
    group); no per-window object is built. With ``sketches=False`` the sketches are checked
    for shape only and not merged (the binned statistics and the combined verdict need
    none; KS does). A window sent with ``"sketched": false`` (an agent with sketches
    off) carries no sketches: the merged window then has none either (``sketched`` is
    False; KS needs every window's values). Nothing is returned when any window is
    refused.

    Raises:
        InvalidInputError: as :meth:`ProfileWindow.from_wire`, for any of the windows.
    """
    digest = digest or profile.digest
    out = ProfileWindow.empty(profile, digest)
    layouts = {g: _layout(_features(profile, g)) for g in _GROUPS}
    index: dict[str, list[Any]] = {g: [] for g in _GROUPS}
    count: dict[str, list[Any]] = {g: [] for g in _GROUPS}
    starts: dict[str, list[int]] = {g: [] for g in _GROUPS}
    claimed: dict[str, list[tuple[int, int, int]]] = {g: [] for g in _GROUPS}
    numeric = {
        g: {
            f.name: i
            for i, f in enumerate(_features(profile, g))
            if isinstance(f, NumericProfile) and profile.sketch_k is not None
        }
        for g in _GROUPS
    }
    windows = 0
    unsketched: list[int] = []
    w = -1
    for w, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            raise InvalidInputError("a profile window must be an object")
        version = doc.get("format")
        if type(version) is not int or version < 1:
            raise InvalidInputError("a profile window needs an integer 'format'")
        if version > WINDOW_FORMAT:
            raise InvalidInputError(
                f"profile window format {version} is newer than this code reads ({WINDOW_FORMAT})"
            )
        if doc.get("profile") != digest:
            raise InvalidInputError("the window was counted against another reference profile")
        n = doc.get("windows", 1)
        if type(n) is not int or n < 0:
            raise InvalidInputError("a window's 'windows' must be a non-negative integer")
        windows += n
        found = doc.get("sketches", {})
        if not isinstance(found, Mapping):
            raise InvalidInputError("a window's sketches must be an object")
        sketched = doc.get("sketched", True)
        if type(sketched) is not bool:
            raise InvalidInputError("a window's 'sketched' must be true or false")
        if not sketched:
            if any(found.get(g) for g in _GROUPS):
                raise InvalidInputError("a window sent with 'sketched': false has sketches")
            unsketched.append(w)
        for g in _GROUPS:
            i, c = _sparse(doc.get(g, {"index": [], "count": []}), f"window {w} {g}")
            starts[g].append(len(index[g]))
            index[g].extend(i)
            count[g].extend(c)
            texts = found.get(g, {})
            if not isinstance(texts, Mapping):
                raise InvalidInputError(f"a window's {g} sketches must be an object")
            wanted = numeric[g]
            for name, text in texts.items():
                col = wanted.get(name)
                if col is None:
                    raise InvalidInputError(f"a window sketches no numeric {g} column {name!r}")
                if not sketches:
                    if not isinstance(text, str):
                        raise InvalidInputError("a sketch must be a base64 string")
                    continue
                sketch = Sketch.from_text(text)
                claimed[g].append((w, col, sketch.n))
                mine = out.sketches[g][col]
                if mine is None:
                    out.sketches[g][col] = sketch
                else:
                    mine.merge(sketch)
    total = w + 1
    for g in _GROUPS:
        layout = layouts[g]
        size = int(layout[-1])
        idx = _ints(index[g], f"window {g} indices")
        cnt = _ints(count[g], f"window {g} counts")
        begin = np.asarray(starts[g], np.int64)
        _check_counts(idx, cnt, begin, size, g)
        if idx.size:
            out.counts[g] = np.bincount(idx, weights=cnt, minlength=size).astype(np.int64)
        if not sketches or not numeric[g]:
            continue
        # values each window counted per numeric column (its buckets less its missing slot)
        # against the values its sketch holds: a sketch of other data is refused
        cols = len(layout) - 1
        window_of = np.searchsorted(begin, np.arange(idx.size), side="right") - 1
        col_of = np.searchsorted(layout, idx, side="right") - 1
        present = idx != layout[col_of + 1] - 1
        per = np.bincount(
            (window_of * cols + col_of)[present], weights=cnt[present], minlength=total * cols
        ).reshape(total, cols)
        held = np.zeros((total, cols))
        for win, col, n_held in claimed[g]:
            held[win, col] = n_held
        held[unsketched] = per[unsketched]  # nothing sketched, nothing to check
        sketched = list(numeric[g].values())
        mismatch = per[:, sketched] != held[:, sketched]
        if mismatch.any():
            win, j = np.argwhere(mismatch)[0]
            name = _features(profile, g)[sketched[j]].name
            raise InvalidInputError(
                f"window {int(win)}: the sketch of {g} column {name!r} holds "
                f"{int(held[win, sketched[j]])} values, the counts {int(per[win, sketched[j]])}"
            )
    out.windows = windows
    if unsketched:
        out._unsketch()
    return out


#: NumPy's ufunc buffer (elements) while comparing a block with its edges. A comparison
#: of rows × columns against one edge per row broadcasts the edge; with the default
#: buffer (8,192) NumPy 2 buffers rows shorter than it, copying the edge into the buffer,
#: and the compare runs ~3x slower than with a buffer no longer than a row.
_COMPARE_BUFSIZE: Final = 256


def _buckets(nums: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> Any:
    """Per value (``nums``: columns × rows), the number of its column's edges below it
    (``edges``: columns × width, +inf padded): its bucket, as ``bisect_left``; 0 for NaN.

    One compare into a reused mask and an add of the mask's bytes per edge rank: no
    temporary per edge and no bool-to-uint8 cast (widths ≤ 255; profiles have ≤ 101).
    """
    below = np.zeros(nums.shape, np.uint8)
    above = np.empty(nums.shape, np.bool_)
    step = above.view(np.uint8)
    old = np.setbufsize(_COMPARE_BUFSIZE)
    try:
        for k in range(edges.shape[1]):
            np.greater(nums, edges[:, k : k + 1], out=above)
            below += step
    finally:
        np.setbufsize(old)
    return below


class _Group:
    """The counter of one column group (inputs or outputs)."""

    def __init__(
        self, features: tuple[FeatureProfile, ...], sketch_k: int | None, capacity: int
    ) -> None:
        self.features = features
        self.names = [f.name for f in features]
        self.layout = _layout(features)
        self.num = [i for i, f in enumerate(features) if isinstance(f, NumericProfile)]
        self.cat = [i for i, f in enumerate(features) if isinstance(f, CategoricalProfile)]
        self.all_numeric = not self.cat
        # every numeric column's edges, padded with +inf to one width: a value's bucket is
        # the number of its column's edges below it (``le``, as bisect_left), counted one
        # edge rank at a time over the whole block (faster than a searchsorted per column
        # for ≤ 100 edges)
        width = max((len(features[i].edges) for i in self.num), default=0)  # type: ignore[union-attr]
        self.edges = np.full((len(self.num), width), np.inf)
        for j, i in enumerate(self.num):
            e = features[i].edges  # type: ignore[union-attr]
            self.edges[j, : len(e)] = e
        self.num_offset = self.layout[self.num]
        self.num_missing = self.layout[[i + 1 for i in self.num]] - 1
        self.index: list[dict[str, int]] = [
            {c: j for j, c in enumerate(features[i].categories)}  # type: ignore[union-attr]
            for i in self.cat
        ]
        self.sketch_k = sketch_k
        self.capacity = capacity
        self.buf = np.empty((len(self.num), capacity), np.float64)
        self.cat_parts: list[list[npt.NDArray[Any]]] = [[] for _ in self.cat]
        self.fill = 0
        self.reset()

    def reset(self) -> None:
        self.counts = np.zeros(int(self.layout[-1]), np.int64)
        self.sketches: list[Sketch | None] = [None] * len(self.features)
        if self.sketch_k is not None:
            for i in self.num:
                self.sketches[i] = Sketch(self.sketch_k)

    def prepare(self, data: Any, what: str) -> tuple[int, Any]:
        """Check one batch; return its rows and what :meth:`push` takes."""
        if self.all_numeric and isinstance(data, np.ndarray) and data.dtype.kind in "fiub":
            block = data.reshape(-1, 1) if data.ndim == 1 and len(self.num) == 1 else data
            if block.ndim != 2 or block.shape[1] != len(self.num):
                raise InvalidInputError(
                    f"{what}: expected rows × {len(self.num)} columns, got shape {data.shape}"
                )
            return block.shape[0], block
        cols = columns(data, self.names, what)
        nums = [numeric(cols[i], what) for i in self.num]
        return cols[0].shape[0], (nums, [cols[i] for i in self.cat])

    def push(self, rows: int, prepared: Any) -> None:
        """Buffer (or, when large, count at once) a batch from :meth:`prepare`."""
        if self.fill + rows > self.capacity:
            self.flush()
        if isinstance(prepared, np.ndarray):
            if rows >= self.capacity:
                self._count(prepared.T.astype(np.float64, copy=False), [])
            else:
                self.buf[:, self.fill : self.fill + rows] = prepared.T
                self.fill += rows
            return
        nums, cats = prepared
        if rows >= self.capacity:
            if nums:  # one C-level copy of every column (a Python loop costs ~1 µs each)
                block = np.concatenate(nums).reshape(len(nums), rows)
            else:
                block = np.empty((0, rows), np.float64)
            self._count(block, cats)
            return
        for j, col in enumerate(nums):
            self.buf[j, self.fill : self.fill + rows] = col
        for j, col in enumerate(cats):
            self.cat_parts[j].append(col.copy())
        self.fill += rows

    def flush(self) -> None:
        if not self.fill:
            return
        cats = [p[0] if len(p) == 1 else np.concatenate(p) for p in self.cat_parts]
        self._count(self.buf[:, : self.fill], cats)
        self.fill = 0
        self.cat_parts = [[] for _ in self.cat]

    def _count(self, nums: npt.NDArray[np.float64], cats: list[npt.NDArray[Any]]) -> None:
        """Count a column-major numeric block and the categorical columns; the counts are
        added in one step, at the end."""
        rows = nums.shape[1] if self.num else (cats[0].shape[0] if cats else 0)
        add = np.zeros_like(self.counts)
        if self.num and rows:
            nan = np.isnan(nums)
            any_nan = bool(nan.any())
            below = _buckets(nums, self.edges)
            # the flat slot of each value: its bucket plus its column's offset (one pass)
            idx = np.add(below, self.num_offset[:, None], dtype=np.intp)
            if any_nan:
                idx = np.where(nan, self.num_missing[:, None], idx)
            add += np.bincount(idx.ravel(), minlength=add.size)
            if self.sketch_k is not None:
                values = nums.astype(np.float32)
                for j in range(len(self.num)):
                    col = values[j]
                    if any_nan:
                        col = col[~nan[j]]
                    self._sketch(j).update(col)
        for j, i in enumerate(self.cat):
            # distinct values first (tallied), then a dictionary over those only
            keys, tally, missing = category_counts(cats[j])
            off = int(self.layout[i])
            buckets = self.features[i].buckets
            index = self.index[j]
            other = buckets - 1
            codes = np.fromiter(
                (index.get(v, other) for v in keys.tolist()), np.int64, count=keys.size
            )
            np.add.at(add, codes + off, tally)
            add[off + buckets] += missing
        self.counts += add

    def _sketch(self, j: int) -> Sketch:
        sketch = self.sketches[self.num[j]]
        assert sketch is not None  # sketch_k set: every numeric column has one
        return sketch


class ProfileCounter:
    """Counts batches of one model version into a reference profile's bins.

    Args:
        profile: the version's reference profile.
        flush_rows: rows buffered before they are counted (1 … 65536); a batch at least
            this large is counted at once. :meth:`snapshot` counts what is buffered.
        sketches: keep the KLL sketches the profile asks for (``sketch_k``); False
            counts the bins only (cheaper, and smaller windows: no KS for them).

    Not thread-safe by itself.
    """

    def __init__(
        self, profile: ReferenceProfile, flush_rows: int = 1024, *, sketches: bool = True
    ) -> None:
        if not 1 <= flush_rows <= 65536:
            raise InvalidInputError("flush_rows must be between 1 and 65536")
        self.profile = profile
        self._digest = profile.digest
        self._sketched = sketches or profile.sketch_k is None
        k = profile.sketch_k if sketches else None
        self._inputs = _Group(profile.inputs, k, flush_rows)
        self._outputs = _Group(profile.outputs, k, flush_rows) if profile.outputs else None

    def count(self, inputs: Any, outputs: Any = None) -> None:
        """Count one batch: inputs as a 2-D array (rows × profile columns, in profile
        order), a 1-D array (one column) or a mapping of name to 1-D array; outputs in the
        same shapes (None when they are not watched).

        Raises:
            InvalidInputError: a wrong shape, a missing or unknown column, a non-number
                in a numeric column, outputs with another number of rows, outputs given
                to a profile without outputs. Nothing of the batch is counted then.
        """
        if outputs is not None and self._outputs is None:
            raise InvalidInputError("the reference profile has no outputs to count")
        rows, prepared = self._inputs.prepare(inputs, "inputs")
        if outputs is not None and self._outputs is not None:
            rows_out, prepared_out = self._outputs.prepare(outputs, "outputs")
            if rows_out != rows:
                raise InvalidInputError("inputs and outputs must have the same rows")
            self._outputs.push(rows_out, prepared_out)
        self._inputs.push(rows, prepared)

    def snapshot(self, reset: bool = True) -> ProfileWindow:
        """The window counted so far (buffered rows included); with ``reset`` (the
        default) the counter starts a new window."""
        groups = {"inputs": self._inputs, "outputs": self._outputs}
        counts: dict[str, Counts] = {}
        sketches: dict[str, list[Sketch | None]] = {}
        for name, g in groups.items():
            if g is None:
                counts[name] = np.zeros(0, np.int64)
                sketches[name] = []
                continue
            g.flush()
            if reset:
                counts[name], sketches[name] = g.counts, g.sketches
                g.reset()
            else:
                counts[name] = g.counts.copy()
                sketches[name] = [None if s is None else s.copy() for s in g.sketches]
        return ProfileWindow(self.profile, counts, sketches, 1, self._digest, self._sketched)
