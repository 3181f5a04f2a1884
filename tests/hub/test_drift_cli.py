"""``modelfleet drift report|status`` through the real CLI against a real ``hub serve``
(issue 9): the table names every column's tests, ``--json`` gives the hub's answer, and an
unknown model exits 3."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.client import HubClient
from modelfleet.clock import ManualClock
from modelfleet.hub.service import init_home
from modelfleet.packaging.manifest import PackageManifest
from tests.cli_run import run_cli, served_hub
from tests.hub._drift import Outputs, counts, reference_rows, rows
from tests.hub._telemetry import batch, window

pytestmark = pytest.mark.e2e


def test_drift_report_and_status_through_the_cli(tmp_path: Path, onnx_bytes: bytes) -> None:
    init_home(tmp_path / "hub", ManualClock(datetime.now(UTC)))
    np.save(tmp_path / "ref.npy", reference_rows())
    with served_hub(tmp_path / "hub", tmp_path) as hub:
        with httpx.Client() as http:
            client = HubClient(hub.url, hub.token, http=http)
            client.register_version("iris", onnx_bytes, reference=tmp_path / "ref.npy")
            package = PackageManifest.from_json(client.get_manifest("iris", 1)).package_profile()
            assert package is not None
            assert (
                run_cli("device", "add", "cam-1", "--site", "plant", env=hub.env()).returncode == 0
            )
            now = datetime.now(UTC)
            shifted = counts(package, rows(1000, 3, shift=2.0), Outputs(onnx_bytes))
            doc = batch("cam-1", [window(1, "cam-1", now, profile=shifted)], now)
            r = http.post(f"{hub.url}/api/v1/devices/cam-1/telemetry", json=doc,
                          headers={"Authorization": f"Bearer {hub.token}"})  # fmt: skip
            assert r.json()["stored"] == 1

        shown = run_cli("drift", "report", "iris", "--since", "2h", env=hub.env())
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        assert "drift" in out and "inputs/x0" in out and "Drift per column and test" in out
        for word in ("feature", "test", "value", "threshold", "verdict", "psi", "chi_square",
                     "x0", "probabilities[0]", "prediction drift (outputs)"):  # fmt: skip
            assert word in out, word
        data = json.loads(
            run_cli(
                "drift",
                "report",
                "iris",
                "--version",
                "1",
                "--site",
                "plant",
                "--json",
                env=hub.env(),
            ).stdout
        )
        assert data["verdict"] == "drift" and data["rows"] == 1000
        assert data["inputs"][0]["feature"] == "x0" and data["inputs"][0]["verdict"] == "drift"

        status = run_cli("drift", "status", "--model", "iris", "--json", env=hub.env())
        assert status.returncode == 0 and json.loads(status.stdout) == []
        table = run_cli("drift", "status", env=hub.env())
        assert table.returncode == 0 and "Drift states" in table.stdout

        missing = run_cli("drift", "report", "ghost", "--json", env=hub.env())
        assert missing.returncode == 3, missing.stderr
        bad = run_cli("drift", "report", "iris", "--since", "soon", env=hub.env())
        assert bad.returncode != 0 and "soon" in bad.stderr
