"""The observability flags of ``agent run`` and ``hub serve`` fail clearly (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfleet.cli._errors import ExitCode
from tests.cli_run import run_cli

HIDE_OTEL = (
    "import sys; sys.modules.update(dict.fromkeys("
    "['opentelemetry.sdk', 'opentelemetry.exporter.otlp.proto.http']))"
)


def agent_run(tmp_path: Path, *extra: str) -> tuple[str, ...]:
    return (
        "agent", "run", "--hub", "http://127.0.0.1:9", "--device-id", "d1",
        "--state-dir", str(tmp_path / "state"), *extra,
    )  # fmt: skip


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_otlp_without_the_otel_extra_names_the_extra_and_exits_6(tmp_path: Path) -> None:
    args = agent_run(tmp_path, "--otlp-endpoint", "http://127.0.0.1:4318")
    result = run_cli(*args, env={"MODELFLEET_DEVICE_TOKEN": "t"}, prelude=HIDE_OTEL)
    assert result.returncode == ExitCode.MISSING_EXTRA, result.stderr
    assert "pip install 'modelfleet[otel]'" in one_line(result.stderr)
    assert not (tmp_path / "state").exists()  # refused before anything started


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (("--otlp-endpoint", "collector:4318"), "http(s) URL"),
        (("--otlp-endpoint", "http://c:4318", "--trace-sample", "2"), "between 0 and 1"),
        (("--log-format", "yaml"), "text or json"),
    ],
    ids=["endpoint-not-a-url", "sample-over-1", "unknown-log-format"],
)
def test_bad_observability_flags_are_usage_errors(
    tmp_path: Path, extra: tuple[str, ...], text: str
) -> None:
    result = run_cli(*agent_run(tmp_path, *extra), env={"MODELFLEET_DEVICE_TOKEN": "t"})
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert text in one_line(result.stderr)


def test_hub_serve_refuses_an_unknown_log_format_from_the_environment(tmp_path: Path) -> None:
    result = run_cli("hub", "serve", "--home", str(tmp_path), env={"MODELFLEET_LOG_FORMAT": "xml"})
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "text or json" in one_line(result.stderr)


def test_with_json_logs_even_the_final_error_is_a_json_line(tmp_path: Path) -> None:
    # No hub in reach and no trust root cached: the agent cannot start (exit 1); a log
    # collector reading its stderr still gets nothing but JSON lines.
    args = agent_run(tmp_path, "--log-format", "json")
    result = run_cli(*args, env={"MODELFLEET_DEVICE_TOKEN": "t"})
    assert result.returncode == ExitCode.ERROR, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1]["kind"] == "error" and "trust root" in lines[-1]["error"]
    assert len(lines) >= 2 and all(line["device_id"] == "d1" for line in lines[:-1])
