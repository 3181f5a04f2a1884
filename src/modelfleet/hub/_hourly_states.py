"""What the hub's hourly sequential states share: the input-drift state (ADR 0019,
:mod:`modelfleet.hub.drift`) and the override-rate state (ADR 0040,
:mod:`modelfleet.hub.override_states`), one row per ``(model, site)`` each.

* :func:`list_states` — the rows of a state table, filtered, in ``(model, site)`` order;
* :func:`locked_state_row` — a key's row, created with its layer's fresh values if missing,
  locked for the step;
* :func:`step_keys` — one upkeep round: each ``(model, site)`` with a closed hour not
  stepped yet is handed to its layer's stepper (which locks its row and steps in its own
  transaction); keys whose every hour is already stepped are skipped without a write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelfleet.hub._values import JSONDict
from modelfleet.hub.context import HubContext

__all__ = ["list_states", "locked_state_row", "step_keys"]

log = logging.getLogger("modelfleet.hub")

Row = TypeVar("Row")
Hours = TypeVar("Hours", bound=Mapping[datetime, Any])


def list_states(
    ctx: HubContext,
    table: type[Row],
    view: Callable[[Row], JSONDict],
    model: str | None = None,
    site: str | None = None,
) -> list[JSONDict]:
    """``view`` of each row of ``table`` (a mapped class with ``model`` and ``site``
    columns), only ``model``'s and ``site``'s when given, ordered by model then site."""
    t: Any = table
    where = []
    if model is not None:
        where.append(t.model == model)
    if site is not None:
        where.append(t.site == site)
    with ctx.read() as s:
        rows = s.scalars(select(t).where(*where).order_by(t.model, t.site)).all()
        return [view(r) for r in rows]


def step_keys(
    per_key: Mapping[tuple[str, str], Hours],
    stepped: Mapping[tuple[str, str], datetime | None],
    advance_key: Callable[[tuple[str, str], Hours], tuple[int, list[JSONDict]]],
    what: str,
) -> JSONDict:
    """Run ``advance_key`` for each key of ``per_key`` (in order) that has an hour after the
    last one ``stepped`` for it; logs the changes as ``"<what> changed"``.

    Returns:
        ``{"steps": hours stepped, "changes": every change advance_key reported}``.
    """
    steps = 0
    changes: list[JSONDict] = []
    for key in sorted(per_key):
        hours = per_key[key]
        last = stepped.get(key)
        if last is not None and all(h <= last for h in hours):
            continue
        n, changed = advance_key(key, hours)
        steps += n
        changes += changed
    if changes:
        log.info("%s changed: %s", what, changes)
    return {"steps": steps, "changes": changes}


def locked_state_row(
    s: Session, table: type[Row], model: str, site: str, fresh: Mapping[str, Any]
) -> Row:
    """The row of ``(model, site)`` in ``table``, locked (``FOR UPDATE``) in ``s``'s
    transaction; a missing row is first inserted with ``fresh`` (every other column),
    ``ON CONFLICT DO NOTHING``, so two replicas creating it at once both end on one row."""
    t: Any = table
    where = (t.model == model, t.site == site)
    row: Row | None = s.scalars(select(t).where(*where).with_for_update()).first()
    if row is not None:
        return row
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    s.execute(
        insert(t.__table__)
        .values(model=model, site=site, **fresh)
        .on_conflict_do_nothing(index_elements=["model", "site"])
    )
    locked: Row = s.scalars(
        select(t).where(*where).with_for_update().execution_options(populate_existing=True)
    ).one()
    return locked
