"""How the real ``modelfleet`` command fails: one line, a documented exit code, JSON on demand.

Issue 6, defect 1: typer 0.29 raises its own copies of click's exceptions, which
``cli/main.py`` did not catch, so every usage error printed a 37-line traceback. Each case
here runs ``python -m modelfleet …`` as a subprocess, as a user would.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import modelfleet
from modelfleet.cli._errors import ExitCode
from modelfleet.demo import free_port
from tests.cli_run import ServedHub, run_cli, served_hub


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert text in lines[0]


def assert_json_error(result: subprocess.CompletedProcess[str], code: int, kind: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == "", "stdout carries results only, never an error"
    body = json.loads(result.stderr)
    assert body["kind"] == kind and body["exit_code"] == code and body["error"]


DEAD_PORT = free_port()  # nothing listens there


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    kind: str
    text: str


CASES = [
    Case("missing-argument", ("device", "add"), 2, "usage", "Missing argument 'ID'"),
    Case("unknown-option", ("device", "list", "--bogus"), 2, "usage", "No such option: --bogus"),
    Case("unknown-command", ("nosuch",), 2, "usage", "No such command 'nosuch'"),
    Case("not-a-number", ("deploy", "m", "x"), 2, "usage", "'version'"),
    Case("contradictory-options", ("deploy", "m", "1"), 2, "usage", "--devices ID,ID… or --all"),
    Case("bad-model-reference", ("model", "show", "m:two", "--token", "t"), 2, "usage", "number"),
    Case(
        "missing-model-file",
        ("model", "register", "m", "/nonexistent/m.onnx", "--token", "t"),
        2,
        "usage",
        "no such file",
    ),
    Case("agent-run-missing-options", ("agent", "run"), 2, "usage", "Missing option '--hub'"),
    Case("agent-status-missing-state-dir", ("agent", "status"), 2, "usage", "'--state-dir'"),
    Case(
        "agent-rollback-unknown-option",
        ("agent", "rollback", "--state-dir", "x", "--bogus"),
        2,
        "usage",
        "--bogus",
    ),
    Case("agent-unknown-subcommand", ("agent", "restart"), 2, "usage", "No such command"),
    Case(
        "init-postgres-url-without-driver",
        ("init", "/nonexistent/home", "--database-url", "postgresql://u:secret@db/mf"),
        2,
        "usage",
        "postgresql+psycopg://",
    ),
    Case("no-token", ("device", "list"), 4, "auth", "no token"),
    Case(
        "unreadable-token-file",
        ("device", "list", "--token-file", "/nonexistent/token"),
        2,
        "usage",
        "cannot read --token-file",
    ),
    Case(
        "hub-unreachable",
        ("device", "list", "--token", "t", "--hub", f"http://127.0.0.1:{DEAD_PORT}"),
        5,
        "unreachable",
        "cannot reach the hub",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_is_one_line_with_its_exit_code(case: Case) -> None:
    assert_one_line_error(run_cli(*case.args), case.code, case.text)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_is_json_on_stderr_with_json(case: Case) -> None:
    assert_json_error(run_cli(*case.args, "--json"), case.code, case.kind)


def test_a_password_in_a_database_url_is_not_echoed() -> None:
    result = run_cli("init", "/nonexistent/h", "--database-url", "postgresql://u:secret@db/mf")
    assert result.returncode == 2 and "secret" not in result.stderr


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"modelfleet {modelfleet.__version__}\n"


def test_bare_command_shows_help_without_traceback() -> None:
    result = run_cli()
    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr + result.stdout
    assert "deploy" in result.stderr + result.stdout


def test_exit_codes_are_distinct() -> None:
    codes = [c.value for c in ExitCode]
    assert len(set(codes)) == len(codes)
    assert (ExitCode.USAGE, ExitCode.ERROR) == (2, 1)


# -- a command that needs a missing extra says which --------------------------------------

HIDE_HUB = "import sys; sys.modules.update(dict.fromkeys(['fastapi', 'sqlalchemy', 'alembic']))"
HIDE_SKLEARN = "import sys; sys.modules.update(dict.fromkeys(['sklearn', 'skl2onnx', 'joblib']))"

EXTRA_CASES = [
    ("hub-serve", HIDE_HUB, ("hub", "serve", "--home", "/nonexistent"), "modelfleet[hub]"),
    ("init", HIDE_HUB, ("init", "/nonexistent/home"), "modelfleet[hub]"),
    ("demo", HIDE_HUB, ("demo",), "modelfleet[hub]"),
    ("demo-sklearn", HIDE_SKLEARN, ("demo",), "modelfleet[sklearn]"),
]


@pytest.mark.parametrize(
    ("prelude", "args", "extra"), [c[1:] for c in EXTRA_CASES], ids=[c[0] for c in EXTRA_CASES]
)
def test_command_without_its_extra_names_the_extra(
    prelude: str, args: tuple[str, ...], extra: str
) -> None:
    result = run_cli(*args, prelude=prelude)
    assert_one_line_error(result, ExitCode.MISSING_EXTRA, f"pip install '{extra}'")
    if args[0] == "init":  # the one of these with --json
        assert_json_error(run_cli(*args, "--json", prelude=prelude), 6, "missing_extra")


def test_registering_a_pickle_without_sklearn_names_the_extra(tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(b"not read")
    sample = tmp_path / "x.npy"
    sample.write_bytes(b"not read")
    args = ("model", "register", "m", str(model), "--sample-input", str(sample), "--token", "t")
    result = run_cli(*args, prelude=HIDE_SKLEARN)
    assert_one_line_error(result, ExitCode.MISSING_EXTRA, "pip install 'modelfleet[sklearn]'")


# -- errors the hub answers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedHub]:
    root = tmp_path_factory.mktemp("cli-errors")
    assert run_cli("init", str(root / "hub")).returncode == 0
    with served_hub(root / "hub", root) as served:
        yield served


HUB_CASES = [
    ("unknown-model", ("model", "show", "nosuch"), None, 3, "not_found"),
    ("unknown-version", ("model", "show", "nosuch:1"), None, 3, "not_found"),
    ("bad-token", ("device", "list"), "not-a-token", 4, "auth"),
    ("deploy-unknown-model", ("deploy", "nosuch", "1", "--all"), None, 3, "not_found"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "token", "code", "kind"), [c[1:] for c in HUB_CASES], ids=[c[0] for c in HUB_CASES]
)
def test_hub_error_has_its_exit_code(
    hub: ServedHub, args: tuple[str, ...], token: str | None, code: int, kind: str
) -> None:
    result = run_cli(*args, env=hub.env(token))
    assert "Traceback" not in result.stderr and result.returncode == code, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert_json_error(run_cli(*args, "--json", env=hub.env(token)), code, kind)


@pytest.mark.e2e
def test_a_model_the_hub_refuses_is_a_plain_error(hub: ServedHub, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not onnx")
    result = run_cli("model", "register", "m", str(bad), env=hub.env())
    assert_one_line_error(result, ExitCode.ERROR, "ONNX")


@pytest.mark.e2e
def test_token_from_a_file_keeps_it_off_the_command_line(hub: ServedHub, tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(hub.token + "\n")
    by_option = run_cli("device", "list", "--json", "--token-file", str(token_file),
                        env={"MODELFLEET_HUB": hub.url})  # fmt: skip
    assert by_option.returncode == 0, by_option.stderr
    by_env = run_cli(
        "device", "list", "--json",
        env={"MODELFLEET_HUB": hub.url, "MODELFLEET_TOKEN_FILE": str(token_file)},
    )  # fmt: skip
    assert by_env.returncode == 0, by_env.stderr


@pytest.mark.e2e
def test_a_token_with_a_trailing_newline_in_the_environment_still_works(hub: ServedHub) -> None:
    """`MODELFLEET_TOKEN` copied from a token file with its newline was sent as is and
    answered "cannot reach the hub: Illegal header value" (exit 5)."""
    env = {"MODELFLEET_HUB": hub.url, "MODELFLEET_TOKEN": hub.token + "\n"}
    result = run_cli("device", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr


def test_a_token_with_inner_spaces_is_a_usage_error_not_an_unreachable_hub() -> None:
    result = run_cli("device", "list", env={"MODELFLEET_HUB": f"http://127.0.0.1:{free_port()}",
                                            "MODELFLEET_TOKEN": "mft_abc def"})  # fmt: skip
    assert_one_line_error(result, ExitCode.USAGE, "token holds spaces")
