"""Issue 9 across real processes: a version registered with ``--reference`` is deployed
through TUF to a real ``agent run``, which counts what it serves into the signed profile; the
hub stores the windows with their ``profile`` field, and over all windows the counts equal
counting the same inputs directly. A version registered without a reference gets no field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from modelfleet.monitoring.profile_counts import ProfileCounter, merge_wire
from modelfleet.packaging.manifest import PackageManifest
from tests.e2e.conftest import Hub, Proc, cli, start_agent, wait_for
from tests.helpers import logistic_onnx

pytestmark = pytest.mark.e2e


def body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip


def windows(hub: Hub, device: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{hub.url}/api/v1/devices/{device}/windows", params={"limit": 500},
                  headers={"Authorization": f"Bearer {hub.token}"})  # fmt: skip
    r.raise_for_status()
    return [w for w in r.json() if w["kind"] == "window"]


def test_an_agent_counts_what_it_serves_into_the_signed_profile(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    onnx, x = logistic_onnx()
    (tmp_path / "m.onnx").write_bytes(onnx)
    np.save(tmp_path / "ref.npy", x)
    reg = cli("model", "register", "m", str(tmp_path / "m.onnx"), "--reference",
              str(tmp_path / "ref.npy"), "--json", env=hub.env())  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    digest = json.loads(reg.stdout)["drift"]["reference_profile"]
    url, _state, agent = start_agent(hub, spawn, tmp_path, "edge-1", "--telemetry-window-s", "1")
    url2, _, _ = start_agent(
        hub, spawn, tmp_path, "edge-2", "--telemetry-window-s", "1", "--drift-sketches"
    )
    assert cli("deploy", "m", "1", "--all", env=hub.env()).returncode == 0
    infer = f"{url}/v2/models/m/infer"
    assert wait_for(lambda: httpx.post(infer, json=body(x[:1])).status_code == 200)
    served = [x[:1]]
    rng = np.random.default_rng(3)
    for rows in (1, 5, 40, 300, 2, 900, 7):
        batch = (x[rng.integers(0, len(x), rows)] + 0.5).astype(np.float32)
        r = httpx.post(infer, json=body(batch), timeout=30)
        assert r.status_code == 200, r.text
        served.append(batch)
    total = sum(len(b) for b in served)

    def counted() -> int:
        wins = [w for w in windows(hub, "edge-1") if w["model"] == "m" and "profile" in w]
        return sum(int(w["requests"]["ok"]) for w in wins)

    assert wait_for(lambda: counted() >= len(served), timeout=60), agent.output()
    wins = [w for w in windows(hub, "edge-1") if w["model"] == "m"]
    assert all(w["profile"]["profile"] == digest for w in wins)  # every window of v1
    assert all(w["profile"].get("sketched") is False for w in wins)  # the default
    manifest = httpx.get(f"{hub.url}/api/v1/models/m/versions/1/manifest",
                         headers={"Authorization": f"Bearer {hub.token}"}).content  # fmt: skip
    profile = PackageManifest.from_json(manifest).package_profile()
    assert profile is not None and profile.digest == digest
    merged = merge_wire([w["profile"] for w in wins], profile.profile)
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    direct = ProfileCounter(profile.profile, sketches=False)
    for b in served:
        label, proba = session.run(None, {"X": b})
        outs = profile.batch({"label": label, "probabilities": proba}, "outputs")
        direct.count(profile.batch({"X": b}), outs)
    want = direct.snapshot()
    assert merged.rows == total == want.rows
    for g in ("inputs", "outputs"):
        np.testing.assert_array_equal(merged.counts[g], want.counts[g])

    # the agent run with --drift-sketches sends KLL sketches of what it served
    assert httpx.post(f"{url2}/v2/models/m/infer", json=body(x[:50])).status_code == 200

    def sketched() -> list[dict[str, Any]]:
        return [w for w in windows(hub, "edge-2") if w["requests"]["ok"] and "profile" in w]

    assert wait_for(lambda: bool(sketched()), timeout=60)
    wire = sketched()[0]["profile"]
    assert "sketched" not in wire and set(wire["sketches"]["inputs"]) == {
        f"x{i}" for i in range(10)
    }

    # a version registered without a reference: its windows carry no profile
    reg2 = cli("model", "register", "m", str(tmp_path / "m.onnx"), env=hub.env())
    assert reg2.returncode == 0 and "drift will not be computed" in reg2.stdout
    assert cli("deploy", "m", "2", "--all", env=hub.env()).returncode == 0
    assert wait_for(lambda: httpx.post(infer, json=body(x[:1])).json()["model_version"] == "2")
    assert wait_for(
        lambda: any(w["version"] == "2" and w["requests"]["ok"] for w in windows(hub, "edge-1")),
        timeout=60,
    )
    v2 = [w for w in windows(hub, "edge-1") if w["version"] == "2"]
    assert all("profile" not in w for w in v2), [
        (w["role"], w["requests"], w.get("profile")) for w in v2 if "profile" in w
    ]
