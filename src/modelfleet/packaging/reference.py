"""Reference profiles in packages: read a reference dataset, profile it, map tensors to columns.

Issue 9. At registration the SDK reads the user's reference rows (:func:`load_reference`:
NumPy ``.npy`` / ``.npz``, CSV with a header, Parquet when ``pyarrow`` is installed), runs
the model on them with ONNX Runtime for the outputs, and profiles both
(:func:`build_package_profile`). The result, a :class:`PackageProfile`, is stored in the
package manifest as ``"reference_profile"`` and signed with it.

**Columns.** A profile counts *columns*; a model takes *tensors*. The layout
(:class:`TensorColumns`) says which tensor gives which columns: each tensor of shape
``[batch, d1, …]`` (fixed ``d1 …``) gives ``d1 × …`` columns, row-major, and the columns of
the inputs (outputs) are those of each profiled tensor in layout order. The device
flattens the tensors of each answered request the same way (:meth:`PackageProfile.batch`),
so it counts exactly what the reference was profiled as.

Column names: a single-input model's columns are named after the reference's columns (the
CSV header, the ``.npz`` keys, a structured ``.npy``'s fields; ``x0``, ``x1``, … for a plain
2-D array); a multi-input model's are its input names (``name[j]`` for a tensor of several
columns). Outputs are named the same way after the model's outputs. Integer, boolean and
string outputs are class labels (categorical); string inputs are categorical too.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from modelfleet.catalog.dtypes import numpy_dtype
from modelfleet.catalog.schema import ModelSchema, TensorSpec
from modelfleet.errors import InvalidInputError
from modelfleet.monitoring.profile import ReferenceProfile

__all__ = [
    "MAX_COLUMNS",
    "PackageProfile",
    "ReferenceTable",
    "TensorColumns",
    "build_package_profile",
    "load_reference",
]

#: Most columns a profile may count per group (an image model's pixels are not features).
MAX_COLUMNS: Final = 1024
#: Rows the model is run on at once while profiling its outputs.
_RUN_ROWS: Final = 4096
_SUFFIXES: Final = (".npy", ".npz", ".csv", ".parquet")


@dataclass(frozen=True)
class ReferenceTable:
    """Reference rows as read from a file: named fields of one length.

    Attributes:
        fields: field name → array of shape ``[rows]`` or ``[rows, k]``, in file order; a
            plain 2-D ``.npy`` is one field named ``""`` (columns ``x0``, ``x1``, …).
    """

    fields: dict[str, npt.NDArray[Any]]

    @property
    def rows(self) -> int:
        return int(next(iter(self.fields.values())).shape[0])


def _table(fields: dict[str, npt.NDArray[Any]], where: str) -> ReferenceTable:
    if not fields:
        raise InvalidInputError(f"reference {where} holds no columns")
    lengths = set()
    for name, arr in fields.items():
        if arr.ndim not in (1, 2):
            raise InvalidInputError(
                f"reference {where}: {name or 'the array'} must be 1-D or 2-D (rows × "
                f"columns), got shape {list(arr.shape)}"
            )
        lengths.add(arr.shape[0])
    if len(lengths) != 1:
        raise InvalidInputError(f"reference {where}: every column must have the same rows")
    if lengths == {0}:
        raise InvalidInputError(f"reference {where} holds no rows")
    return ReferenceTable(fields)


def load_reference(path: Path | str) -> ReferenceTable:
    """Read reference rows from ``.npy``, ``.npz``, ``.csv`` (a header row) or ``.parquet``.

    CSV cells that all parse as numbers make a float column (an empty cell is missing);
    any other column stays text (categorical). Pickled (object) arrays are refused.

    Raises:
        InvalidInputError: unreadable, empty, ragged, or an unknown suffix (one line, for
            the CLI).
        ModuleNotFoundError: a Parquet file without ``pyarrow`` installed (``name`` set;
            the message says what to install).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    where = f"{p.name}"
    if suffix not in _SUFFIXES:
        raise InvalidInputError(
            f"reference {where}: unknown format {suffix or '(no suffix)'!r}; use .npy, .npz, "
            ".csv (with a header) or .parquet"
        )
    if suffix == ".parquet":
        return _parquet(p, where)
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            return _table(_from_array(arr), where)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                fields = {k: np.asarray(z[k]) for k in z.files}
            if len(fields) == 1:
                only = next(iter(fields.values()))
                if only.ndim == 2 or only.dtype.names:
                    return _table(_from_array(only), where)
            return _table(fields, where)
        return _table(_csv(p, where), where)
    except InvalidInputError:
        raise
    except (OSError, ValueError, EOFError, UnicodeDecodeError, csv.Error) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0] if str(e) else type(e)
        raise InvalidInputError(f"cannot read reference {where}: {reason}") from e


def _from_array(arr: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
    if arr.dtype.names:  # a structured array: one field per column
        return {str(n): np.asarray(arr[n]) for n in arr.dtype.names}
    return {"": arr}


def _csv(path: Path, where: str) -> dict[str, npt.NDArray[Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise InvalidInputError(f"reference {where}: the CSV needs a header row")
        names = [h.strip() for h in header]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise InvalidInputError(f"reference {where}: header names must be non-empty, unique")
        cols: list[list[str]] = [[] for _ in names]
        for i, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise InvalidInputError(
                    f"reference {where}: line {i} has {len(row)} cells, the header {len(names)}"
                )
            for j, cell in enumerate(row):
                cols[j].append(cell.strip())
    out: dict[str, npt.NDArray[Any]] = {}
    for name, cells in zip(names, cols, strict=True):
        try:
            out[name] = np.array([float(c) if c else math.nan for c in cells], np.float64)
        except ValueError:
            out[name] = np.array([c if c else None for c in cells], dtype=object)
    return out


def _parquet(path: Path, where: str) -> ReferenceTable:
    if importlib.util.find_spec("pyarrow") is None:
        raise ModuleNotFoundError(
            "reading a Parquet reference needs pyarrow: pip install 'modelfleet[parquet]' "
            "(or pip install pyarrow), or give a .npy, .npz or .csv file",
            name="pyarrow",
        )
    import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot read reference {where}: {e}") from e
    fields: dict[str, npt.NDArray[Any]] = {}
    for name in table.column_names:
        col = table.column(name)
        try:
            fields[str(name)] = np.asarray(col.to_numpy(zero_copy_only=False))
        except Exception as e:  # pyarrow's own error types for nested columns
            raise InvalidInputError(f"reference {where}: column {name!r}: {e}") from e
    return _table(fields, where)


# -- layout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorColumns:
    """One tensor's place in a profile: ``columns`` per row, flattened row-major."""

    tensor: str
    columns: int

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "columns": self.columns}


def _row_width(spec: TensorSpec) -> int | None:
    """Columns per row of a ``[batch, fixed…]`` tensor, None when it has no such shape."""
    if not spec.shape or any(d < 0 for d in spec.shape[1:]):
        return None
    return math.prod(spec.shape[1:])


def _layout_of(items: Any, group: str) -> tuple[TensorColumns, ...]:
    if not isinstance(items, list):
        raise InvalidInputError(f"reference_profile.{group} must be a list")
    out = []
    for item in items:
        if (
            not isinstance(item, Mapping)
            or set(item) != {"tensor", "columns"}
            or not isinstance(item["tensor"], str)
            or type(item["columns"]) is not int
            or not 1 <= item["columns"] <= MAX_COLUMNS
        ):
            raise InvalidInputError(
                f"reference_profile.{group}: each entry is {{tensor, columns}} (1 … {MAX_COLUMNS})"
            )
        out.append(TensorColumns(item["tensor"], item["columns"]))
    return tuple(out)


@dataclass(frozen=True)
class PackageProfile:
    """A reference profile and the tensors its columns come from (the manifest's
    ``"reference_profile"``).

    Attributes:
        profile: the bins and reference statistics.
        inputs: the input tensors, in column order (their columns sum to the profile's).
        outputs: the output tensors profiled (empty: outputs are not watched).
    """

    profile: ReferenceProfile
    inputs: tuple[TensorColumns, ...]
    outputs: tuple[TensorColumns, ...] = ()

    @property
    def digest(self) -> str:
        return self.profile.digest

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, doc: Any) -> PackageProfile:
        """Read the manifest's ``"reference_profile"``.

        Raises:
            InvalidInputError: malformed, a newer profile format, or tensor columns that do
                not add up to the profile's columns.
        """
        if not isinstance(doc, Mapping) or set(doc) - {"profile", "inputs", "outputs"}:
            raise InvalidInputError("reference_profile must be {profile, inputs, outputs}")
        profile = ReferenceProfile.from_dict(doc.get("profile"))
        inputs = _layout_of(doc.get("inputs"), "inputs")
        outputs = _layout_of(doc.get("outputs", []), "outputs")
        for group, layout, feats in (
            ("inputs", inputs, profile.inputs),
            ("outputs", outputs, profile.outputs),
        ):
            if sum(t.columns for t in layout) != len(feats):
                raise InvalidInputError(
                    f"reference_profile.{group}: the tensors give "
                    f"{sum(t.columns for t in layout)} columns, the profile has {len(feats)}"
                )
        return cls(profile, inputs, outputs)

    def check_schema(self, schema: ModelSchema) -> None:
        """Refuse a layout that names a tensor the model lacks, or a width it does not have.

        Raises:
            InvalidInputError: naming the tensor.
        """
        for group, layout, specs in (
            ("input", self.inputs, schema.inputs),
            ("output", self.outputs, schema.outputs),
        ):
            by_name = {s.name: s for s in specs}
            for t in layout:
                spec = by_name.get(t.tensor)
                if spec is None:
                    raise InvalidInputError(
                        f"the reference profile names {group} {t.tensor!r}; the model has "
                        f"{sorted(by_name)}"
                    )
                if _row_width(spec) != t.columns:
                    raise InvalidInputError(
                        f"the reference profile gives {group} {t.tensor!r} {t.columns} "
                        f"columns; the model's shape is {list(spec.shape)}"
                    )

    def batch(
        self, tensors: Mapping[str, npt.NDArray[Any]], group: str = "inputs"
    ) -> npt.NDArray[Any] | dict[str, npt.NDArray[Any]]:
        """The columns of ``group`` from a batch of tensors, as the profile counter takes
        them: one tensor's ``rows × columns`` array when it alone gives every column,
        else a mapping of column name to 1-D array.

        Raises:
            KeyError: a profiled tensor is missing.
            ValueError: a tensor's rows do not give its columns.
        """
        layout = self.inputs if group == "inputs" else self.outputs
        feats = self.profile.inputs if group == "inputs" else self.profile.outputs
        if len(layout) == 1:
            arr = tensors[layout[0].tensor]
            return arr.reshape(arr.shape[0] if arr.ndim else 1, layout[0].columns)
        out: dict[str, npt.NDArray[Any]] = {}
        k = 0
        for t in layout:
            arr = tensors[t.tensor]
            block = arr.reshape(arr.shape[0] if arr.ndim else 1, t.columns)
            for j in range(t.columns):
                out[feats[k].name] = block[:, j]
                k += 1
        return out


# -- building at registration ---------------------------------------------------------------


def _names_for(spec_name: str, width: int) -> list[str]:
    if width == 1:
        return [spec_name]
    return [f"{spec_name}[{j}]" for j in range(width)]


def _input_columns(
    schema: ModelSchema, table: ReferenceTable
) -> tuple[
    dict[str, npt.NDArray[Any]], list[str], dict[str, npt.NDArray[Any]], list[TensorColumns]
]:
    """(feeds for the model, column names, columns by name, input layout)."""
    specs = schema.inputs
    widths = {s.name: _row_width(s) for s in specs}
    for s in specs:
        w = widths[s.name]
        if w is None:
            raise InvalidInputError(
                f"input {s.name!r} has shape {list(s.shape)}: only [batch, fixed…] inputs can "
                "be profiled"
            )
        if w > MAX_COLUMNS:
            raise InvalidInputError(
                f"input {s.name!r} gives {w} columns per row; a profile counts at most "
                f"{MAX_COLUMNS} (drift on raw pixels or tokens is not supported)"
            )
    rows = table.rows
    cols: dict[str, npt.NDArray[Any]] = {}
    names: list[str] = []
    feeds: dict[str, npt.NDArray[Any]] = {}
    if len(specs) == 1:
        spec = specs[0]
        width = widths[spec.name] or 0
        fields = table.fields
        if len(fields) == 1:
            key, arr = next(iter(fields.items()))
            block = arr.reshape(rows, -1) if arr.ndim == 2 else arr.reshape(rows, 1)
            if block.shape[1] != width:
                raise InvalidInputError(
                    f"the reference has {block.shape[1]} columns; input {spec.name!r} takes "
                    f"{width} per row (shape {list(spec.shape)})"
                )
            if key == "" or arr.ndim == 2:
                base = key or ""
                names = [f"x{j}" for j in range(width)] if not base else _names_for(base, width)
            else:
                names = [key]
            for j, n in enumerate(names):
                cols[n] = block[:, j]
        else:
            if any(a.ndim != 1 for a in fields.values()) or len(fields) != width:
                raise InvalidInputError(
                    f"the reference has {len(fields)} columns; input {spec.name!r} takes "
                    f"{width} per row (shape {list(spec.shape)})"
                )
            names = list(fields)
            cols = dict(fields)
        feeds[spec.name] = _as_input(spec, [cols[n] for n in names], rows)
        return feeds, names, cols, [TensorColumns(spec.name, width)]
    missing = [s.name for s in specs if s.name not in table.fields]
    if missing:
        raise InvalidInputError(
            f"the model has inputs {[s.name for s in specs]}: the reference needs a column "
            f"named after each (no {missing[0]!r})"
        )
    extra = sorted(set(table.fields) - {s.name for s in specs})
    if extra:
        raise InvalidInputError(f"the reference column {extra[0]!r} is not a model input")
    layout = []
    for s in specs:
        width = widths[s.name] or 0
        arr = table.fields[s.name]
        block = arr.reshape(rows, -1) if arr.ndim == 2 else arr.reshape(rows, 1)
        if block.shape[1] != width:
            raise InvalidInputError(
                f"reference column {s.name!r} gives {block.shape[1]} values per row; the "
                f"input takes {width} (shape {list(s.shape)})"
            )
        these = _names_for(s.name, width)
        for j, n in enumerate(these):
            cols[n] = block[:, j]
        names.extend(these)
        feeds[s.name] = _as_input(s, [block[:, j] for j in range(width)], rows)
        layout.append(TensorColumns(s.name, width))
    return feeds, names, cols, layout


def _as_input(spec: TensorSpec, columns: Sequence[npt.NDArray[Any]], rows: int) -> npt.NDArray[Any]:
    dtype = numpy_dtype(spec.datatype)
    try:
        if dtype.kind in "OSU":
            block = np.empty((rows, len(columns)), dtype=object)
            for j, c in enumerate(columns):
                block[:, j] = [None if v is None else str(v) for v in c.tolist()]
        else:
            block = np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])
            if dtype.kind in "iub" and np.isnan(block).any():
                raise InvalidInputError(
                    f"input {spec.name!r} is {spec.datatype}: the reference has missing values"
                )
            block = block.astype(dtype)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(
            f"the reference does not fit input {spec.name!r} ({spec.datatype}): {e}"
        ) from e
    shape = [rows if i == 0 else d for i, d in enumerate(spec.shape)]
    return block.reshape(shape)


def _run(
    session: Any, schema: ModelSchema, feeds: dict[str, npt.NDArray[Any]], rows: int
) -> dict[str, npt.NDArray[Any]]:
    names = [o.name for o in schema.outputs]
    fixed = any(s.shape and s.shape[0] >= 0 for s in schema.inputs)
    step = 1 if fixed else _RUN_ROWS
    parts: dict[str, list[npt.NDArray[Any]]] = {n: [] for n in names}
    for start in range(0, rows, step):
        chunk = {k: v[start : start + step] for k, v in feeds.items()}
        try:
            outs = session.run(names, chunk)
        except Exception as e:  # ORT's own error types
            text = str(e).strip().splitlines()
            raise InvalidInputError(
                f"the model failed on the reference rows: {text[0] if text else type(e).__name__}"
            ) from e
        for n, o in zip(names, outs, strict=True):
            parts[n].append(np.asarray(o))
    return {n: np.concatenate(p) for n, p in parts.items() if p}


def build_package_profile(
    model: bytes,
    table: ReferenceTable,
    categorical: Sequence[str] = (),
    *,
    sketches: bool = True,
    bins: int = 10,
    top_k: int = 20,
) -> PackageProfile:
    """Profile ``table`` as the inputs of ``model`` and the model's outputs on it.

    Args:
        model: ONNX bytes (run with ONNX Runtime on the reference rows).
        table: the reference rows (:func:`load_reference`).
        categorical: input column names that are categorical (string inputs always are).
        sketches: keep KLL sketches in the profile (for KS).
        bins: quantile bins per numeric column.
        top_k: categories kept per categorical column.

    Raises:
        InvalidInputError: the reference does not fit the model, an unknown categorical
            column, or a column the profile cannot read.
        InvalidModelError: ONNX Runtime cannot load the model.
    """
    from modelfleet.catalog.onnx_session import create_session, schema_of_session

    session = create_session(model)
    schema = schema_of_session(session)
    feeds, names, cols, in_layout = _input_columns(schema, table)
    cats = list(dict.fromkeys(categorical))
    unknown = [c for c in cats if c not in cols]
    if unknown:
        raise InvalidInputError(
            f"--categorical names {unknown[0]!r}, not a reference column; columns: "
            f"{', '.join(names[:12])}{' …' if len(names) > 12 else ''}"
        )
    for n in names:
        if cols[n].dtype.kind in "OSU" and n not in cats:
            cats.append(n)  # text is categorical
    outputs = _run(session, schema, feeds, table.rows)
    out_cols: dict[str, npt.NDArray[Any]] = {}
    out_cats: list[str] = []
    out_layout: list[TensorColumns] = []
    for spec in schema.outputs:
        width = _row_width(spec)
        arr = outputs.get(spec.name)
        if width is None or width > MAX_COLUMNS or arr is None or arr.shape[:1] != (table.rows,):
            continue  # not one row per input row: not profiled
        block = arr.reshape(table.rows, width)
        label = numpy_dtype(spec.datatype).kind in "iubOSU"
        for j, n in enumerate(_names_for(spec.name, width)):
            out_cols[n] = block[:, j]
            if label:
                out_cats.append(n)
        out_layout.append(TensorColumns(spec.name, width))
    profile = ReferenceProfile.build(
        {n: cols[n] for n in names},
        names=names,
        categorical=cats,
        outputs=out_cols or None,
        output_names=list(out_cols) or None,
        categorical_outputs=out_cats,
        bins=bins,
        top_k=top_k,
        sketch_k=200 if sketches else None,
    )
    return PackageProfile(profile, tuple(in_layout), tuple(out_layout))
