"""Bulk Core statements through the DBAPI cursor (issue 8: the director's signed-row writes
and staging upserts).

SQLAlchemy's ``executemany`` builds a parameter dictionary per row and runs each bound
value through its type's bind processor: ~90 µs a row for the director's UPDATE with five
dates and three blobs, more than the statement itself. :func:`executemany` compiles the
statement once per dialect, turns each row into a plain tuple in the compiled order and
hands the rows to the driver's ``cursor.executemany`` (sqlite3, psycopg) on the caller's
connection, so in its transaction. Values still go through their column type's bind
processor (a UTC date is stored exactly as the ORM stores it), but each distinct value once
per call: the rows of a batch share their dates.
"""

from __future__ import annotations

import re
import threading
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import Column, Connection, MetaData, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import Executable
from sqlalchemy.sql.visitors import replacement_traverse

__all__ = ["COPY_MIN", "executemany", "fetchall"]

COPY_MIN = 1000
"""From this many rows an UPDATE on PostgreSQL goes through ``COPY`` into a temporary table
and one ``UPDATE … FROM`` (the server's cost per row of 10,000 single-row UPDATEs, even
pipelined, was most of a stage's staging there)."""

_PYFORMAT = re.compile(r"%\((\w+)\)s")


class _Compiled(NamedTuple):
    sql: str
    names: tuple[str, ...]
    """The bound parameters' names, in the order the SQL takes them."""
    constants: Mapping[str, Any]
    """Values bound in the statement itself (``literal(...)``, ``values(dirty=False)``)."""
    processors: tuple[Callable[[Any], Any] | None, ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    """A SELECT's result processors, by column."""
    row_type: Any
    """A SELECT's rows: a named tuple of its columns' keys."""


_cache: dict[tuple[int, str, str], tuple[Executable, _Compiled]] = {}
_cache_lock = threading.Lock()


def _compile(conn: Connection, stmt: Executable) -> _Compiled:
    dialect = conn.dialect
    key = (id(stmt), dialect.name, dialect.driver)
    hit = _cache.get(key)
    if hit is not None and hit[0] is stmt:
        return hit[1]
    compiled = stmt.compile(dialect=dialect)  # type: ignore[attr-defined]
    sql = str(compiled)
    if compiled.positiontup is not None:  # qmark (sqlite3), format, numeric
        names = tuple(compiled.positiontup)
    elif dialect.paramstyle == "pyformat":  # psycopg: %(name)s, turned into %s
        names = tuple(_PYFORMAT.findall(sql))
        sql = _PYFORMAT.sub("%s", sql)
    else:  # pragma: no cover - no driver the hub supports
        raise NotImplementedError(f"paramstyle {dialect.paramstyle!r}")
    binds = compiled.binds
    constants = {name: b.effective_value for name, b in binds.items() if not b.required}
    processors = tuple(
        binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    results: tuple[Callable[[Any], Any] | None, ...] = ()
    row_type: Any = None
    selected = getattr(stmt, "selected_columns", None)
    if selected is not None:
        results = tuple(
            col.type.dialect_impl(dialect).result_processor(dialect, None) for col in selected
        )
        row_type = _row_type([col.key for col in selected])
    out = _Compiled(sql, names, constants, processors, results, row_type)
    with _cache_lock:
        _cache[key] = (stmt, out)
    return out


def _row_type(keys: list[str]) -> Any:
    """A named tuple of a SELECT's column keys (attribute access as on SQLAlchemy's rows)."""
    return namedtuple("Row", keys)


def _translated(conn: Connection, e: Any, sql: str, params: Any, cursor: Any) -> Exception:
    """The driver's error as SQLAlchemy raises it; a broken connection is invalidated, so
    the pool does not hand it out again."""
    dialect = conn.dialect
    gone = dialect.is_disconnect(e, conn.connection.dbapi_connection, cursor)
    if gone:
        conn.invalidate(e)
    error: Exception = DBAPIError.instance(
        sql,
        params,
        e,
        dialect.loaded_dbapi.Error,
        connection_invalidated=gone,
        dialect=dialect,
        ismulti=isinstance(params, list),
    )
    return error


def _processed(process: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    """``process`` applied to each value: once per distinct value, except bytes (distinct in
    practice; hashing them would cost more) and unhashable values."""
    memo: dict[Any, Any] = {}
    out = []
    for v in values:
        if isinstance(v, bytes):
            out.append(process(v))
            continue
        try:
            p = memo.get(v, memo)
        except TypeError:  # unhashable (a JSON value)
            p = process(v)
        else:
            if p is memo:
                p = memo[v] = process(v)
        out.append(p)
    return out


def executemany(conn: Connection, stmt: Executable, rows: Sequence[Mapping[str, Any]]) -> int:
    """Run ``stmt`` once per row through the DBAPI cursor of ``conn`` (in its transaction).

    Args:
        conn: the connection (a session's ``connection()``: the statement is part of its
            transaction).
        stmt: an INSERT or UPDATE with named ``bindparam``s; keep it in a module constant
            (compiled once per dialect, cached by identity).
        rows: each row's values by bind name; a name a row lacks takes the statement's own
            value (``literal``, a constant in ``values``).

    From :data:`COPY_MIN` rows an UPDATE on PostgreSQL (psycopg) runs as ``COPY`` into a
    temporary table and one ``UPDATE … FROM`` it, each bound parameter read from its column:
    the same rows changed, provided no two rows share the key the statement updates by
    (the director's never do: one row per device).

    Returns:
        The rows the statement changed, over all rows (the driver's summed ``rowcount``).

    Raises:
        sqlalchemy.exc.DBAPIError: what the driver raised, translated as SQLAlchemy does
            (``IntegrityError`` and the rest), so the hub's transactions map it as usual.
    """
    if not rows:
        return 0
    if (
        len(rows) >= COPY_MIN
        and conn.dialect.name == "postgresql"
        and conn.dialect.driver == "psycopg"
        and isinstance(stmt, Update)
    ):
        return _copy_update(conn, stmt, rows)
    c = _compile(conn, stmt)
    columns = []
    for name, process in zip(c.names, c.processors, strict=True):
        values = [r[name] for r in rows] if name in rows[0] else [c.constants[name]] * len(rows)
        if process is not None:
            values = _processed(process, values)
        columns.append(values)
    params = list(zip(*columns, strict=True))
    cursor = conn.connection.cursor()
    try:
        cursor.executemany(c.sql, params)
        return int(cursor.rowcount)
    except conn.dialect.loaded_dbapi.Error as e:
        raise _translated(conn, e, c.sql, params[:1], cursor) from e
    finally:
        cursor.close()


def fetchall(
    conn: Connection, stmt: Executable, params: Mapping[str, Any] | None = None
) -> list[Any]:
    """Every row of the SELECT ``stmt`` through the DBAPI cursor of ``conn``, as named tuples
    of its columns' keys (each value through its type's result processor, once per distinct
    value: a batch's rows share their dates).

    Args:
        conn: the connection.
        stmt: a SELECT; keep it in a module constant, as for :func:`executemany`.
        params: its bound values by name (those it holds itself, a ``LIMIT``, need none).

    Raises:
        sqlalchemy.exc.DBAPIError: what the driver raised, translated as SQLAlchemy does.
    """
    c = _compile(conn, stmt)
    given = params or {}
    values = tuple(
        _processed(p, [given[n] if n in given else c.constants[n]])[0]
        if p
        else (given[n] if n in given else c.constants[n])
        for n, p in zip(c.names, c.processors, strict=True)
    )
    cursor = conn.connection.cursor()
    try:
        cursor.execute(c.sql, values)
        raw = cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as e:
        raise _translated(conn, e, c.sql, values, cursor) from e
    finally:
        cursor.close()
    if not raw:
        return []
    columns = list(zip(*raw, strict=True))
    for i, process in enumerate(c.results):
        if process is not None:
            columns[i] = tuple(_processed(process, list(columns[i])))
    make = c.row_type._make
    return [make(r) for r in zip(*columns, strict=True)]


class _FromTemp(NamedTuple):
    table: Table
    update: Update
    binds: Mapping[str, BindParameter[Any]]


_from_temp: dict[tuple[int, str, tuple[str, ...]], tuple[Update, _FromTemp]] = {}


def _from_temp_for(conn: Connection, stmt: Update, given: tuple[str, ...]) -> _FromTemp:
    """The temporary table holding ``given`` and ``stmt`` reading them from it (built once
    per statement and columns, so SQLAlchemy compiles the ``UPDATE … FROM`` once)."""
    key = (id(stmt), conn.dialect.name, given)
    hit = _from_temp.get(key)
    if hit is not None and hit[0] is stmt:
        return hit[1]
    binds = stmt.compile(dialect=conn.dialect).binds
    # One name will do: a temporary table is the session's own, and each call drops it.
    table = Table(
        "_mf_bulk",
        MetaData(),
        *(Column(n, binds[n].type) for n in given),
        prefixes=["TEMPORARY"],
    )
    by_key = {binds[n].key: n for n in given}

    def column_for(element: Any, **_: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in by_key:
            return table.c[by_key[element.key]]
        return None

    out = _FromTemp(table, cast(Update, replacement_traverse(stmt, {}, column_for)), binds)
    with _cache_lock:
        _from_temp[key] = (stmt, out)
    return out


def _copy_update(conn: Connection, stmt: Update, rows: Sequence[Mapping[str, Any]]) -> int:
    """:func:`executemany` of an UPDATE on PostgreSQL: ``COPY`` then ``UPDATE … FROM``."""
    c = _compile(conn, stmt)
    given = tuple(n for n in dict.fromkeys(c.names) if n in rows[0])
    tmp, from_tmp, binds = _from_temp_for(conn, stmt, given)
    columns = []
    for name in given:
        values = [r[name] for r in rows]
        process = binds[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        columns.append(_processed(process, values) if process is not None else values)
    # A failure aborts the transaction, whose rollback drops the table too.
    tmp.create(conn)
    cursor = conn.connection.cursor()
    try:
        quoted = ", ".join(f'"{n}"' for n in given)
        with cursor.copy(f'COPY "{tmp.name}" ({quoted}) FROM STDIN') as copy:
            for row in zip(*columns, strict=True):
                copy.write_row(row)
    except conn.dialect.loaded_dbapi.Error as e:
        raise _translated(conn, e, c.sql, [], cursor) from e
    finally:
        cursor.close()
    changed = int(conn.execute(from_tmp).rowcount)
    tmp.drop(conn)
    return changed
