"""Columns of a batch as the profile and the counter read them (private).

A batch is a 2-D NumPy array (rows × columns, in profile order), a 1-D array (one column)
or a mapping of column name to 1-D array. Numeric columns become float64 with NaN for a
missing value (``None`` in an object array is missing too). Categorical values are compared
by their string form, except that integral values of a float column are written as integers
(a float column of codes ``1.0`` matches an integer column ``1``); ``None`` and NaN are
missing. Everything is vectorised over rows; the loops here run over columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modelfleet.errors import InvalidInputError

Batch = npt.ArrayLike | Mapping[str, npt.ArrayLike]
Floats = npt.NDArray[np.float64]
Keys = npt.NDArray[np.str_]
Mask = npt.NDArray[np.bool_]
Tally = npt.NDArray[np.int64]

_EXACT_INT = 2.0**53


def columns(data: Any, names: Sequence[str], what: str) -> list[npt.NDArray[Any]]:
    """The 1-D columns of ``data`` in the order of ``names``, all of one length.

    Raises:
        InvalidInputError: a missing or extra column, a wrong shape, unequal lengths.
    """
    if isinstance(data, Mapping):
        missing = [n for n in names if n not in data]
        if missing:
            raise InvalidInputError(f"{what}: no column {missing[0]!r}")
        extra = sorted(set(data) - set(names))
        if extra:
            raise InvalidInputError(f"{what}: unknown column {extra[0]!r}")
        cols = [np.asarray(data[n]) for n in names]
    else:
        arr = np.asarray(data)
        if arr.ndim == 1 and len(names) == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise InvalidInputError(
                f"{what}: expected rows × {len(names)} columns, got shape {arr.shape}"
            )
        cols = [arr[:, j] for j in range(arr.shape[1])]
    lengths = {c.shape for c in cols}
    if any(c.ndim != 1 for c in cols) or len(lengths) > 1:
        raise InvalidInputError(f"{what}: every column must be 1-D and of one length")
    return cols


def numeric(col: npt.NDArray[Any], what: str) -> Floats:
    """``col`` as float64, NaN where missing.

    Raises:
        InvalidInputError: a value that is not a number.
    """
    if col.dtype.kind in "fiub":
        return col.astype(np.float64, copy=False)
    try:
        return np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{what}: a numeric column holds a non-number") from e


def category_keys(col: npt.NDArray[Any]) -> tuple[Keys, Mask]:
    """The comparison keys of a categorical column and where it is missing."""
    kind = col.dtype.kind
    if kind == "f":
        missing = np.isnan(col)
        integral = ~missing & (np.abs(col) < _EXACT_INT) & (col == np.round(col))
        keys = col.astype(np.str_)
        if integral.any():
            keys = keys.astype(object)
            keys[integral] = col[integral].astype(np.int64).astype(np.str_)
            keys = keys.astype(np.str_)
        return keys, missing
    if kind == "O":
        missing = np.asarray(col == None)  # noqa: E711 - elementwise over objects
        missing |= np.asarray(col != col)  # NaN
        return col.astype(np.str_), missing
    if kind in "SU":
        return col.astype(np.str_), np.zeros(col.shape, dtype=np.bool_)
    return col.astype(np.str_), np.zeros(col.shape, dtype=np.bool_)


def category_counts(col: npt.NDArray[Any]) -> tuple[Keys, Tally, int]:
    """The keys of ``col``'s present values with how often each occurs, and its missing
    count: the rows of :func:`category_keys`, tallied.

    A key may appear more than once (two values that write alike); callers sum by key.
    The values are grouped first and only the distinct ones are turned into keys: NumPy's
    ``unique`` for numbers, booleans and fixed-width strings (equal values write alike;
    NaNs are grouped and missing), a ``Counter`` for an object column of ``str`` only;
    any other column takes :func:`category_keys` over every row.
    """
    kind = col.dtype.kind
    if kind in "biufUS":
        values, tally = np.unique(col, return_counts=True)
    else:
        items = col.tolist() if kind == "O" else []
        if not items or set(map(type, items)) != {str}:
            keys, missing = category_keys(col)
            present, tally = np.unique(keys[~missing], return_counts=True)
            return present, tally.astype(np.int64), int(missing.sum())
        counter = Counter(items)
        values = np.array(list(counter), dtype=object)
        tally = np.fromiter(counter.values(), np.int64, count=len(counter))
    keys, missing = category_keys(values)
    if not missing.any():
        return keys, tally.astype(np.int64), 0
    return keys[~missing], tally[~missing].astype(np.int64), int(tally[missing].sum())
