"""The deployed-agent drift benchmark (issue 9), tiny: one round of one second at c = 1.

Guards that the benchmark measures what it says: three enrolled ``agent run`` processes
against one hub, a report with every configuration and ratio, and the hub holding the
``on`` agent's counts of every row it answered and none from the ``--no-drift`` agents.
Telemetry windows of 2 s (not the CLI's 60) so the check does not wait a minute. Needs wrk:
skipped without it, except under CI (``CI=true``), where a missing wrk fails.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from benchmarks import drift_deployed

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        reason = "wrk is not installed (Debian/Ubuntu: apt-get install wrk)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the deployed drift benchmark cannot run in CI: {reason}")
        pytest.skip(reason)
    opts = drift_deployed.Options(
        seconds=1, rounds=1, concurrency=(1,), telemetry_window_s=2.0, warmup_s=1
    )
    return drift_deployed.run(opts, tmp_path_factory.mktemp("drift-deployed"))


def test_the_report_has_every_configuration_and_ratio(report: dict[str, Any]) -> None:
    part = report["concurrency"]["1"]
    for name in drift_deployed.CONFIGS:
        assert len(part["runs"][name]) == 1
        assert part[name]["rps"]["median"] > 0
        assert 0 < part[name]["p50_us"]["median"] <= part[name]["p99_us"]["median"]
    for key in ("on_over_off", "off_control_over_off"):
        for figure in ("p50", "p99", "rps", "cpu_per_request"):
            assert part[key][figure]["median"] > 0
    assert set(part["on_minus_off_us"]) == {"p50", "p99", "cpu_per_request"}
    assert "| 1 | on/off |" in drift_deployed.render(report)


def test_only_the_on_agent_counted_every_row_it_answered(report: dict[str, Any]) -> None:
    counting = report["counting"]
    on = counting["on"]
    assert on["drift_rows"] > 0 and on["drift_rows"] == on["served_rows"]
    assert on["profile_windows"] >= 1
    for name in ("off", "off_control"):
        assert counting[name]["served_rows"] > 0
        assert counting[name]["drift_rows"] == 0 and counting[name]["profile_windows"] == 0


def test_an_on_agent_that_counted_nothing_fails_the_run() -> None:
    class Hub:
        def device_windows(self, device_id: str, limit: int) -> list[dict[str, object]]:
            ok = {"kind": "window", "model": "lr", "closed_at": "2026-12-04T22:00:00+00:00"}
            return [{**ok, "requests": {"ok": 10}}]

        def drift_report(self, model: str, site: str) -> dict[str, object]:
            return {"rows": 0, "verdict": "insufficient_data"}

    devices = {name: f"bench-{name}" for name in drift_deployed.CONFIGS}
    with pytest.raises(drift_deployed.CountingError, match="counted nothing"):
        drift_deployed.check_counting(Hub(), devices, after=0.0, timeout_s=1.0)
