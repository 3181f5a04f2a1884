"""Prometheus's own tools for the tests: ``promtool`` and the ``prometheus`` server.

Both come with Debian's ``prometheus`` package (``scripts/ensure-prometheus.sh`` installs
it for ``make test``). Where a binary is missing the test skips locally; under CI
(``CI=true``) it fails, so a broken install step cannot hide behind a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["METRIC_NAMES", "prometheus_binary", "promtool", "promtool_check_metrics"]

#: Every metric the issue-7 contract (section 3) and the existing agent series name, as
#: exposed (counters with ``_total``; histograms by their base name).
METRIC_NAMES = frozenset(
    {
        # hub
        "modelfleet_hub_checkins_total",
        "modelfleet_hub_telemetry_batches_total",
        "modelfleet_hub_telemetry_records_total",
        "modelfleet_hub_telemetry_ingest_lag_seconds",
        "modelfleet_hub_devices",
        "modelfleet_hub_devices_clock_skewed",
        "modelfleet_hub_devices_serving",
        "modelfleet_hub_telemetry_buffered_records",
        "modelfleet_hub_telemetry_evicted_records",
        "modelfleet_hub_info",
        # agent, before issue 7
        "modelfleet_agent_requests_total",
        "modelfleet_agent_request_seconds",
        "modelfleet_agent_compute_seconds",
        "modelfleet_agent_queue_seconds",
        "modelfleet_agent_shadow_compared_total",
        "modelfleet_agent_shadow_disagreements_total",
        "modelfleet_agent_shadow_dropped_total",
        "modelfleet_agent_shadow_score_shift",
        "modelfleet_agent_guard_watching",
        "modelfleet_agent_guard_breached",
        "modelfleet_agent_guard_rollbacks_total",
        "modelfleet_agent_cascade_total",
        "modelfleet_agent_active_version_info",
        # agent, issue 7
        "modelfleet_agent_updates_total",
        "modelfleet_agent_downloads_total",
        "modelfleet_agent_download_bytes_total",
        "modelfleet_agent_refusals_total",
        "modelfleet_agent_telemetry_buffered_records",
        "modelfleet_agent_telemetry_buffer_bytes",
        "modelfleet_agent_telemetry_evicted_total",
        "modelfleet_agent_telemetry_appended_total",
        "modelfleet_agent_telemetry_forwarded_total",
        "modelfleet_agent_telemetry_forward_failures_total",
        "modelfleet_agent_telemetry_append_failures_total",
        "modelfleet_agent_telemetry_last_forward_timestamp_seconds",
        # hub and agent, issue 9
        "modelfleet_drift_score",
        "modelfleet_drift_state",
        "modelfleet_override_state",  # ADR 0040
        "modelfleet_override_rate",
        "modelfleet_hub_drift_windows_total",
        "modelfleet_hub_overrides_total",
        "modelfleet_agent_overrides_total",
        # agent, issue 11 (ADR 0036: expired metadata, the time floor)
        "modelfleet_agent_metadata_expired",
        "modelfleet_agent_metadata_expires_timestamp_seconds",
        "modelfleet_agent_time_floor_timestamp_seconds",
        # Prometheus's own per-target series
        "up",
        "scrape_duration_seconds",
    }
)


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/local/bin/{name}") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        message = (
            f"{name} not found: install Debian's prometheus package "
            "(bash scripts/ensure-prometheus.sh, which `make test` runs)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def promtool() -> str:
    """The path of ``promtool`` (skips locally, fails under CI, when it is missing)."""
    return _binary("promtool")


def prometheus_binary() -> str:
    """The path of the ``prometheus`` server (skips locally, fails under CI)."""
    return _binary("prometheus")


def run_promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    """Run ``promtool ARGS``; fail the test with its output unless it exits 0."""
    result = subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, timeout=120, cwd=cwd
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def promtool_check_metrics(exposition: bytes) -> None:
    """``promtool check metrics`` on a text exposition: fails on errors *and* lint warnings."""
    run_promtool("check", "metrics", stdin=exposition)
