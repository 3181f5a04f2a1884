"""Output helpers: rich tables for people, ``--json`` for programs."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["console", "err_console", "print_json", "table"]

# Piped output has no terminal width; wide enough that digests and timestamps fit.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON on stdout."""
    sys.stdout.write(
        orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    )
    sys.stdout.write("\n")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def make_table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    header: bool = True,
) -> Table:
    """A table with the given column headers (cells: ``-`` for None, lists joined); a cell
    that is already a rich ``Text`` keeps its style. ``header=False`` hides the headers."""
    t = Table(title=title, title_justify="left", header_style="bold", show_header=header)
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*(v if isinstance(v, Text) else _cell(v) for v in row))
    return t


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table with the given column headers."""
    console.print(make_table(title, columns, rows))


def key_values(title: str | None, data: Mapping[str, Any]) -> None:
    """Print a two-column table of fields."""
    table(title, ["field", "value"], [(k, v) for k, v in data.items()])


__all__ += ["key_values", "make_table"]
