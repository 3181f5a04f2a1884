"""The reference profile of a model: fixed bins from the reference data (issue 9).

Built once at registration from a reference dataset the user gives, stored in the signed
package manifest (:meth:`ReferenceProfile.to_dict`), and read by every device and the hub,
so all of them count into exactly the same bins and their counts add.

* **Numeric** feature (or model output column): upper edges from the reference quantiles
  (``bins`` of them, 10 by default, ``inverted_cdf`` so an edge is a value the reference
  holds; repeated quantiles of heavy ties are kept once), with ``le`` semantics as in
  :class:`~modelfleet.monitoring.histogram.Histogram`: the first edge lies just below the
  reference minimum, the last is its maximum, so bucket 0 is the underflow (below the
  reference range) and the last bucket the overflow (above it); both are empty in the
  reference. Also the reference counts per bucket, the mean and the standard deviation
  (population, of the finite values; the Wasserstein distance is normalised by it), the
  missing count (NaN or ``None``) and a KLL sketch of the values (for KS).
* **Categorical** feature (or class-label output): the ``top_k`` most frequent values
  (20 by default; ties broken by the value), then "other"; counts of each and of missing.
  Values are compared by their string form (integral floats as integers).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from modelfleet.errors import InvalidInputError
from modelfleet.monitoring._columns import category_keys, columns, numeric
from modelfleet.monitoring._sketch import Sketch

__all__ = [
    "PROFILE_FORMAT",
    "CategoricalProfile",
    "FeatureKind",
    "FeatureProfile",
    "NumericProfile",
    "ReferenceProfile",
]

#: The profile format this code writes and reads.
PROFILE_FORMAT: Final = 1

_MAX_BINS: Final = 100
_MAX_TOP_K: Final = 1000
_MAX_NAME: Final = 256


class FeatureKind(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class NumericProfile:
    """Bins and reference statistics of one numeric feature.

    Attributes:
        name: the feature (or output column).
        edges: strictly increasing upper edges (``le``); ``edges[0]`` is just below the
            reference minimum and ``edges[-1]`` its maximum.
        counts: reference rows per bucket, ``len(edges) + 1`` of them (underflow first,
            overflow last).
        missing: reference rows where the value was missing.
        mean: mean of the finite reference values.
        std: population standard deviation of the finite reference values.
        sketch: base64 KLL sketch of the reference values, None when sketches are off.
    """

    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    missing: int
    mean: float
    std: float
    sketch: str | None = field(default=None, repr=False)

    kind: ClassVar[FeatureKind] = FeatureKind.NUMERIC

    @property
    def buckets(self) -> int:
        """Buckets a window counts into (the missing count not included)."""
        return len(self.edges) + 1

    @property
    def rows(self) -> int:
        return sum(self.counts) + self.missing

    def reference_sketch(self) -> Sketch | None:
        return None if self.sketch is None else Sketch.from_text(self.sketch)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "edges": list(self.edges),
            "counts": list(self.counts),
            "missing": self.missing,
            "mean": self.mean,
            "std": self.std,
        }
        if self.sketch is not None:
            out["sketch"] = self.sketch
        return out


@dataclass(frozen=True)
class CategoricalProfile:
    """The top values of one categorical feature.

    Attributes:
        name: the feature (or output).
        categories: the top values by reference count, most frequent first.
        counts: reference rows per category, then the "other" count (``len + 1``).
        missing: reference rows where the value was missing.
    """

    name: str
    categories: tuple[str, ...]
    counts: tuple[int, ...]
    missing: int

    kind: ClassVar[FeatureKind] = FeatureKind.CATEGORICAL

    @property
    def buckets(self) -> int:
        """Buckets a window counts into: each category, then "other"."""
        return len(self.categories) + 1

    @property
    def rows(self) -> int:
        return sum(self.counts) + self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "categories": list(self.categories),
            "counts": list(self.counts),
            "missing": self.missing,
        }


FeatureProfile = NumericProfile | CategoricalProfile


def _numeric_profile(
    name: str, col: npt.NDArray[Any], bins: int, sketch_k: int | None
) -> NumericProfile:
    x = numeric(col, f"reference feature {name!r}")
    present = x[~np.isnan(x)]
    finite = present[np.isfinite(present)]
    if finite.size == 0:
        raise InvalidInputError(f"reference feature {name!r} has no finite value")
    cuts = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf")
    low, high = float(finite.min()), float(finite.max())
    inner = np.unique(np.append(cuts, high))
    edges = np.concatenate([[np.nextafter(low, -math.inf)], inner])
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=edges.size + 1)
    sketch = None
    if sketch_k is not None:
        s = Sketch(sketch_k)
        s.update(present.astype(np.float32))
        sketch = s.to_text()
    return NumericProfile(
        name=name,
        edges=tuple(float(e) for e in edges),
        counts=tuple(int(c) for c in counts),
        missing=int(x.size - present.size),
        mean=float(finite.mean()),
        std=float(finite.std()),
        sketch=sketch,
    )


def _categorical_profile(name: str, col: npt.NDArray[Any], top_k: int) -> CategoricalProfile:
    keys, missing = category_keys(col)
    values, counts = np.unique(keys[~missing], return_counts=True)
    order = np.lexsort((values, -counts))  # most frequent first, ties by value
    top, rest = order[:top_k], order[top_k:]
    return CategoricalProfile(
        name=name,
        categories=tuple(str(v) for v in values[top]),
        counts=(*(int(c) for c in counts[top]), int(counts[rest].sum())),
        missing=int(missing.sum()),
    )


def _names(data: Any, names: Sequence[str] | None, prefix: str, what: str) -> list[str]:
    if isinstance(data, Mapping):
        out = list(data) if names is None else list(names)
    elif names is not None:
        out = list(names)
    else:
        arr = np.asarray(data)
        width = 1 if arr.ndim == 1 else (arr.shape[1] if arr.ndim == 2 else 0)
        out = [f"{prefix}{i}" for i in range(width)]
    if not out:
        raise InvalidInputError(f"{what}: no columns")
    for n in out:
        if not isinstance(n, str) or not n or len(n) > _MAX_NAME:
            raise InvalidInputError(f"{what}: a column name must be a non-empty string")
    if len(set(out)) != len(out):
        raise InvalidInputError(f"{what}: column names must be unique")
    return out


def _group(
    data: Any,
    names: Sequence[str] | None,
    categorical: Iterable[str],
    prefix: str,
    what: str,
    bins: int,
    top_k: int,
    sketch_k: int | None,
) -> tuple[FeatureProfile, ...]:
    cols_names = _names(data, names, prefix, what)
    cats = set(categorical)
    unknown = sorted(cats - set(cols_names))
    if unknown:
        raise InvalidInputError(f"{what}: categorical column {unknown[0]!r} is not a column")
    cols = columns(data, cols_names, what)
    if cols[0].size == 0:
        raise InvalidInputError(f"{what}: the reference holds no rows")
    return tuple(
        _categorical_profile(n, c, top_k) if n in cats else _numeric_profile(n, c, bins, sketch_k)
        for n, c in zip(cols_names, cols, strict=True)
    )


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-feature and per-output bins of a model's reference data.

    Build it with :meth:`build`; store it with :meth:`to_dict`; read it back with
    :meth:`from_dict` (strict). :attr:`digest` names it: windows counted against it carry
    the digest, so counts of different profiles are never added.

    Attributes:
        inputs: one profile per input feature, in column order.
        outputs: one profile per model output column (numeric) or label (categorical).
        bins: quantile bins asked for per numeric column (fewer where ties merge edges).
        top_k: categories kept per categorical column.
        sketch_k: KLL ``k`` of the sketches, None when no sketches are kept (no KS).
    """

    inputs: tuple[FeatureProfile, ...]
    outputs: tuple[FeatureProfile, ...] = ()
    bins: int = 10
    top_k: int = 20
    sketch_k: int | None = 200

    @classmethod
    def build(
        cls,
        inputs: Any,
        *,
        names: Sequence[str] | None = None,
        categorical: Iterable[str] = (),
        outputs: Any = None,
        output_names: Sequence[str] | None = None,
        categorical_outputs: Iterable[str] = (),
        bins: int = 10,
        top_k: int = 20,
        sketch_k: int | None = 200,
    ) -> ReferenceProfile:
        """Profile a reference dataset.

        Args:
            inputs: a 2-D array (rows × features) or a mapping of feature name to 1-D array.
            names: the feature names of a 2-D array (default ``x0``, ``x1``, …), or the
                order of a mapping's columns.
            categorical: the names of the categorical features (the rest are numeric).
            outputs: the model's outputs on the same rows, in the same shapes as
                ``inputs`` (a 1-D array is one column), or None.
            output_names: names of the output columns (default ``y0``, ``y1``, …).
            categorical_outputs: outputs that are class labels.
            bins: quantile bins per numeric column, 2 … 100.
            top_k: categories per categorical column, 1 … 1000.
            sketch_k: KLL ``k`` (8 … 65535), or None to keep no sketches.

        Raises:
            InvalidInputError: empty data, unknown or repeated names, a numeric column
                without a finite value, a bound out of range.
        """
        if not 2 <= bins <= _MAX_BINS:
            raise InvalidInputError(f"bins must be between 2 and {_MAX_BINS}")
        if not 1 <= top_k <= _MAX_TOP_K:
            raise InvalidInputError(f"top_k must be between 1 and {_MAX_TOP_K}")
        if sketch_k is not None:
            Sketch(sketch_k)  # checks the bound
        ins = _group(inputs, names, categorical, "x", "inputs", bins, top_k, sketch_k)
        outs: tuple[FeatureProfile, ...] = ()
        if outputs is not None:
            outs = _group(
                outputs, output_names, categorical_outputs, "y", "outputs", bins, top_k, sketch_k
            )
            if outs[0].rows != ins[0].rows:
                raise InvalidInputError("inputs and outputs must have the same rows")
        return cls(inputs=ins, outputs=outs, bins=bins, top_k=top_k, sketch_k=sketch_k)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.outputs)

    @property
    def rows(self) -> int:
        """Reference rows."""
        return self.inputs[0].rows

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form stored in the package manifest."""
        return {
            "format": PROFILE_FORMAT,
            "bins": self.bins,
            "top_k": self.top_k,
            "sketch_k": self.sketch_k,
            "inputs": [f.to_dict() for f in self.inputs],
            "outputs": [f.to_dict() for f in self.outputs],
        }

    @cached_property
    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of :meth:`to_dict`."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, doc: Any) -> ReferenceProfile:
        """Read a profile written by :meth:`to_dict`; nothing is trusted before this passes.

        Raises:
            InvalidInputError: a newer format, an unknown field, or any malformed value.
        """
        obj = _object(
            doc, "a reference profile", ("format", "bins", "top_k", "sketch_k", "inputs", "outputs")
        )
        version = obj.get("format")
        if type(version) is not int or version < 1:
            raise InvalidInputError("a reference profile needs an integer 'format'")
        if version > PROFILE_FORMAT:
            raise InvalidInputError(
                f"reference profile format {version} is newer than this code reads "
                f"({PROFILE_FORMAT})"
            )
        bins = _int(obj.get("bins"), "bins", 2, _MAX_BINS)
        top_k = _int(obj.get("top_k"), "top_k", 1, _MAX_TOP_K)
        sketch_k = obj.get("sketch_k")
        if sketch_k is not None:
            sketch_k = _int(sketch_k, "sketch_k", 8, 65535)
        inputs = _features(obj.get("inputs"), "inputs", bins, top_k, sketch_k)
        if not inputs:
            raise InvalidInputError("a reference profile needs at least one input")
        outputs = _features(obj.get("outputs", []), "outputs", bins, top_k, sketch_k)
        rows = {f.rows for f in (*inputs, *outputs)}
        if len(rows) != 1:
            raise InvalidInputError("every column of a reference profile must count the same rows")
        return cls(inputs=inputs, outputs=outputs, bins=bins, top_k=top_k, sketch_k=sketch_k)


def _object(doc: Any, what: str, known: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise InvalidInputError(f"{what} must be an object")
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise InvalidInputError(f"{what} has an unknown field {unknown[0]!r}")
    return doc


def _int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InvalidInputError(f"{what} must be an integer between {low} and {high}")
    return value


def _counts(value: Any, what: str, length: int | None = None) -> tuple[int, ...]:
    if not isinstance(value, list) or any(type(v) is not int or v < 0 for v in value):
        raise InvalidInputError(f"{what} must be a list of non-negative integers")
    if length is not None and len(value) != length:
        raise InvalidInputError(f"{what} must hold {length} counts")
    return tuple(value)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{what} must be a finite number")
    return float(value)


def _features(
    value: Any, group: str, bins: int, top_k: int, sketch_k: int | None
) -> tuple[FeatureProfile, ...]:
    if not isinstance(value, list):
        raise InvalidInputError(f"profile {group} must be a list")
    out: list[FeatureProfile] = []
    for i, item in enumerate(value):
        where = f"profile {group}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"{where} must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
            raise InvalidInputError(f"{where}: a name must be a non-empty string")
        kind = item.get("kind")
        if kind == FeatureKind.NUMERIC.value:
            out.append(_numeric_from(item, where, bins, sketch_k))
        elif kind == FeatureKind.CATEGORICAL.value:
            out.append(_categorical_from(item, where, top_k))
        else:
            raise InvalidInputError(f"{where}: kind must be 'numeric' or 'categorical'")
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"profile {group}: names must be unique")
    return tuple(out)


def _numeric_from(
    item: Mapping[str, Any], where: str, bins: int, sketch_k: int | None
) -> NumericProfile:
    _object(item, where, ("name", "kind", "edges", "counts", "missing", "mean", "std", "sketch"))
    edges = item.get("edges")
    if not isinstance(edges, list) or not 2 <= len(edges) <= bins + 1:
        raise InvalidInputError(f"{where}: edges must be a list of 2 to {bins + 1} numbers")
    floats = tuple(_finite(e, f"{where}: an edge") for e in edges)
    if any(b <= a for a, b in itertools.pairwise(floats)):
        raise InvalidInputError(f"{where}: edges must increase strictly")
    counts = _counts(item.get("counts"), f"{where}: counts", len(floats) + 1)
    missing = _counts([item.get("missing")], f"{where}: missing")[0]
    std = _finite(item.get("std"), f"{where}: std")
    if std < 0:
        raise InvalidInputError(f"{where}: std must not be negative")
    sketch = item.get("sketch")
    if (sketch is None) != (sketch_k is None):
        raise InvalidInputError(f"{where}: a sketch is required exactly when sketch_k is set")
    if sketch is not None:
        s = Sketch.from_text(sketch)
        if s.n != sum(counts):
            raise InvalidInputError(f"{where}: the sketch does not hold the counted values")
    return NumericProfile(
        name=item["name"],
        edges=floats,
        counts=counts,
        missing=missing,
        mean=_finite(item.get("mean"), f"{where}: mean"),
        std=std,
        sketch=sketch,
    )


def _categorical_from(item: Mapping[str, Any], where: str, top_k: int) -> CategoricalProfile:
    _object(item, where, ("name", "kind", "categories", "counts", "missing"))
    cats = item.get("categories")
    if (
        not isinstance(cats, list)
        or len(cats) > top_k
        or any(not isinstance(c, str) or len(c) > _MAX_NAME for c in cats)
        or len(set(cats)) != len(cats)
    ):
        raise InvalidInputError(f"{where}: categories must be at most {top_k} distinct strings")
    counts = _counts(item.get("counts"), f"{where}: counts", len(cats) + 1)
    missing = _counts([item.get("missing")], f"{where}: missing")[0]
    return CategoricalProfile(
        name=item["name"], categories=tuple(cats), counts=counts, missing=missing
    )
