"""How the ``modelfleet`` command ends when something goes wrong: one line, a known exit code.

Exit codes (also in the README, section "Exit codes"); the kind is what ``--json`` reports:

* 0 — success.
* 1 ``error`` — any other error: the hub refused the input, a conflict, a trust or storage
  failure, an unexpected exception.
* 2 ``usage`` — the command line is wrong: unknown command or option, missing or malformed
  argument, contradictory options.
* 3 ``not_found`` — the model, version, device, rollout or agent state named does not exist.
* 4 ``auth`` — no token, a token the hub does not accept, or a role that may not do this.
* 5 ``unreachable`` — the hub (or the agent) cannot be reached or answered with a server
  error; retrying later may help.
* 6 ``missing_extra`` — the command needs an optional part that is not installed; the
  message names it, e.g. ``pip install 'modelfleet[hub]'``.
* 130 ``interrupted`` — Ctrl-C.

With ``--json`` anywhere on the command line the error is written as one JSON object
``{"error": message, "kind": kind, "exit_code": code}`` on **stderr**; stdout only ever
carries a command's result, so a program reading it never mistakes an error for data.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import orjson
import typer

from modelfleet.errors import (
    AuthError,
    InvalidInputError,
    ModelfleetError,
    NotFoundError,
    TransportError,
)

__all__ = [
    "EXTRA_OF_MODULE",
    "ExitCode",
    "Failure",
    "UsageError",
    "failure_of",
    "missing_extra",
    "report_failure",
    "require_extra",
]


class ExitCode(enum.IntEnum):
    """Exit status of the ``modelfleet`` command, by how the caller should react."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    AUTH = 4
    UNREACHABLE = 5
    MISSING_EXTRA = 6
    INTERRUPTED = 130


class UsageError(InvalidInputError):
    """The command line itself is wrong (contradictory or malformed options)."""


#: Third-party modules that come only with an extra, and the extra that brings them.
EXTRA_OF_MODULE: dict[str, str] = {
    "fastapi": "hub",
    "sqlalchemy": "hub",
    "alembic": "hub",
    "psycopg": "hub",
    "sklearn": "sklearn",
    "skl2onnx": "sklearn",
    "joblib": "sklearn",
    "opentelemetry": "otel",
    "pyarrow": "parquet",
    "model_signing": "signing",
}


@dataclass(frozen=True)
class Failure:
    """What to print and how to exit."""

    code: ExitCode
    kind: str
    message: str


def _install_hint(extra: str) -> str:
    return f"pip install 'modelfleet[{extra}]'"


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The extra that would provide the module ``e`` failed to import, if one does."""
    name = (e.name or "").split(".")[0]
    return EXTRA_OF_MODULE.get(name)


def require_extra(extra: str, *modules: str, what: str = "this command") -> None:
    """Fail early, with the extra to install, when one of ``modules`` is not installed.

    Raises:
        ModuleNotFoundError: the first missing module (``name`` set), with the hint in
            its message; :func:`failure_of` turns it into :attr:`ExitCode.MISSING_EXTRA`.
    """
    for module in modules:
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # a parent package of ``module`` is missing
            found = None
        if found is None:
            raise ModuleNotFoundError(
                f"{what} needs the {extra} extra (no module {module!r}): {_install_hint(extra)}",
                name=module,
            )


def failure_of(e: BaseException) -> Failure | None:
    """Classify an exception the CLI knows how to report; None for anything else."""
    if isinstance(e, UsageError):
        return Failure(ExitCode.USAGE, "usage", str(e))
    if isinstance(e, NotFoundError):
        return Failure(ExitCode.NOT_FOUND, "not_found", str(e))
    if isinstance(e, AuthError):
        return Failure(ExitCode.AUTH, "auth", str(e))
    if isinstance(e, TransportError):
        return Failure(ExitCode.UNREACHABLE, "unreachable", str(e))
    if isinstance(e, ModelfleetError):
        return Failure(ExitCode.ERROR, "error", str(e))
    if isinstance(e, ModuleNotFoundError):
        extra = missing_extra(e)
        if extra is None:
            return None
        message = str(e)
        if "pip install" not in message:
            message = (
                f"this command needs the {extra} extra (no module {e.name!r}): "
                f"{_install_hint(extra)}"
            )
        return Failure(ExitCode.MISSING_EXTRA, "missing_extra", message)
    if isinstance(e, KeyboardInterrupt):
        return Failure(ExitCode.INTERRUPTED, "interrupted", "interrupted")
    return None


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """``name`` from typer's own copy of click (typer >= 0.2x) and from click itself.

    typer 0.29 raises ``typer._click.exceptions.UsageError``, not click's (issue 6,
    defect 1): catching only one of them let every usage error escape as a traceback.
    """
    found: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _click_failure(e: BaseException) -> Failure | int | None:
    """Failure for click's/typer's own exceptions, an exit code for ``Exit``, else None."""
    if isinstance(e, (typer.Exit, *_click_classes("Exit"))):
        return int(getattr(e, "exit_code", 0))
    if isinstance(e, (typer.Abort, *_click_classes("Abort"))):
        return Failure(ExitCode.INTERRUPTED, "interrupted", "aborted")
    if isinstance(e, _click_classes("UsageError")):
        ctx: Any = getattr(e, "ctx", None)
        path = getattr(ctx, "command_path", None) or "modelfleet"
        message = _one_line(e.format_message())  # type: ignore[attr-defined]
        return Failure(ExitCode.USAGE, "usage", f"{message} (see '{path} --help')")
    if isinstance(e, _click_classes("ClickException")):
        message = _one_line(e.format_message())  # type: ignore[attr-defined]
        return Failure(ExitCode.ERROR, "error", message)
    return None


def report_failure(e: BaseException, *, json_errors: bool) -> int:
    """Print ``e`` as one line (or one JSON object) on stderr; return the exit code.

    ``MODELFLEET_TRACEBACK=1`` adds the Python traceback, for bug reports.
    """
    if type(e).__name__ == "NoArgsIsHelpError":
        # ``modelfleet hub`` with nothing after it: the help is the useful answer.
        e.show()  # type: ignore[attr-defined]
        return int(getattr(e, "exit_code", ExitCode.USAGE))
    failure = _click_failure(e)
    if isinstance(failure, int):
        return failure
    if failure is None:
        failure = failure_of(e)
    if failure is None:
        failure = Failure(
            ExitCode.ERROR,
            "error",
            f"internal error: {type(e).__name__}: {_one_line(str(e))} "
            "(set MODELFLEET_TRACEBACK=1 to see where)",
        )
    if os.environ.get("MODELFLEET_TRACEBACK") == "1":
        traceback.print_exception(e)
    if json_errors:
        body = {"error": failure.message, "kind": failure.kind, "exit_code": int(failure.code)}
        sys.stderr.write(orjson.dumps(body).decode() + "\n")
    else:
        sys.stderr.write(f"error: {_one_line(failure.message)}\n")
    sys.stderr.flush()
    return int(failure.code)
