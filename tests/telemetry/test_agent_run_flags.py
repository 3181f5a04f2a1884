"""``agent run``'s telemetry flags and MODELFLEET_SIM_CLOCK: bad values are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import run_cli


def base(tmp_path: Path) -> list[str]:
    return ["agent", "run", "--hub", "http://127.0.0.1:9", "--device-id", "edge-1",
            "--state-dir", str(tmp_path / "s")]  # fmt: skip


@pytest.mark.parametrize(
    "flags",
    [
        ["--telemetry-window-s", "0"],
        ["--telemetry-window-s", "3601"],
        ["--telemetry-window-s", "soon"],
        ["--telemetry-buffer-mb", "0"],
        ["--telemetry-buffer-mb", "100000"],
    ],
    ids=["window-zero", "window-too-long", "window-not-a-number", "buffer-zero", "buffer-huge"],
)
def test_a_bad_telemetry_flag_is_a_usage_error(tmp_path: Path, flags: list[str]) -> None:
    result = run_cli(*base(tmp_path), *flags, env={"MODELFLEET_DEVICE_TOKEN": "t"})
    assert result.returncode == 2, result.stderr
    assert "telemetry" in result.stderr and "Traceback" not in result.stderr


def test_a_malformed_sim_clock_is_a_usage_error(tmp_path: Path) -> None:
    env = {"MODELFLEET_DEVICE_TOKEN": "t", "MODELFLEET_SIM_CLOCK": "yesterday"}
    result = run_cli(*base(tmp_path), env=env)
    assert result.returncode == 2, result.stderr
    assert "MODELFLEET_SIM_CLOCK" in result.stderr and "Traceback" not in result.stderr
