"""Wrong usage of the bandwidth, staggering and resume options is one line and exit 2
(issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.cli._errors import ExitCode
from tests.cli_run import run_cli
from tests.test_cli_errors import assert_one_line_error


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--off-shift", "25:00-03:00"], "--off-shift"),
        (["--off-shift", "22:00-22:00"], "--off-shift"),
        (["--pull-window-s", "-1"], "--pull-window-s"),
        (["--max-rate-mbps", "0"], "--max-rate-mbps"),
        (["--max-resumes", "101"], "--max-resumes"),
        (["--max-resumes", "-1"], "--max-resumes"),
        (["--max-resumes", "many"], "--max-resumes"),
    ],
    ids=[
        "hour-25",
        "empty-period",
        "negative-window",
        "zero-budget",
        "too-many-resumes",
        "negative-resumes",
        "resumes-not-a-number",
    ],
)
def test_wrong_usage_of_agent_run_staggering_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], text: str
) -> None:
    result = run_cli(
        "agent", "run", "--hub", "http://127.0.0.1:9", "--device-id", "dev-1",
        "--state-dir", str(tmp_path / "state"), "--token", "t", *args,
    )  # fmt: skip
    assert_one_line_error(result, ExitCode.USAGE, text)


def test_a_zero_site_budget_is_wrong_usage(tmp_path: Path) -> None:
    result = run_cli(
        "site", "serve", "--hub", "http://hub", "--cache", str(tmp_path / "c"),
        "--max-rate-mbps", "0",
    )  # fmt: skip
    assert_one_line_error(result, ExitCode.USAGE, "--max-rate-mbps")
    assert not (tmp_path / "c").exists()
