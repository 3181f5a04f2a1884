"""``hub serve`` honours MODELFLEET_SIM_CLOCK=ORIGIN:RATE (issue 7, time-compressed tests)."""

from __future__ import annotations

import pytest

from modelfleet.cli._errors import UsageError
from modelfleet.cli.agent_cmds import sim_clock as sim_clock_from_env
from modelfleet.clock import ScaledClock


def test_sim_clock_env_gives_a_scaled_clock_and_none_without_it() -> None:
    clock = sim_clock_from_env({"MODELFLEET_SIM_CLOCK": "1700000000:5000"})
    assert isinstance(clock, ScaledClock) and clock.rate == 5000.0
    assert clock.real_seconds(300.0) == pytest.approx(0.06)
    assert sim_clock_from_env({}) is None
    assert sim_clock_from_env({"MODELFLEET_SIM_CLOCK": " "}) is None


@pytest.mark.parametrize("bad", ["5000", "x:1", "1700000000:0.5"])
def test_a_malformed_sim_clock_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="MODELFLEET_SIM_CLOCK"):
        sim_clock_from_env({"MODELFLEET_SIM_CLOCK": bad})
