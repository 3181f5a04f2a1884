"""A site mirror across real processes (issue 11): a real hub, a real ``modelfleet site serve``,
ten device TUF clients and one real agent behind it.

* ten devices (fetching at once) and an agent cause exactly ONE download of the artefact
  from the hub (counted in the hub's access log);
* hub egress with and without the mirror (printed; ``-s`` shows it);
* the hub stopped: devices still get metadata and artefacts from the mirror's cache, the
  agent keeps serving;
* a tampered cached artefact is not served (the mirror checks it against its name); a
  tampered cached metadata file, a rolled-back timestamp and expired metadata served by the
  mirror are refused by the device's TUF client.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.client import HubClient
from modelfleet.delivery.http_fetcher import HttpFetcher
from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from modelfleet.errors import MetadataVerificationError, TransportError
from modelfleet.rollout.desired_state import ArtefactRef, DesiredState
from modelfleet.trust.client import DeviceTrustClient
from tests.e2e.conftest import cli, wait_for
from tests.helpers import logistic_onnx, make_data, slow_logistic_onnx

pytestmark = pytest.mark.e2e

DEVICES = [f"press-{i:02d}" for i in range(10)]
AGENT = "press-agent"
#: python-tuf's refusal of a timestamp older than the one the device trusts
ROLLED_BACK = r"New timestamp version \d+ must be >= \d+"


class CountingFetcher(HttpFetcher):
    """An :class:`HttpFetcher` that counts the body bytes it receives (hub egress)."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.received = 0
        self._count_lock = threading.Lock()

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._counted(super()._fetch(url))

    def _counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            with self._count_lock:
                self.received += len(chunk)
            yield chunk


@dataclass
class Site:
    root: Path
    hub_home: Path
    hub_url: str
    hub: Process
    mirror_url: str
    mirror_cache: Path
    mirror: Process
    tokens: dict[str, str]
    v1: ArtefactRef
    trust_root: bytes
    agent_url: str
    agent: Process
    spawn: Callable[..., Process]

    def status(self) -> dict:  # type: ignore[type-arg]
        data: dict = httpx.get(f"{self.mirror_url}/-/mirror/status", timeout=5).json()  # type: ignore[type-arg]
        return data

    def client(self, device: str, base: str | None = None, tag: str = "") -> DeviceTrustClient:
        folder = self.root / "devices" / f"{device}{tag}"
        return DeviceTrustClient(
            folder, base or self.mirror_url, self.tokens[device], self.trust_root
        )


def update(client: DeviceTrustClient, device: str, dest: Path) -> ArtefactRef:
    """One update as the agent does it: desired state, then the artefact it names."""
    raw = client.fetch_desired_state(device)
    assert raw is not None
    assignment = DesiredState.from_json(raw).assignment("m")
    assert assignment is not None
    ref = assignment.production
    client.fetch_package_file(ref.model_path, ref.sha256, ref.length, dest)
    return ref


def artefact_gets(site: Site) -> int:
    """GETs of v1's model file the hub answered (its access log)."""
    needle = f"GET /tuf/catalog/targets/models/m/1/{site.v1.sha256}.model.onnx"
    return sum(needle in line for line in site.hub.output().splitlines())


def hub_records(site: Site) -> list[dict]:  # type: ignore[type-arg]
    """The agent's telemetry records the hub stored (newest first)."""
    admin = (site.hub_home / "admin.token").read_text().strip()
    r = httpx.get(f"{site.hub_url}/api/v1/devices/{AGENT}/windows?limit=500",
                  headers={"Authorization": f"Bearer {admin}"}, timeout=10)  # fmt: skip
    r.raise_for_status()
    records: list[dict] = r.json()  # type: ignore[type-arg]
    return records


def outbox_seqs(site: Site) -> set[int]:
    """The seqs of the agent's records waiting in the mirror's telemetry outbox."""
    db = sqlite3.connect(site.mirror_cache / ".mirror" / "telemetry-outbox.sqlite")
    try:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM outbox")]
    finally:
        db.close()
    return {r["seq"] for b in bodies for r in b["records"]}


def infer(url: str) -> httpx.Response:
    x = np.zeros((1, 10), np.float32)
    body = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    return httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site-mirror")
    procs: list[Process] = []

    def spawn(name: str, *args: str) -> Process:
        proc = start(name, modelfleet_cmd(*args), root)
        procs.append(proc)
        return proc

    try:
        yield _bring_up(root, spawn)
    finally:
        for p in reversed(procs):
            p.stop()


def _bring_up(root: Path, spawn: Callable[..., Process]) -> Site:
    home = root / "hub"
    assert cli("init", str(home)).returncode == 0
    admin = (home / "admin.token").read_text().strip()
    port = free_port()
    hub = spawn("hub", "hub", "serve", "--home", str(home), "--port", str(port), "--access-log")
    hub_url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{hub_url}/api/v1/health").status_code == 200), hub.output()

    model = root / "model.onnx"
    model.write_bytes(slow_logistic_onnx(0, size=512))  # about 1 MiB
    sample = root / "sample.npy"
    np.save(sample, make_data(0)[0][:5])
    env = {"MODELFLEET_HUB": hub_url, "MODELFLEET_TOKEN": admin}
    reg = cli("model", "register", "m", str(model), "--sample-input", str(sample), "--json",
              env=env)  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    api = HubClient(hub_url, admin)
    tokens = {d: api.add_device(d, site="plant-a")["token"] for d in [*DEVICES, AGENT]}
    api.deploy("m", 1, all_devices=True)

    cache = root / "mirror-cache"
    mport = free_port()
    mirror = spawn("mirror", "site", "serve", "--hub", hub_url, "--cache", str(cache),
                   "--token-file", str(home / "admin.token"), "--port", str(mport),
                   "--metadata-ttl-s", "1")  # fmt: skip
    mirror_url = f"http://127.0.0.1:{mport}"
    assert wait_for(lambda: httpx.get(f"{mirror_url}/-/mirror/status").status_code == 200), (
        mirror.output()
    )
    trust_root = (home / "trust-root.json").read_bytes()
    return Site(root, home, hub_url, hub, mirror_url, cache, mirror, tokens,
                ArtefactRef("m", 1, "", 0, "", 0), trust_root, "", hub, spawn)  # fmt: skip


def test_ten_devices_behind_a_site_mirror_cause_one_artefact_download_from_the_hub(
    site: Site,
) -> None:
    clients = {d: site.client(d) for d in DEVICES}
    refs: dict[str, ArtefactRef] = {}
    errors: list[BaseException] = []

    def one(device: str) -> None:
        try:
            refs[device] = update(clients[device], device, site.root / "got" / device)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(d,)) for d in DEVICES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    site.v1 = refs[DEVICES[0]]
    assert {r.sha256 for r in refs.values()} == {site.v1.sha256}
    for d in DEVICES:
        assert (site.root / "got" / d).stat().st_size == site.v1.length
    egress_mirror = site.status()["counters"]["upstream_bytes"]
    assert artefact_gets(site) == 1, site.hub.output()[-3000:]

    # a real agent behind the mirror installs and serves the same version
    port = free_port()
    state = site.root / "agent"
    site.agent = site.spawn("agent", *(
        "agent", "run", "--hub", site.mirror_url, "--device-id", AGENT,
        "--token", site.tokens[AGENT], "--state-dir", str(state), "--port", str(port),
        "--poll-interval", "0.3", "--trust-root", str(site.hub_home / "trust-root.json"),
        "--telemetry-window-s", "1",
    ))  # fmt: skip
    site.agent_url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: infer(site.agent_url).json()["model_version"] == "1", 120), (
        site.agent.output()[-3000:] + site.mirror.output()[-3000:]
    )
    assert artefact_gets(site) == 1  # still one: the agent's copy came from the cache
    # its telemetry reaches the hub through the mirror's outbox
    for _ in range(5):
        infer(site.agent_url)
    assert wait_for(lambda: len(hub_records(site)) > 0, 60), site.agent.output()[-2000:]
    assert site.status()["telemetry_outbox"]["forwarded"] >= 1

    # the same ten devices straight at the hub: hub egress without the mirror
    fetchers = {d: CountingFetcher(site.tokens[d]) for d in DEVICES}
    for d in DEVICES:
        direct = DeviceTrustClient(site.root / "direct" / d, site.hub_url, site.tokens[d],
                                   site.trust_root, fetcher=fetchers[d])  # fmt: skip
        update(direct, d, site.root / "direct-got" / d)
    egress_direct = sum(f.received for f in fetchers.values())
    print(
        f"\nhub egress for {len(DEVICES)} devices ({site.v1.length} B artefact): "
        f"without a mirror {egress_direct} B, with a mirror {egress_mirror} B "
        f"({egress_direct / egress_mirror:.1f}x less)"
    )
    assert egress_direct >= len(DEVICES) * site.v1.length
    assert egress_mirror < 2 * site.v1.length
    assert artefact_gets(site) == 1 + len(DEVICES)


def test_with_the_hub_stopped_devices_are_served_from_the_cache_and_refuse_bad_copies(
    site: Site,
) -> None:
    if not site.v1.sha256:
        pytest.skip("needs the first test's cache")
    victim = DEVICES[0]
    ts = site.mirror_cache / "tuf" / "director" / "devices" / victim / "metadata" / "timestamp.json"
    old_timestamp = ts.read_bytes()
    # a newer desired state for the victim: its TUF client now trusts a newer timestamp
    home_env = {
        "MODELFLEET_HUB": site.hub_url,
        "MODELFLEET_TOKEN": (site.hub_home / "admin.token").read_text().strip(),
    }
    small, x = logistic_onnx(1)
    (site.root / "v2.onnx").write_bytes(small)
    np.save(site.root / "v2.npy", x[:5])
    reg = cli("model", "register", "m", str(site.root / "v2.onnx"), "--sample-input",
              str(site.root / "v2.npy"), env=home_env)  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    assert cli("deploy", "m", "2", "--devices", victim, env=home_env).returncode == 0
    victim_client = site.client(victim)  # the first test's cache: it trusts v1's timestamp
    assert update(victim_client, victim, site.root / "v2-got").version == 2

    site.hub.stop()
    assert wait_for(lambda: not site.status()["hub_reachable"] or _poke(site), 30)

    # devices (fresh caches: a wiped device) still update from the mirror's cache
    for d in DEVICES[1:4]:
        ref = update(site.client(d, tag="-offline"), d, site.root / "offline" / d)
        assert ref.sha256 == site.v1.sha256
    assert infer(site.agent_url).status_code == 200  # the agent keeps serving
    # its telemetry is buffered in the mirror meanwhile (the agent is told "recorded")
    for _ in range(5):
        infer(site.agent_url)
    assert wait_for(lambda: len(outbox_seqs(site)) > 0, 60), site.mirror.output()[-2000:]

    # a tampered cached artefact is not served: the mirror checks it against its name
    cached = next((site.mirror_cache / "tuf/catalog/targets/models/m/1").glob("*.model.onnx"))
    data = cached.read_bytes()
    cached.write_bytes(data[:-4] + b"evil")
    with pytest.raises(TransportError, match="503"):
        update(site.client(DEVICES[4], tag="-tampered"), DEVICES[4], site.root / "t" / "x")
    assert not cached.exists()
    assert "does not hash to its name" in site.mirror.output()

    # a tampered cached metadata file reaches the device, which refuses it
    snapshot = max((site.mirror_cache / "tuf/catalog/metadata").glob("*.snapshot.json"),
                   key=lambda p: int(p.name.split(".")[0]))  # fmt: skip
    doc = json.loads(snapshot.read_bytes())
    doc["signed"]["meta"]["targets.json"]["version"] += 100
    snapshot.write_bytes(json.dumps(doc).encode())
    with pytest.raises(MetadataVerificationError):
        site.client(DEVICES[5], tag="-meta").refresh_catalog()

    # stale metadata from the mirror: a rolled-back timestamp is refused
    ts.write_bytes(old_timestamp)
    with pytest.raises(MetadataVerificationError, match=ROLLED_BACK):
        victim_client.fetch_desired_state(victim)

    # and expired metadata (the device's clock two years on) is refused
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=800)
    expired_client = DeviceTrustClient(
        site.root / "devices" / f"{DEVICES[6]}-expired",
        site.mirror_url,
        site.tokens[DEVICES[6]],
        site.trust_root,
        now=lambda: later,
    )
    with pytest.raises(MetadataVerificationError, match=r"expired"):
        expired_client.fetch_desired_state(DEVICES[6])

    # the hub comes back: the buffered telemetry reaches it, each record exactly once
    buffered = outbox_seqs(site)
    port = site.hub_url.rsplit(":", 1)[1]
    site.hub = site.spawn("hub-again", "hub", "serve", "--home", str(site.hub_home), "--port", port)
    assert wait_for(lambda: not outbox_seqs(site) and len(hub_records(site)) > 0, 90), (
        site.mirror.output()[-2000:]
    )
    seqs = [r["seq"] for r in hub_records(site)]
    assert buffered <= set(seqs)
    assert len(seqs) == len(set(seqs))


def _poke(site: Site) -> bool:
    """Make the mirror notice the hub is gone (a metadata request it cannot forward)."""
    bearer = {"Authorization": f"Bearer {site.tokens[DEVICES[1]]}"}
    httpx.get(f"{site.mirror_url}/api/v1/whoami", headers=bearer, timeout=30)
    return not site.status()["hub_reachable"]
