"""The demo behind ``make demo``: register → sign → roll out → serve → refuse → roll back.

Everything runs for real on this machine: a hub and three agents as separate processes on
loopback, TUF metadata signed with fresh ed25519 keys, ONNX Runtime answering OIP v2
requests. Each step checks what it claims; the demo exits non-zero if any check fails.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from modelfleet._atomic import create_secret_once
from modelfleet.errors import ModelfleetError

__all__ = ["run_demo"]

MODEL = "quality-check"
DEVICES = (("press-01", "plant-a"), ("press-02", "plant-a"), ("lathe-07", "plant-b"))
console = Console(highlight=False)


#: Seconds per telemetry window in the demo (60 by default on a real device).
TELEMETRY_WINDOW_S = 2


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Process:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    def output(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Agent:
    """One demo device: its id, token, port and state folder."""

    device_id: str
    site: str
    token: str
    port: int
    state_dir: Path
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Story:
    """Prints steps and keeps score of the checks."""

    failures: list[str] = field(default_factory=list)
    step_no: int = 0

    def step(self, title: str, explain: str) -> None:
        self.step_no += 1
        console.print()
        console.rule(f"[bold cyan]Step {self.step_no}: {title}", align="left")
        console.print(f"[dim]{explain.replace(chr(10), ' ')}[/]")

    def check(self, ok: bool, claim: str) -> bool:
        if ok:
            console.print(f"  [green]✓[/] {claim}")
        else:
            console.print(f"  [red]✗ {claim}[/]")
            self.failures.append(claim)
        return ok

    def say(self, text: str) -> None:
        console.print(f"  {text}")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (real time: this is a demo)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (httpx.HTTPError, OSError, ValueError, KeyError, ModelfleetError):
            pass
        time.sleep(interval)
    return False


def modelfleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelfleet", *args]


def start(name: str, args: list[str], logdir: Path, env: dict[str, str] | None = None) -> Process:
    """Start ``args`` with output to ``logdir/NAME.log`` (environment: ``env`` or ours)."""
    log = logdir / f"{name}.log"
    fh = open(log, "wb")  # noqa: SIM115 - the child owns it for its whole life
    child_env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=child_env)
    return Process(name, popen, log)


def infer(agent: Agent, x: np.ndarray, key: str | None = None) -> tuple[str, int, list[float]]:
    """One OIP v2 JSON inference; returns (model_version, label, probabilities)."""
    body = {
        "inputs": [
            {"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    headers = {"modelfleet-routing-key": key} if key else {}
    r = httpx.post(f"{agent.url}/v2/models/{MODEL}/infer", json=body, headers=headers, timeout=10)
    r.raise_for_status()
    out = r.json()
    outputs = {o["name"]: o for o in out["outputs"]}
    return (
        str(out["model_version"]),
        int(outputs["label"]["data"][0]),
        [round(float(p), 3) for p in outputs["probabilities"]["data"]],
    )


def agent_status(agent: Agent) -> dict[str, Any]:
    control = orjson.loads((agent.state_dir / "control.json").read_bytes())
    r = httpx.get(
        f"http://127.0.0.1:{control['port']}/agent/status",
        headers={"Authorization": f"Bearer {control['token']}"},
        timeout=5,
    )
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def active_version(agent: Agent) -> int | None:
    slots = agent_status(agent).get("models", {}).get(MODEL) or {}
    active = slots.get("active")
    return int(active["version"]) if active else None


def is_live(agent: Agent) -> bool:
    return httpx.get(f"{agent.url}/v2/health/live", timeout=2).status_code == 200


def runs_version(agent: Agent, version: int) -> bool:
    return active_version(agent) == version


def make_data(seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n,
        n_features=10,
        n_informative=6,
        n_redundant=2,
        n_classes=3,
        random_state=seed,
    )
    return x.astype(np.float32), y


@contextmanager
def fleet_dir(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    tmp = Path(tempfile.mkdtemp(prefix="modelfleet-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_demo(workdir: Path | None = None, keep: bool = False) -> bool:
    """Run the story; return True only if every check passed."""
    story = Story()
    processes: list[Process] = []
    console.print(
        Panel.fit(
            "[bold]modelfleet demo[/]\n"
            "A hub and three edge devices on this machine. We register a model, sign it,\n"
            "roll it out, A/B-test a new version on one device, catch a tampered release\n"
            "and roll back, read each version's telemetry at the hub, stop a staged rollout by\n"
            "its gate, flag a drifting sensor without labels and feed an air-gapped site by USB\n"
            "stick — all on real TUF metadata, real ONNX Runtime, real HTTP.",
            border_style="cyan",
        )
    )
    with fleet_dir(workdir) as root:
        try:
            _story(story, root, processes, keep_logs=workdir is not None)
        except Exception as e:  # the demo reports, it never dumps a traceback
            story.check(False, f"the demo stopped unexpectedly: {type(e).__name__}: {e}")
            for p in processes:
                console.print(f"[dim]--- last lines of {p.name} ({p.log}) ---\n{p.tail()}[/]")
        finally:
            if not keep:
                for p in reversed(processes):
                    p.stop()
    console.print()
    if story.failures:
        console.print(
            Panel.fit(
                "[red bold]The demo found problems:[/]\n" + "\n".join(story.failures),
                border_style="red",
            )
        )
        return False
    console.print(
        Panel.fit(
            "[green bold]Every step did what it claimed.[/]\n"
            "Next: read the README walkthrough to run the same steps by hand.",
            border_style="green",
        )
    )
    return True


def _story(story: Story, root: Path, processes: list[Process], keep_logs: bool) -> None:
    from modelfleet.client import HubClient
    from modelfleet.hub.service import init_home

    home = root / "hub"
    logs = root / "logs"
    logs.mkdir(exist_ok=True)

    # 1 ---------------------------------------------------------------------------------
    story.step(
        "create the hub",
        "`modelfleet init` makes a hub home: a SQLite catalog (migrated with Alembic), a\n"
        "content-addressed artefact store and ed25519 keys for two TUF repositories — the\n"
        "catalog (approved packages) and the director (which device runs what). The keys\n"
        "are encrypted at rest with a passphrase the hub reads from a 0600 file\n"
        "(MODELFLEET_KEY_PASSPHRASE_FILE).",
    )
    passphrase = root / "key-passphrase"
    create_secret_once(passphrase, secrets.token_urlsafe(24).encode(), "key passphrase")
    # Every process of the demo (hub, CLI) inherits it; nothing else reads the keys.
    os.environ["MODELFLEET_KEY_PASSPHRASE_FILE"] = str(passphrase)
    admin_token = init_home(home, key_passphrase=passphrase.read_bytes())
    story.check((home / "trust-root.json").is_file(), f"hub home created in {home}")
    story.check(
        (home / "admin.token").stat().st_mode & 0o777 == 0o600,
        "admin token written to admin.token with mode 0600",
    )
    hub_port = free_port()
    hub_url = f"http://127.0.0.1:{hub_port}"
    processes.append(
        start(
            "hub",
            modelfleet_cmd(
                "hub",
                "serve",
                "--home",
                str(home),
                "--port",
                str(hub_port),
                "--controller-interval-s",
                "0.5",
            ),
            logs,
        )
    )
    hub = HubClient(hub_url, admin_token)
    up = wait_until(lambda: bool(hub.health()), timeout=60)
    if not story.check(up, f"hub serving its REST API and TUF repositories on {hub_url}"):
        raise RuntimeError("hub did not start")

    # 2 ---------------------------------------------------------------------------------
    story.step(
        "enroll three devices and start their agents",
        "Each device gets its own token. Its agent pins the hub's TUF roots (trust-root.json),\n"
        "polls the director, and serves the Open Inference Protocol v2 on its own port.",
    )
    agents: list[Agent] = []
    for device_id, site in DEVICES:
        enrolled = hub.add_device(device_id, site=site, tags=["demo"])
        agent = Agent(device_id, site, enrolled["token"], free_port(), root / "devices" / device_id)
        agent.process = start(
            f"agent-{device_id}",
            modelfleet_cmd(
                "agent",
                "run",
                "--hub",
                hub_url,
                "--device-id",
                device_id,
                "--state-dir",
                str(agent.state_dir),
                "--port",
                str(agent.port),
                "--poll-interval",
                "0.5",
                "--trust-root",
                str(home / "trust-root.json"),
                "--telemetry-window-s",
                str(TELEMETRY_WINDOW_S),
            ),
            logs,
            # the device token by environment, not on the command line (visible in `ps`)
            env={**os.environ, "MODELFLEET_DEVICE_TOKEN": agent.token},
        )
        processes.append(agent.process)
        agents.append(agent)
    for agent in agents:
        live = wait_until(functools.partial(is_live, agent), timeout=60)
        story.check(live, f"agent {agent.device_id} ({agent.site}) live on {agent.url}")

    # 3 ---------------------------------------------------------------------------------
    story.step(
        "register version 1",
        "A scikit-learn logistic regression trained on generated sensor data is converted to\n"
        "ONNX. The hub checks that ONNX Runtime loads it, reads its schema, and records smoke\n"
        "vectors: fixed inputs and the outputs every device must reproduce before serving it.",
    )
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = make_data(seed=0)
    v1_model = LogisticRegression(max_iter=1000).fit(x, y)
    v1 = hub.register_version(MODEL, v1_model, sample_input=x[:8])
    story.check(v1["version"] == 1, f"{MODEL} v1 registered, sha256 {v1['sha256'][:16]}…")
    schema = v1.get("schema") or {}
    story.say(
        "schema: "
        + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in schema.get("inputs", []))
        + " → "
        + ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in schema.get("outputs", []))
    )

    # 4 ---------------------------------------------------------------------------------
    story.step(
        "roll v1 out to every device",
        "`deploy` signs the package into the TUF catalog and each device's desired state into\n"
        "the director. Agents verify both with python-tuf, check the hashes agree, replay the\n"
        "smoke vectors, then switch their active slot atomically.",
    )
    hub.deploy(MODEL, 1, all_devices=True, mode="full")
    for agent in agents:
        ok = wait_until(functools.partial(runs_version, agent, 1), timeout=60)
        story.check(ok, f"{agent.device_id} verified, smoke-tested and activated v1")
    sample = x[100:101]
    t = Table("device", "model_version", "label", "probabilities", title="One inference per device")
    versions = set()
    for agent in agents:
        version, label, probs = infer(agent, sample)
        versions.add(version)
        t.add_row(agent.device_id, version, str(label), str(probs))
    console.print(t)
    story.check(versions == {"1"}, "every device answers with model_version 1")

    # 5 ---------------------------------------------------------------------------------
    story.step(
        "A/B test v2 on one device",
        "v2 (gradient boosting) goes to press-01 only, in split mode: half of the callers,\n"
        "chosen by a sticky routing key, are answered by v2. The rest of the fleet stays on v1.",
    )
    v2_model = GradientBoostingClassifier(n_estimators=40, random_state=0).fit(x, y)
    v2 = hub.register_version(MODEL, v2_model, sample_input=x[:8])
    story.check(v2["version"] == 2, f"{MODEL} v2 registered")
    canary = agents[0]
    hub.deploy(MODEL, 2, devices=[canary.device_id], mode="split", share=0.5)

    def has_candidate() -> bool:
        slots = agent_status(canary)["models"][MODEL]
        return bool(slots.get("candidate")) and slots["candidate"]["version"] == 2

    story.check(wait_until(has_candidate, timeout=60), f"{canary.device_id} loaded v2 as candidate")
    counts: Counter[str] = Counter()
    xs, _ = make_data(seed=1, n=200)
    for i in range(200):
        version, _, _ = infer(canary, xs[i : i + 1], key=f"caller-{i}")
        counts[version] += 1
    story.say(
        f"200 callers with distinct routing keys: v1 answered {counts['1']}, "
        f"v2 answered {counts['2']}"
    )
    story.check(counts["1"] > 50 and counts["2"] > 50, "both versions answer on the canary device")
    sticky = {infer(canary, xs[0:1], key="caller-7")[0] for _ in range(20)}
    story.check(
        len(sticky) == 1, f"a caller's routing key always reaches one version (v{sticky.pop()})"
    )
    others = {infer(a, sample)[0] for a in agents[1:]}
    story.check(others == {"1"}, "the other devices still serve v1 only")

    # 6 ---------------------------------------------------------------------------------
    story.step(
        "promote v2 on the canary",
        "v2 becomes production on press-01. v1 moves to the previous slot and stays loaded,\n"
        "so going back needs no download.",
    )
    hub.deploy(MODEL, 2, devices=[canary.device_id], mode="full")
    story.check(
        wait_until(lambda: active_version(canary) == 2 and not has_candidate(), timeout=60),
        f"{canary.device_id} serves v2, previous slot holds v1",
    )
    story.check(infer(canary, sample)[0] == "2", "inference answered by v2")

    # 7 ---------------------------------------------------------------------------------
    story.step(
        "a tampered release is refused",
        "v3 is registered — its digest recorded and later signed — but its file on the hub is\n"
        "altered, as a compromised store or mirror would. The device downloads it, TUF finds\n"
        "the hash does not match the signed catalog, and the device refuses it while it\n"
        "keeps serving v2.",
    )
    v3_model = LogisticRegression(max_iter=1000, C=0.05).fit(x, y)
    v3 = hub.register_version(MODEL, v3_model, sample_input=x[:8])
    blob = home / "artefacts" / "sha256" / v3["sha256"][:2] / v3["sha256"]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    story.say(f"flipped one byte of {blob.relative_to(root)} after registration")
    hub.deploy(MODEL, 3, devices=[canary.device_id], mode="full")

    def refused_v3() -> bool:
        refusal = agent_status(canary).get("last_refusal") or {}
        return refusal.get("version") == 3

    story.check(wait_until(refused_v3, timeout=60), f"{canary.device_id} refused v3")
    refusal = agent_status(canary)["last_refusal"]
    story.say(f"[red]reason:[/] {refusal['reason']}")
    story.check(infer(canary, sample)[0] == "2", f"{canary.device_id} keeps serving v2")

    # 8 ---------------------------------------------------------------------------------
    story.step(
        "roll back on the device",
        "An operator on site runs `modelfleet agent rollback`. The agent switches to the\n"
        "previous model it kept warm — no hub, no download.",
    )
    started = time.perf_counter()
    result = subprocess.run(
        modelfleet_cmd(
            "agent", "rollback", "--state-dir", str(canary.state_dir), "--reason", "demo"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in result.stdout.strip().splitlines():
        story.say(line)
    version_after = infer(canary, sample)[0]
    elapsed_ms = (time.perf_counter() - started) * 1000
    story.check(result.returncode == 0, "`modelfleet agent rollback` succeeded")
    story.check(
        version_after == "1",
        f"{canary.device_id} answers with v1 again ({elapsed_ms:.0f} ms including the CLI start)",
    )

    # 9 ---------------------------------------------------------------------------------
    _telemetry_step(story, hub, canary)
    _rollout_step(story, hub, hub_url, admin_token)
    _drift_step(story, hub, agents[-1], root)
    _offline_site_step(story, hub, home, root, logs, processes, hub_url, admin_token)

    # summary ---------------------------------------------------------------------------
    console.print()
    t = Table("device", "site", "active", "previous", "last refusal", title="Fleet at the end")
    for agent in agents:
        st = agent_status(agent)
        slots = st["models"].get(MODEL, {})
        ref = st.get("last_refusal")
        t.add_row(
            agent.device_id,
            agent.site,
            f"v{slots['active']['version']}" if slots.get("active") else "-",
            f"v{slots['previous']['version']}" if slots.get("previous") else "-",
            f"v{ref['version']}: {ref['kind']}" if ref else "-",
        )
    console.print(t)
    if keep_logs:
        console.print(f"[dim]Logs of the hub and agents: {logs}[/]")


SIM_DEVICES = 100
"""Simulated devices of the plant in step 10."""


def _rollout_step(story: Story, hub: Any, hub_url: str, admin_token: str) -> None:
    """Step 10: a staged rollout to a simulated plant, stopped in its canary stage by its gate."""
    from sklearn.linear_model import LogisticRegression

    from modelfleet.sim.faults import parse_faults
    from modelfleet.sim.fleet import FleetSimulator, SimConfig
    from modelfleet.sim.traffic import Traffic

    story.step(
        "a staged rollout stopped by its gate",
        f"plant-c has {SIM_DEVICES} devices, simulated in this process by `modelfleet sim`: each\n"
        "one checks in, verifies its own director metadata with TUF, applies its desired state\n"
        "and sends telemetry windows (its inferences are simulated). v4 is rolled out to\n"
        "plant-c in stages (5 %, then 100 %); at plant-c v4 fails 30 % of its requests. The\n"
        "controller compares the canary's error rate with the devices still on v2 and, after two\n"
        "bad evaluations in a row, rolls every canary device back to its pinned previous version.",
    )
    x, y = make_data(seed=4)
    v4 = hub.register_version(MODEL, LogisticRegression(max_iter=1000, C=0.5).fit(x, y),
                              sample_input=x[:8])  # fmt: skip
    config = SimConfig(
        hub_url=hub_url, token=admin_token, devices=SIM_DEVICES, prefix="plant-c",
        site="plant-c", poll_s=1.0, window_s=TELEMETRY_WINDOW_S, traffic=Traffic(rps=50),
        faults=tuple(parse_faults([f"version={v4['version']}:error_rate=0.3"])),
    )  # fmt: skip
    with FleetSimulator(config) as sim:
        sim.enrol()
        ids = [d.device_id for d in sim.devices]
        hub.deploy(MODEL, 2, devices=ids, mode="full")
        sim.run_for(60, until=lambda: sim.serving() == {MODEL: {"v2": SIM_DEVICES}})
        story.check(
            sim.serving() == {MODEL: {"v2": SIM_DEVICES}},
            f"all {SIM_DEVICES} plant-c devices run v2 (verified through their own director)",
        )
        sim.run_for(2 * TELEMETRY_WINDOW_S + 1)  # the control group's windows
        rollout = hub.create_rollout(
            {
                "model": MODEL,
                "version": v4["version"],
                "target": {"sites": ["plant-c"]},
                "stages": [
                    {"name": "canary", "percent": 5, "soak": "2m"},
                    {"name": "full", "percent": 100, "soak": 0},
                ],
                "gates": [
                    {"metric": "error_rate", "max_delta": 0.05, "min_devices": 3,
                     "min_samples": 200, "consecutive": 2},
                    {"metric": "guard_rollbacks", "max": 0},
                ],
                "on_failure": "rollback",
            }
        )  # fmt: skip
        rid = rollout["id"]
        story.say(f"rollout {rid}: v{v4['version']} to plant-c, canary 5 %, then 100 %")
        peak: set[str] = set()
        bad = int(v4["version"])

        def ended() -> bool:
            peak.update(d.device_id for d in sim.devices if d.serving().get(MODEL) == (bad, None))
            return str(hub.get_rollout(rid)["state"]) in ("rolled_back", "completed", "paused")

        sim.run_for(120, until=ended)
        view = hub.get_rollout(rid)
        story.check(
            view["state"] == "rolled_back", f"the rollout ended {view['state']}: {view['reason']}"
        )
        t = Table("gate", "canary", "control (v2)", "limit", "devices", "samples", "verdict",
                  title=f"{rid}: the evaluation that stopped it")  # fmt: skip
        for g in view["gates"]:
            t.add_row(*(_fmt(g.get(k)) for k in ("metric", "value", "control", "limit")),
                      str(g["devices"]), str(g["samples"]), str(g["verdict"]))  # fmt: skip
        console.print(t)
        sim.run_for(30, until=lambda: sim.serving() == {MODEL: {"v2": SIM_DEVICES}})
        story.check(
            0 < len(peak) <= SIM_DEVICES // 10 and sim.serving() == {MODEL: {"v2": SIM_DEVICES}},
            f"v4 reached only the {len(peak)} canary devices; all {SIM_DEVICES} run v2 again",
        )
    steps = [e["action"] for e in hub.audit_page(subject=rid, limit=50)["entries"]][::-1]
    story.say("audit log: " + " → ".join(steps))


DRIFT_ROWS = 1200
"""Rows the drifting device serves in step 11 (the hub needs 200 per column for a verdict)."""


def _drift_step(story: Story, hub: Any, device: Agent, root: Path) -> None:
    """Step 11: a version registered with reference rows is rolled out to one site with a
    drift gate; the device's inputs shift; the gate fails on the device's drift counts and
    the rollout rolls back; the hub's report names exactly the shifted column."""
    from sklearn.linear_model import LogisticRegression

    story.step(
        "a drifting version held by its drift gate",
        "v5 is registered with reference rows: the hub's CLI bins every input and output at\n"
        f"reference quantiles and signs the profile into the package. It is rolled out to\n"
        f"{device.site} with a drift_score gate. On {device.device_id} a sensor drifts: "
        "feature x3 reads\n1.5 units high. The agent counts what it serves into the profile's "
        "bins in every\ntelemetry window; the hub merges the counts exactly, tests each column "
        "(PSI, KS, ...)\nwith a false-alarm control across columns, and the gate reads the "
        "result. No labels.",
    )
    data, labels = make_data(seed=5, n=2000 + DRIFT_ROWS)  # one distribution, split in two
    x, y, served = data[:2000], labels[:2000], data[2000:].copy()
    reference = root / "reference.npy"
    np.save(reference, x)
    v5 = hub.register_version(
        MODEL, LogisticRegression(max_iter=1000).fit(x, y), sample_input=x[:8], reference=reference
    )
    version = int(v5["version"])
    before = active_version(device)
    rollout = hub.create_rollout(
        {
            "model": MODEL,
            "version": version,
            "target": {"sites": [device.site]},
            "stages": [{"name": device.site, "percent": 100, "soak": "10m"}],
            "gates": [{"metric": "drift_score", "max": 0.2, "min_samples": 400,
                       "consecutive": 2}],
            "on_failure": "rollback",
        }
    )  # fmt: skip
    rid = rollout["id"]
    story.check(
        wait_until(functools.partial(runs_version, device, version), timeout=60),
        f"rollout {rid}: {device.device_id} verified and serves v{version}",
    )
    served[:, 3] += 1.5

    def report() -> dict[str, Any]:
        got: dict[str, Any] = hub.drift_report(MODEL, version=str(version), site=device.site)
        return got

    def ended() -> bool:
        return str(hub.get_rollout(rid)["state"]) in ("rolled_back", "completed", "paused")

    def evaluated_bad() -> bool:
        view = hub.get_rollout(rid)
        return "1 of 2 in a row" in str(view["reason"]) or ended()

    half = DRIFT_ROWS // 2
    # Two bursts, two windows, two evaluations: the second burst waits until the controller
    # has evaluated the first (a new evaluation needs new inputs; on a slow machine both
    # bursts could otherwise land before one evaluation and the streak would stop at 1).
    for part, evaluated in ((served[:half], evaluated_bad), (served[half:], ended)):
        target = report()["rows"] + len(part)
        for start_row in range(0, len(part), 100):
            infer(device, part[start_row : start_row + 100])
        wait_until(functools.partial(_has_rows, report, target), timeout=30, interval=0.3)
        wait_until(evaluated, timeout=60, interval=0.3)
    view = hub.get_rollout(rid)
    story.check(
        view["state"] == "rolled_back", f"the rollout ended {view['state']}: {view['reason']}"
    )
    story.check(
        wait_until(lambda: active_version(device) == before, timeout=60),
        f"{device.device_id} is back on v{before}, the version it ran before (no download)",
    )
    drift = report()
    t = Table("column", "verdict", "PSI", "p (adjusted)",
              title=f"v{version} at {device.site}: the drift report")  # fmt: skip
    for f in drift["inputs"]:
        psi = f.get("psi")
        t.add_row(
            str(f["feature"]),
            str(f["verdict"]),
            "-" if psi is None else f"{psi:.3f}",
            _fmt(f.get("adjusted_p")),
        )
    console.print(t)
    drifted = sorted(str(f["feature"]) for f in drift["inputs"] if f["verdict"] == "drift")
    story.check(
        drift["verdict"] == "drift" and drifted == ["x3"],
        f"drift flagged on {', '.join(drifted) or 'no column'} only "
        f"(score {_fmt(drift['score'])}, {drift['rows']} rows from the device's counts)",
    )


def _cli_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``modelfleet ARGS --json``; its JSON answer (ModelfleetError with its stderr)."""
    r = subprocess.run(
        modelfleet_cmd(*args, "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if r.returncode != 0:
        raise ModelfleetError(f"modelfleet {args[0]} {args[1]}: {r.stderr.strip()}")
    answer: dict[str, Any] = orjson.loads(r.stdout)
    return answer


def _offline_site_step(
    story: Story,
    hub: Any,
    home: Path,
    root: Path,
    logs: Path,
    processes: list[Process],
    hub_url: str,
    admin_token: str,
) -> None:
    """Step 12: a site with no route to the hub runs on a USB stick and reports back on one."""
    story.step(
        "an air-gapped site fed by a USB stick",
        "vault-01 sits at a site with no network route to the hub. At the hub, `bundle export`\n"
        "records the TUF metadata and artefacts the site's devices need into one file, encrypted\n"
        "to the site's age key. At the site, `bundle import` decrypts it and verifies every\n"
        "signature and hash with the device's own TUF client before it writes anything; the\n"
        "agent updates from that folder with the same checks as over HTTPS. Its telemetry\n"
        "windows stay buffered and go back to the hub in a signed return bundle.",
    )
    site, device = "vault", "vault-01"
    vault, stick = root / "vault", root / "stick"
    vault.mkdir()
    stick.mkdir()
    env = {"MODELFLEET_HUB": hub_url, "MODELFLEET_TOKEN": admin_token}
    enrolled = hub.add_device(device, site=site, tags=["air-gapped"])
    hub.deploy(MODEL, 2, devices=[device], mode="full")
    agent = Agent(device, site, enrolled["token"], free_port(), vault / "agent")
    pem = vault / "device.pem"
    _cli_json("agent", "key", "--state-dir", str(agent.state_dir), "--out", str(pem))
    _cli_json("device", "key", device, "--public-key", str(pem), "--home", str(home))
    key = _cli_json("bundle", "site-key", "--out", str(vault / "site.key"))
    made = _cli_json("bundle", "export", "--site", site, "--out", str(stick / "vault.mfb"),
                     "--recipient", str(key["public_key"]), env=env)  # fmt: skip
    story.check(
        bool(made["encrypted"]),
        f"exported {made['files']} files for {len(made['devices'])} device(s) into "
        f"{made['bytes'] / 1024:.0f} KiB, encrypted to the site's key",
    )
    updates = vault / "updates"
    imported = _cli_json("bundle", "import", str(stick / "vault.mfb"), "--site", site,
                         "--folder", str(updates), "--trust-root", str(home / "trust-root.json"),
                         "--identity", str(vault / "site.key"))  # fmt: skip
    story.check(
        imported["devices"].get(device) is not None,
        f"imported at the site after checking every signature and hash "
        f"({imported['files_written']} files written)",
    )
    nowhere = f"http://127.0.0.1:{free_port()}"  # the hub's address leads nowhere from the site
    agent.process = start(f"agent-{device}", modelfleet_cmd(
        "agent", "run", "--hub", nowhere, "--device-id", device, "--token", agent.token,
        "--state-dir", str(agent.state_dir), "--port", str(agent.port), "--poll-interval", "0.5",
        "--trust-root", str(home / "trust-root.json"), "--from-folder", str(updates),
        "--telemetry-window-s", str(TELEMETRY_WINDOW_S),
    ), logs)  # fmt: skip
    processes.append(agent.process)
    story.check(
        wait_until(functools.partial(runs_version, agent, 2), timeout=90),
        f"{device} verified v2 from the folder and serves it, with no route to the hub",
    )
    x, _ = make_data(seed=7, n=200)
    for i in range(0, 200, 20):
        infer(agent, x[i : i + 20])

    def buffered() -> bool:
        from modelfleet.agent.telemetry import BUFFER_FILE
        from modelfleet.telemetry.buffer import read_stats

        stats = read_stats(agent.state_dir / BUFFER_FILE)
        return stats is not None and int(stats["records"]) >= 2

    wait_until(buffered, timeout=30, interval=0.3)
    agent.process.stop()
    back = stick / "vault-return.mfr"
    report = _cli_json("bundle", "report", "--agent-state", str(agent.state_dir), "--site",
                       site, "--out", str(back))  # fmt: skip
    records = sum(int(d["records"]) for d in report["devices"])
    first = _cli_json("bundle", "ingest", str(back), "--home", str(home))
    again = _cli_json("bundle", "ingest", str(back), "--home", str(home))
    story.check(
        records > 0 and first["stored"] == records and again["status"] == "already_ingested",
        f"the return bundle brought {records} telemetry records to the hub, stored exactly once "
        "(ingested twice, changed once)",
    )


def _has_rows(report: Callable[[], dict[str, Any]], rows: int) -> bool:
    return int(report()["rows"]) >= rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _telemetry_step(story: Story, hub: Any, canary: Agent) -> None:
    """Step 9: the canary's telemetry windows, as the hub merged them per version."""
    story.step(
        "telemetry reached the hub",
        f"Every {TELEMETRY_WINDOW_S} s each agent closes a telemetry window per model version\n"
        "(requests by outcome, latency and confidence histograms, shadow and guard counts),\n"
        "writes it to a local SQLite write-ahead buffer, and forwards it; the hub stores each\n"
        "window exactly once and merges the histograms exactly. The rollout gates read this.",
    )

    def summary(version: str) -> dict[str, Any]:
        got: dict[str, Any] = hub.telemetry_summary(
            model=MODEL, version=version, device_id=canary.device_id
        )
        return got

    def arrived() -> bool:
        return all(summary(v)["requests"]["ok"] > 0 for v in ("1", "2"))

    story.check(
        wait_until(arrived, timeout=60, interval=0.5),
        f"the hub holds {canary.device_id}'s windows for v1 and v2",
    )
    t = Table(
        "version", "windows", "requests ok", "errors", "p50 ms", "p99 ms",
        title=f"{MODEL} on {canary.device_id}, as the hub merged it",
    )  # fmt: skip
    for version in ("1", "2"):
        s = summary(version)
        req = s["requests"]
        errors = req["client_error"] + req["server_error"] + req["timeout"]
        p50, p99 = s.get("latency_p50_s"), s.get("latency_p99_s")
        t.add_row(
            f"v{version}",
            str(s["windows"]),
            str(req["ok"]),
            str(errors),
            "-" if p50 is None else f"{p50 * 1000:.2f}",
            "-" if p99 is None else f"{p99 * 1000:.2f}",
        )
    console.print(t)
    device = hub.get_device(canary.device_id)
    telemetry = device.get("telemetry") or {}
    story.say(
        f"{canary.device_id}: {telemetry.get('buffered', 0)} records waiting in its buffer, "
        f"clock skew {telemetry.get('clock_skew_s') or 0:.2f} s"
    )
