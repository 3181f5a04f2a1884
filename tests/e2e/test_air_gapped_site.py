"""An air-gapped site end to end (issue 11), across real processes and the real CLI.

At the hub: three devices of site ``vault``, model ``m`` v1 deployed, ``bundle export``
encrypted to the site's age key. The hub is then stopped: nothing at the site can reach it.
At the site: ``bundle import`` into the cache of an offline ``site serve``; three real
agents pointed at the mirror update from it (their token checked by the mirror from the
bundle's credential digests), serve v1 and buffer telemetry (the mirror refuses it, so it
stays on the devices). A second bundle (v2) is imported into the running mirror and the
devices move to v2; the older bundle imported afterwards is refused as a replay and v2
keeps serving. ``bundle report`` collects the devices' windows; ``bundle ingest`` stores
every window at the hub exactly once (the same file twice changes nothing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.agent.telemetry import BUFFER_FILE
from modelfleet.client import HubClient
from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from modelfleet.telemetry.buffer import read_stats
from tests.e2e.conftest import cli, wait_for
from tests.helpers import logistic_onnx, make_data

pytestmark = pytest.mark.e2e

SITE = "vault"
DEVICES = ("vault-01", "vault-02", "vault-03")


def infer(url: str) -> str:
    body = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [0.0] * 10}]}
    r = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=10)
    return str(r.json().get("model_version", "")) if r.status_code == 200 else ""


@pytest.fixture
def procs() -> Iterator[list[Process]]:
    running: list[Process] = []
    yield running
    for p in reversed(running):
        p.stop()


def _ok(r: object) -> dict[str, object]:
    assert r.returncode == 0, (r.stdout, r.stderr)  # type: ignore[attr-defined]
    return json.loads(r.stdout)  # type: ignore[attr-defined, no-any-return]


def _start_hub(home: Path, tmp_path: Path, procs: list[Process]) -> tuple[str, Process]:
    port = free_port()
    hub = start("hub", modelfleet_cmd("hub", "serve", "--home", str(home),
                                      "--port", str(port)), tmp_path)  # fmt: skip
    procs.append(hub)
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/api/v1/health").status_code == 200), hub.output()
    return url, hub


def test_an_air_gapped_site_runs_on_bundles_and_reports_back_exactly_once(
    tmp_path: Path, procs: list[Process]
) -> None:
    home = tmp_path / "hub"
    assert cli("init", str(home)).returncode == 0
    admin = (home / "admin.token").read_text().strip()
    hub_url, hub = _start_hub(home, tmp_path, procs)
    env = {"MODELFLEET_HUB": hub_url, "MODELFLEET_TOKEN": admin}
    sample = tmp_path / "sample.npy"
    np.save(sample, make_data(0)[0][:5])
    for seed in (0, 1):
        model = tmp_path / f"model{seed}.onnx"
        model.write_bytes(logistic_onnx(seed)[0])
        _ok(cli("model", "register", "m", str(model), "--sample-input", str(sample), "--json",
                env=env))  # fmt: skip
    api = HubClient(hub_url, admin)
    tokens = {d: api.add_device(d, site=SITE)["token"] for d in DEVICES}
    api.add_device("elsewhere-01", site="plant-b")  # another site's device stays out

    # the device keys sign the return bundles: made at the site, registered by an admin
    states = {d: tmp_path / "site" / d for d in DEVICES}
    for d, state in states.items():
        pem = tmp_path / f"{d}.pem"
        _ok(cli("agent", "key", "--state-dir", str(state), "--out", str(pem), "--json"))
        _ok(cli("device", "key", d, "--public-key", str(pem), "--home", str(home), "--json"))

    key = _ok(cli("bundle", "site-key", "--out", str(tmp_path / "site.key"), "--json"))
    recipient = str(key["public_key"])
    api.deploy("m", 1, all_devices=True)
    v1 = tmp_path / "v1.mfb"
    made = _ok(cli("bundle", "export", "--site", SITE, "--out", str(v1),
                   "--recipient", recipient, "--json", env=env))  # fmt: skip
    assert made["encrypted"] is True
    assert [d["device"] for d in made["devices"]] == list(DEVICES)  # type: ignore[index, union-attr]
    api.deploy("m", 2, all_devices=True)
    v2 = tmp_path / "v2.mfb"
    _ok(cli("bundle", "export", "--site", SITE, "--out", str(v2), "--recipient", recipient,
            "--json", env=env))  # fmt: skip
    api.close()
    hub.stop()  # from here on the site has no hub to reach

    # -- at the site -------------------------------------------------------------------------
    cache = tmp_path / "mirror-cache"
    imp = ["--site", SITE, "--mirror-cache", str(cache), "--identity", str(tmp_path / "site.key")]
    wrong_site = cli("bundle", "import", str(v1), "--site", "plant-b", "--mirror-cache",
                     str(cache), "--trust-root", str(home / "trust-root.json"),
                     "--identity", str(tmp_path / "site.key"))  # fmt: skip
    assert wrong_site.returncode != 0 and "for site 'vault', not 'plant-b'" in wrong_site.stderr
    assert "Traceback" not in wrong_site.stderr
    done = _ok(cli("bundle", "import", str(v1), *imp, "--trust-root",
                   str(home / "trust-root.json"), "--json"))  # fmt: skip
    assert done["devices"] == dict.fromkeys(DEVICES, done["devices"]["vault-01"])  # type: ignore[index]

    mport = free_port()
    mirror = start("mirror", modelfleet_cmd("site", "serve", "--offline", "--cache", str(cache),
                                            "--port", str(mport)), tmp_path)  # fmt: skip
    procs.append(mirror)
    mirror_url = f"http://127.0.0.1:{mport}"
    assert wait_for(lambda: httpx.get(f"{mirror_url}/-/mirror/status").status_code == 200)
    agents: dict[str, str] = {}
    for d in DEVICES:
        port = free_port()
        procs.append(start(f"agent-{d}", modelfleet_cmd(
            "agent", "run", "--hub", mirror_url, "--device-id", d, "--token", tokens[d],
            "--state-dir", str(states[d]), "--port", str(port), "--poll-interval", "0.3",
            "--trust-root", str(home / "trust-root.json"), "--telemetry-window-s", "1",
        ), tmp_path))  # fmt: skip
        agents[d] = f"http://127.0.0.1:{port}"
    for url in agents.values():
        assert wait_for(lambda url=url: infer(url) == "1", 90), procs[-1].output()[-3000:]

    # the running mirror takes the next bundle; the devices move to v2
    _ok(cli("bundle", "import", str(v2), *imp, "--json"))
    for url in agents.values():
        assert wait_for(lambda url=url: infer(url) == "2", 90), mirror.output()[-3000:]
    replay = cli("bundle", "import", str(v1), *imp)
    assert replay.returncode != 0 and "replay refused" in replay.stderr, replay.stderr
    for url in agents.values():
        for _ in range(5):
            assert infer(url) == "2"

    def buffered(d: str) -> bool:
        stats = read_stats(states[d] / BUFFER_FILE)
        return stats is not None and stats["records"] >= 3

    for d in DEVICES:
        assert wait_for(lambda d=d: buffered(d), 60), "telemetry should stay on the device"
    status = httpx.get(f"{mirror_url}/-/mirror/status").json()
    assert status["offline"] is True and status["counters"]["upstream_requests"] == 0
    for p in procs[-len(DEVICES) :]:
        p.stop()  # the windows written so far are all in the buffers now

    out = tmp_path / "return.mfr"
    args = [a for d in DEVICES for a in ("--agent-state", str(states[d]))]
    report = _ok(cli("bundle", "report", *args, "--site", SITE, "--out", str(out), "--json"))
    sent = {d["device_id"]: d["records"] for d in report["devices"]}  # type: ignore[index, union-attr]
    assert all(n >= 3 for n in sent.values()), sent

    # -- back at the hub ---------------------------------------------------------------------
    first = _ok(cli("bundle", "ingest", str(out), "--home", str(home), "--json"))
    assert first["status"] == "ingested" and first["stored"] == sum(sent.values())
    again = _ok(cli("bundle", "ingest", str(out), "--home", str(home), "--json"))
    assert again["status"] == "already_ingested"
    hub_url, _ = _start_hub(home, tmp_path, procs)
    with HubClient(hub_url, admin) as api:
        for d in DEVICES:
            windows = api.device_windows(d, limit=1000)
            seqs = [w["seq"] for w in windows]
            assert len(seqs) == len(set(seqs)) == sent[d], (d, seqs)
            assert api.get_device(d)["report"] is not None  # the site's state as of the bundle
