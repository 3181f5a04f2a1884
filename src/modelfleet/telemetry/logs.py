"""Process logging for ``agent run`` and ``hub serve``: text for people, JSON for collectors.

:func:`configure_logging` installs one handler on the root logger; every library's records
(uvicorn's error and access loggers included, which the servers leave unconfigured so they
propagate) go through the same formatter. With ``fmt="json"`` each line is one JSON object::

    {"ts": "2026-12-02T13:01:46.123+00:00", "level": "info", "logger": "modelfleet.agent",
     "msg": "...", "device_id": "press-01", "model": "m", "version": "3", "rollout_id": null}

``ts``, ``level``, ``logger``, ``msg``, the ``static`` fields (the agent's ``device_id``,
the hub's ``service``) and ``device_id``, ``model``, ``version``, ``rollout_id`` are on
**every** line (null when unknown), so a collector can index them without guessing; ``exc``
carries a traceback when there is one. These fields come from a context: code that works
for one model (or, on the hub, one device) wraps that work in :func:`log_context` (a
:mod:`contextvars` variable, so each thread and each asyncio task sees its own), and every
line logged inside carries them::

    with log_context(model="m", version="3", rollout_id="r-17"):
        log.info("installed")  # ... "model": "m", "version": "3", "rollout_id": "r-17"

This module imports nothing but the standard library, :mod:`orjson` and
:mod:`modelfleet.errors`.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, TextIO

import orjson

from modelfleet.errors import ConfigError

__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "configure_logging",
    "current_context",
    "log_context",
    "parse_log_format",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")
#: The fields every line carries (None until a :func:`log_context` or, for ``device_id``,
#: the ``static`` fields of :func:`configure_logging` set them).
CONTEXT_FIELDS: Final = ("device_id", "model", "version", "rollout_id")
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord's own attributes: anything else on a record came from ``extra=`` and is kept.
_RECORD_ATTRS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_NOTHING: Final[Mapping[str, str | None]] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, str | None]] = contextvars.ContextVar(
    "modelfleet_log_context", default=_NOTHING
)


def current_context() -> dict[str, str | None]:
    """The fields known here: ``device_id``, ``model``, ``version``, ``rollout_id`` (None
    if unknown)."""
    known = _context.get()
    return {key: known.get(key) for key in CONTEXT_FIELDS}


@contextlib.contextmanager
def log_context(
    *,
    device_id: str | None = None,
    model: str | None = None,
    version: str | None = None,
    rollout_id: str | None = None,
) -> Iterator[None]:
    """Lines logged inside the block carry these fields (the hub sets ``device_id`` while
    it handles a device's request; the agent's is static).

    Nested blocks add to (and may override) the outer one's fields; a field given as None
    keeps the outer value. Restored on exit, exceptions included.
    """
    given = {"device_id": device_id, "model": model, "version": version, "rollout_id": rollout_id}
    merged = {**_context.get(), **{k: v for k, v in given.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def parse_log_format(text: str) -> LogFormat:
    """``"text"`` or ``"json"`` (any case) from a flag or ``MODELFLEET_LOG_FORMAT``.

    Raises:
        ConfigError: anything else.
    """
    value = text.strip().lower()
    if value == "text":
        return "text"
    if value == "json":
        return "json"
    raise ConfigError(f"log format must be text or json, not {text!r}")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module docstring for the fields.

    Args:
        static: fields put on every line (e.g. ``{"device_id": "press-01"}``); a record's
            own ``extra=`` fields and the context's model fields come after them.
    """

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        for key, value in current_context().items():
            if value is not None or key not in doc:  # a static field fills an unknown one
                doc[key] = value
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


class _TextFormatter(logging.Formatter):
    """The classic line, with ``[model=m version=3 rollout_id=r]`` when a context is set."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__(_TEXT_FORMAT)
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in current_context().items() if v is not None}
        if fields:
            tag = " ".join(f"{k}={v}" for k, v in fields.items())
            first, nl, rest = line.partition("\n")  # keep a traceback below the tagged line
            line = f"{first} [{tag}]{nl}{rest}"
        return line


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("modelfleet.thread").error(
        "uncaught exception in thread %s",
        name,
        exc_info=exc_info,  # type: ignore[arg-type]
    )


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second call replaces it."""


def configure_logging(
    fmt: LogFormat,
    level: str | int = "info",
    static: Mapping[str, Any] | None = None,
    *,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr) in ``fmt``, at ``level``.

    Replaces a handler installed by an earlier call (and only that one: a test's capture
    handler stays). The ``uvicorn*`` loggers are made to propagate to the root, so the
    servers' error and access lines use the same formatter; Python warnings and uncaught
    exceptions in threads are logged too (as ``py.warnings`` and ``modelfleet.thread``).

    Args:
        fmt: ``"text"`` or ``"json"``.
        level: a level name (``"debug"``, ``"info"``, …) or number.
        static: fields every JSON line carries (the agent passes its ``device_id``).
        stream: where to write; stderr by default.

    Returns:
        The installed handler.

    Raises:
        ConfigError: an unknown format or level.
    """
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format must be text or json, not {fmt!r}")
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ConfigError(f"unknown log level {level!r}")
        level = number
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(static) if fmt == "json" else _TextFormatter(static))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings become records too, not bare stderr
    threading.excepthook = _log_thread_exception
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        for own in list(logger.handlers):
            logger.removeHandler(own)
        logger.propagate = True
    return handler
