"""Structured logs: every JSON line carries the static and per-model fields (issue 7)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from modelfleet.errors import ConfigError
from modelfleet.telemetry.logs import (
    CONTEXT_FIELDS,
    configure_logging,
    current_context,
    log_context,
    parse_log_format,
)


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("json", "info", {"device_id": "press-01"}, stream=out)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def lines(out: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_json_line_has_the_device_and_the_model_fields_even_when_unknown(
    stream: io.StringIO,
) -> None:
    logging.getLogger("modelfleet.x").info("hello %s", "world")
    (line,) = lines(stream)
    assert line["msg"] == "hello world"
    assert line["level"] == "info" and line["logger"] == "modelfleet.x"
    assert line["device_id"] == "press-01"
    assert {k: line[k] for k in ("model", "version", "rollout_id")} == dict.fromkeys(
        ("model", "version", "rollout_id")
    )
    assert line["ts"].endswith("+00:00")


def test_lines_inside_a_model_context_carry_model_version_and_rollout(
    stream: io.StringIO,
) -> None:
    log = logging.getLogger("modelfleet.x")
    with log_context(model="m", version="3"):
        log.info("a")
        with log_context(rollout_id="r-1"):
            log.info("b")
        log.info("c")
    log.info("d")
    got = [(x["msg"], x["model"], x["version"], x["rollout_id"]) for x in lines(stream)]
    assert got == [
        ("a", "m", "3", None),
        ("b", "m", "3", "r-1"),
        ("c", "m", "3", None),
        ("d", None, None, None),
    ]


def test_a_context_does_not_leak_into_other_threads_or_tasks() -> None:
    seen: list[dict[str, str | None]] = []
    with log_context(model="m"):
        thread = threading.Thread(target=lambda: seen.append(current_context()))
        thread.start()
        thread.join()

    async def main() -> None:
        async def task(name: str) -> str | None:
            with log_context(model=name):
                await asyncio.sleep(0)
                return current_context()["model"]

        assert await asyncio.gather(task("a"), task("b")) == ["a", "b"]

    asyncio.run(main())
    assert seen == [dict.fromkeys(CONTEXT_FIELDS)]


def test_a_hub_line_has_a_device_id_only_while_it_handles_that_device() -> None:
    out = io.StringIO()
    handler = configure_logging("json", "info", {"service": "hub"}, stream=out)
    try:
        log = logging.getLogger("modelfleet.hub")
        log.info("started")
        with log_context(device_id="press-07"):
            log.info("batch stored")
    finally:
        logging.getLogger().removeHandler(handler)
    got = [(x["service"], x["device_id"], x["msg"]) for x in lines(out)]
    assert got == [("hub", None, "started"), ("hub", "press-07", "batch stored")]


def test_a_traceback_stays_inside_one_json_line(stream: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("modelfleet.x").exception("failed")
    (line,) = lines(stream)
    assert "ValueError: boom" in line["exc"]


def test_extra_fields_are_kept_and_odd_values_do_not_break_the_line(
    stream: io.StringIO,
) -> None:
    logging.getLogger("modelfleet.x").info("x", extra={"batch": 3, "obj": object()})
    (line,) = lines(stream)
    assert line["batch"] == 3 and "object" in line["obj"]


@pytest.fixture
def uvicorn_loggers() -> Iterator[tuple[logging.Logger, logging.Logger]]:
    """uvicorn's loggers at INFO, as ``uvicorn.Config(log_level="info")`` leaves them
    (another test's server may have set them otherwise); restored afterwards."""
    loggers = (logging.getLogger("uvicorn.access"), logging.getLogger("uvicorn.error"))
    saved = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
    yield loggers
    for lg, (level, propagate, handlers) in zip(loggers, saved, strict=True):
        lg.setLevel(level)
        lg.propagate = propagate
        lg.handlers[:] = handlers


def test_uvicorn_lines_go_through_the_same_formatter(
    stream: io.StringIO, uvicorn_loggers: tuple[logging.Logger, logging.Logger]
) -> None:
    access, _ = uvicorn_loggers
    access.addHandler(logging.StreamHandler(io.StringIO()))  # as uvicorn's dictConfig would
    access.propagate = False
    configure_logging("json", "info", {"device_id": "d"}, stream=stream)
    assert access.propagate and not access.handlers
    logging.getLogger("uvicorn.error").info("Started server process")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/metrics", "1.1", 200)
    got = [(x["logger"], x["msg"], x["device_id"]) for x in lines(stream)[-2:]]
    assert got == [
        ("uvicorn.error", "Started server process", "d"),
        ("uvicorn.access", '127.0.0.1:1 - "GET /metrics HTTP/1.1" 200', "d"),
    ]


def test_configuring_twice_replaces_the_first_handler(stream: io.StringIO) -> None:
    again = io.StringIO()
    handler = configure_logging("text", "info", stream=again)
    try:
        with log_context(model="m", version="2"):
            logging.getLogger("modelfleet.x").info("once")
        assert stream.getvalue() == ""
        assert again.getvalue().rstrip().endswith("modelfleet.x: once [model=m version=2]")
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize(
    ("text", "expected"), [("json", "json"), ("TEXT", "text"), (" json ", "json")]
)
def test_log_format_is_parsed_case_insensitively(text: str, expected: str) -> None:
    assert parse_log_format(text) == expected


@pytest.mark.parametrize(("fmt", "level"), [("yaml", "info"), ("json", "chatty")])
def test_an_unknown_format_or_level_is_a_config_error(fmt: str, level: str) -> None:
    with pytest.raises(ConfigError):
        configure_logging(fmt, level)  # type: ignore[arg-type]
