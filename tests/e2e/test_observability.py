"""Issue 7 across real processes: Prometheus scrapes a real hub and agent, JSON logs, OTLP.

A real ``prometheus`` (Debian's package; skips locally without it, fails under CI) runs with a
generated config in a temporary folder on loopback and scrapes a real ``modelfleet hub serve``
and a real enrolled ``modelfleet agent run``; its HTTP API must show both targets up and the
agent's request counter after a few inferences, and every expression of the shipped
dashboards and alert rules must evaluate there.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelfleet.demo import free_port
from tests.e2e.conftest import Hub, Proc, cli, start_agent, wait_for
from tests.helpers import logistic_onnx
from tests.observability.test_deploy import alert_rules, dashboard_targets, grafana_to_promql
from tests.prom import prometheus_binary, promtool_check_metrics

pytestmark = pytest.mark.e2e

BODY = {"inputs": [{"name": "X", "shape": [1, 10], "datatype": "FP32", "data": [0.1] * 10}]}


def deploy_model(hub: Hub, tmp_path: Path, agent_url: str) -> None:
    """Register and deploy model ``m`` v1 to every device; wait until the agent serves it."""
    path = tmp_path / "m.onnx"
    path.write_bytes(logistic_onnx()[0])
    registered = cli("model", "register", "m", str(path), "--json", env=hub.env())
    assert registered.returncode == 0, registered.stderr
    deployed = cli("deploy", "m", "1", "--all", env=hub.env())
    assert deployed.returncode == 0, deployed.stderr
    infer = f"{agent_url}/v2/models/m/infer"
    assert wait_for(lambda: httpx.post(infer, json=BODY).status_code == 200)


class Prometheus:
    """A real Prometheus on 127.0.0.1 with its HTTP query API."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def query(self, expr: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        doc: dict[str, Any] = r.json()
        return doc

    def vector(self, expr: str) -> list[dict[str, Any]]:
        doc = self.query(expr)
        assert doc["status"] == "success", doc
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Prometheus]]:
    started: list[Prometheus] = []

    def _start(targets: dict[str, str]) -> Prometheus:
        binary = prometheus_binary()
        folder = tmp_path / "prometheus"
        folder.mkdir()
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = folder / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.console.templates=" + str(folder),
                    "--web.console.libraries=" + str(folder),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        started.append(prom)
        ready = wait_for(lambda: httpx.get(f"{prom.url}/-/ready").status_code == 200, 60)
        assert ready, log.read_text(errors="replace")[-3000:]
        return prom

    yield _start
    for prom in started:
        prom.proc.terminate()
        try:
            prom.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            prom.proc.kill()
            prom.proc.wait(timeout=5)


def test_a_real_prometheus_scrapes_the_hub_and_an_agent_and_the_dashboards_evaluate(
    hub: Hub,
    spawn: Callable[..., Proc],
    tmp_path: Path,
    prometheus: Callable[[dict[str, str]], Prometheus],
) -> None:
    agent_url, _, agent = start_agent(hub, spawn, tmp_path, "press-01")
    deploy_model(hub, tmp_path, agent_url)
    with httpx.Client() as client:
        for _ in range(5):
            assert client.post(f"{agent_url}/v2/models/m/infer", json=BODY).status_code == 200

    # The expositions Prometheus will read pass promtool's parser and linter.
    for url in (hub.url, agent_url):
        r = httpx.get(f"{url}/metrics", timeout=10)
        assert r.status_code == 200, (url, r.text[:300])
        promtool_check_metrics(r.content)

    prom = prometheus(
        {"hub": hub.url.removeprefix("http://"), "agent": agent_url.removeprefix("http://")}
    )

    def scraped() -> bool:
        up = {s["metric"]["job"]: s["value"][1] for s in prom.vector("up")}
        requests = prom.vector('sum(modelfleet_agent_requests_total{job="agent"})')
        served = float(requests[0]["value"][1]) if requests else 0.0
        return up == {"hub": "1", "agent": "1"} and served >= 5  # + deploy_model's own

    assert wait_for(scraped, 60), (
        prom.vector("up"),
        prom.log.read_text(errors="replace")[-2000:],
        agent.output()[-2000:],
    )
    hub_series = prom.vector('{job="hub", __name__=~"modelfleet_hub_.+"}')
    assert {s["metric"]["__name__"] for s in hub_series} >= {
        "modelfleet_hub_checkins_total",
        "modelfleet_hub_devices",
    }

    # Every shipped expression evaluates against the real series (no parse or type error).
    exprs = [grafana_to_promql(e) for _, _, e in dashboard_targets()]
    exprs += [r["expr"] for r in alert_rules()]
    failed = [(e, d) for e in exprs if (d := prom.query(e))["status"] != "success"]
    assert not failed, failed
    panel = grafana_to_promql(
        next(e for _, title, e in dashboard_targets() if title == "Requests by version and outcome")
    )
    # A rate needs two scrapes of the counter after the requests: wait for them.
    assert wait_for(lambda: bool(prom.vector(panel)), 30), (
        "the model dashboard's request panel shows the agent's requests"
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n--- whole output ---\n{text[-3000:]}")
    return parsed


def test_agent_with_json_logs_writes_only_json_lines_each_with_its_device_id(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    agent_url, _, agent = start_agent(hub, spawn, tmp_path, "press-02", "--log-format", "json")
    deploy_model(hub, tmp_path, agent_url)
    assert wait_for(lambda: "installed m v1" in agent.output())
    agent.stop()
    lines = json_lines(agent.output())
    assert lines and all(line["device_id"] == "press-02" for line in lines)
    assert all({"ts", "level", "logger", "msg", "model", "version", "rollout_id"} <= set(line)
               for line in lines)  # fmt: skip
    installed = next(line for line in lines if line["msg"].startswith("installed m v1"))
    assert (installed["model"], installed["version"]) == ("m", "1")
    assert any("--token is visible" in line["msg"] for line in lines)  # the CLI's warning too


def test_hub_with_json_logs_formats_uvicorn_access_lines_as_json(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    home = tmp_path / "hub-json"
    assert cli("init", str(home)).returncode == 0
    port = free_port()
    proc = spawn("hub-json", "hub", "serve", "--home", str(home), "--port", str(port),
                 "--log-format", "json", "--access-log")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: httpx.get(f"{url}/api/v1/health").status_code == 200), proc.output()
    assert wait_for(lambda: "/api/v1/health" in proc.output())
    proc.stop()
    lines = json_lines(proc.output())
    assert all(line["service"] == "hub" for line in lines)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any("GET /api/v1/health" in line["msg"] for line in access), lines


def test_agent_traces_every_candidate_request_and_exports_metrics_over_otlp(
    hub: Hub, spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")
    from tests.observability.otlp_receiver import Received, otlp_receiver

    with otlp_receiver() as received:
        agent_url, _, agent = start_agent(
            hub, spawn, tmp_path, "press-03",
            "--otlp-endpoint", received.url, "--otlp-interval", "1", "--trace-sample", "0",
        )  # fmt: skip
        deploy_model(hub, tmp_path, agent_url)
        answered: list[str] = []  # the version of every answer, candidate ones traced

        def infer(client: httpx.Client, key: str) -> str:
            r = client.post(
                f"{agent_url}/v2/models/m/infer", json=BODY, headers={"modelfleet-routing-key": key}
            )
            assert r.status_code == 200, r.text
            answered.append(r.headers["modelfleet-version"])
            return answered[-1]

        path = tmp_path / "m2.onnx"
        path.write_bytes(logistic_onnx(seed=1)[0])
        assert cli("model", "register", "m", str(path), env=hub.env()).returncode == 0
        split = cli("deploy", "m", "2", "--all", "--mode", "split", "--share", "0.5", env=hub.env())
        assert split.returncode == 0, split.stderr
        with httpx.Client() as client:
            assert wait_for(lambda: infer(client, f"k{len(answered)}") == "2")
            for i in range(20):
                infer(client, f"caller-{i}")
        candidates = answered.count("2")
        assert 0 < candidates < len(answered)

        def traced(r: Received) -> bool:
            return sum(s.name == "infer" for s in r.spans) >= candidates

        assert received.wait(traced, 30), (received.paths, agent.output()[-2000:])
        with received.lock:
            spans = list(received.spans)
        roots = [s for s in spans if s.name == "infer"]
        assert len(roots) == candidates  # every candidate request, and (share 0) no other
        assert {(s.attributes["role"], s.attributes["version"]) for s in roots} == {
            ("candidate", "2")
        }
        for root in roots:
            children = sorted(s.name for s in spans if s.parent_span_id == root.span_id)
            assert children == ["decode", "encode", "inference"]
            assert root.resource["service.instance.id"] == "press-03"

        def counted(r: Received) -> bool:
            points = r.metrics.get("modelfleet_agent_requests", [])
            return sum(v for a, v in points if a.get("outcome") == "success") >= len(answered)

        assert received.wait(counted, 30), (received.metrics.keys(), agent.output()[-2000:])
        agent.stop()
