"""A real ``hub serve`` process per test module, with model ``m`` versions 1 to 3
registered, for the simulated fleets to talk to."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from modelfleet.client import HubClient
from modelfleet.clock import Clock, ManualClock
from modelfleet.demo import Process, free_port, modelfleet_cmd, start
from modelfleet.sim import FleetSimulator, SimConfig
from tests.helpers import logistic_onnx

#: Device time far from any window, for summaries over everything a test sent.
EVER = {"since": "2000-01-01T00:00:00+00:00", "until": "2100-01-01T00:00:00+00:00"}


@dataclass
class Hub:
    home: Path
    url: str
    token: str
    proc: Process
    client: HubClient

    def summary(self, **query: str) -> dict:  # type: ignore[type-arg]
        return self.client.telemetry_summary(**{**EVER, **query})

    def director_metadata(self) -> Path:
        (path,) = self.home.glob("tuf/director/**/timestamp.json")
        return path.parent


def start_hub(tmp: Path, *args: str, clock: str = "") -> Hub:
    """Init a hub home in ``tmp``, serve it (``clock``: a ``MODELFLEET_SIM_CLOCK`` spec),
    register ``m`` v1..v3."""
    from modelfleet.hub.service import init_home

    home = tmp / "hub"
    token = init_home(home)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    if clock:
        env["MODELFLEET_SIM_CLOCK"] = clock
    cmd = modelfleet_cmd("hub", "serve", "--home", str(home), "--port", str(port), *args)
    proc = start("hub", cmd, tmp, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/v1/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.1)
    client = HubClient(url, token)
    for seed in (0, 1, 2):
        model, x = logistic_onnx(seed)
        client.register_version("m", model, x[:5])
    return Hub(home, url, token, proc, client)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    running = start_hub(tmp_path_factory.mktemp("simhub"))
    yield running
    running.client.close()
    running.proc.stop()


def make_sim(
    hub: Hub, prefix: str, devices: int, clock: Clock | None = None, **kwargs: object
) -> FleetSimulator:
    """An enrolled fleet, on virtual time (a manual clock started now) unless ``clock``."""
    config = SimConfig(hub_url=hub.url, token=hub.token, devices=devices, prefix=prefix,
                       **kwargs)  # type: ignore[arg-type]  # fmt: skip
    sim = FleetSimulator(config, clock or ManualClock(datetime.now(UTC)))
    sim.enrol()
    return sim
