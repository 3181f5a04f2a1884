"""Orchestrates the serving benchmark: model, in-process timings, servers, wrk, results.

Servers (all on 127.0.0.1, all started before the first measurement and stopped in a
``finally``): the agent app (uvicorn + httptools + uvloop), the same app on uvicorn's h11
parser (HTTP stack comparison), the naive hand-written server, and MLServer 1.7.1 with a
custom ONNX Runtime runtime, tuned and with defaults. Every server's answer is checked
against ONNX Runtime's before it is measured. Measurements are interleaved: for each repeat,
for each concurrency, every server in turn, so slow drift on a shared machine hits all alike.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.serving import (
    daemon_agent,
    granian_env,
    inproc,
    mlserver,
    processes,
    report,
    wrk,
)
from benchmarks.serving.model import MODEL_NAME, BenchModel, make_model

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench-results"
MLSERVER_VENV = REPO / ".bench" / "mlserver-venv"
GRANIAN_PKGS = REPO / ".bench" / "granian-pkgs"
DOCS = REPO / "docs" / "benchmarks.md"

PROJECT_PACKAGES = (
    "onnxruntime",
    "numpy",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "h11",
    "orjson",
    "prometheus-client",
    "scikit-learn",
    "skl2onnx",
)


@dataclass
class Options:
    """What to run.

    Attributes:
        duration: seconds per wrk run.
        repeats: runs per server and concurrency (medians are reported).
        concurrency: wrk connection counts.
        warmup: seconds of wrk at c=8 per server before its first measurement.
        skip_mlserver: do not create, start or measure MLServer.
        mlserver_defaults: also measure MLServer with default settings.
        h11: also measure the agent app on uvicorn's h11 parser.
        granian: also measure the agent app on granian (installed under .bench/).
        inproc_calls: timed in-process calls per measurement.
        write_docs: replace the generated section of docs/benchmarks.md.
    """

    duration: int = 3
    repeats: int = 5
    concurrency: tuple[int, ...] = (1, 8, 64)
    warmup: int = 2
    skip_mlserver: bool = False
    mlserver_defaults: bool = True
    h11: bool = True
    granian: bool = True
    inproc_calls: int = 20_000
    write_docs: bool = True
    argv: list[str] = field(default_factory=list)


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_state() -> dict[str, Any]:
    """The commit measured, and the serving files that differ from it (work in progress)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "src/modelfleet/serving", "src/modelfleet/agent")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "uncommitted_serving_files": [line[3:] for line in changed.splitlines()],
    }


def machine_info(wrk_path: str) -> dict[str, Any]:
    """nproc, CPU model, kernel, Python, package versions, wrk version, load average."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": _versions(PROJECT_PACKAGES),
        "wrk": wrk.wrk_version(wrk_path),
        "loadavg_start": list(os.getloadavg()),
        "git": _git_state(),
    }


def _check_answer(server: processes.Server, bench: BenchModel) -> dict[str, Any]:
    """POST the benchmark body once; the label must equal ONNX Runtime's.

    Raises:
        RuntimeError: wrong status, shape of answer, or label.
    """
    request = urllib.request.Request(
        server.url, data=bench.body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status = response.status
        doc = json.loads(response.read())
    outputs = {o["name"]: o for o in doc.get("outputs", [])}
    if status != 200 or "label" not in outputs:
        raise RuntimeError(f"{server.key}: unexpected answer {status} {doc}")
    label = outputs["label"]["data"]
    label = label[0] if isinstance(label, list) else label
    proba = outputs.get("probabilities", {}).get("data")
    if int(label) != bench.label:
        raise RuntimeError(f"{server.key}: label {label}, ONNX Runtime says {bench.label}")
    if (
        proba is not None
        and max(abs(a - b) for a, b in zip(proba, bench.probabilities, strict=True)) > 1e-5
    ):
        raise RuntimeError(f"{server.key}: probabilities {proba} != {bench.probabilities}")
    return {"label": int(label), "probabilities": proba}


def _start_servers(
    opts: Options,
    bench: BenchModel,
    run_dir: Path,
    notes: list[str],
    companions: list[processes.Server],
) -> list[processes.Server]:
    servers: list[processes.Server] = []
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}  # this checkout
    infer_path = f"/v2/models/{MODEL_NAME}/infer"

    def ours(
        key: str,
        label: str,
        app: str,
        http: str,
        server: str = "uvicorn",
        env: dict[str, str] = env,
    ) -> None:
        port = processes.free_port()
        base = f"http://127.0.0.1:{port}"
        command = [
            python,
            "-m",
            "benchmarks.serving.serve",
            "--app",
            app,
            "--model",
            str(bench.path),
            "--port",
            str(port),
            "--server",
            server,
            "--http",
            http,
            "--loop",
            "uvloop",
        ]
        servers.append(
            processes.start(
                key,
                label,
                command,
                url=base + infer_path,
                ready_url=base + "/v2/health/ready",
                log=run_dir / f"{key}.log",
                cwd=REPO,
                env=env,
            )
        )

    # the agent as `modelfleet agent run` starts it, enrolled with a hub (issue 6)
    agent, hub = daemon_agent.start_enrolled_agent(bench.path, run_dir, env, REPO)
    companions.append(hub)
    servers.append(agent)
    ours(
        "agent_app",
        "modelfleet agent app on the benchmark's harness (agent/server.py)",
        "agent",
        "httptools",
    )
    if opts.h11:
        ours("agent_h11", "modelfleet agent app (uvicorn, h11, uvloop)", "agent", "h11")
    ours(
        "naive", "naive Starlette + orjson + ORT (uvicorn, httptools, uvloop)", "naive", "httptools"
    )

    if opts.granian:
        try:
            pkgs = granian_env.ensure_granian(GRANIAN_PKGS, run_dir / "granian-install.log")
        except granian_env.GranianUnavailable as e:
            message = f"granian skipped: {e}"
            print(message, flush=True)
            notes.append(message)
        else:
            path = f"{pkgs}{os.pathsep}{REPO / 'src'}{os.pathsep}{REPO}"
            granian_env_vars = {**env, "PYTHONPATH": path}
            ours(
                "agent_granian",
                f"modelfleet agent app (granian {granian_env.version(pkgs)}, ASGI, uvloop)",
                "agent",
                "httptools",
                "granian",
                granian_env_vars,
            )

    if not opts.skip_mlserver:
        try:
            mls = mlserver.ensure_venv(MLSERVER_VENV, run_dir / "mlserver-venv-install.log")
        except mlserver.MLServerUnavailable as e:
            message = f"MLServer skipped: its virtual environment could not be created: {e}"
            print(message, flush=True)
            notes.append(message)
        else:
            variants = [mlserver.TUNED] + ([mlserver.DEFAULTS] if opts.mlserver_defaults else [])
            for variant in variants:
                ports = (processes.free_port(), processes.free_port(), processes.free_port())
                repo = mlserver.write_repository(
                    run_dir / f"{variant.key}-repo", bench.path, MODEL_NAME, variant, ports
                )
                base = f"http://127.0.0.1:{ports[0]}"
                mls_env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_")}
                servers.append(
                    processes.start(
                        variant.key,
                        variant.label,
                        [str(mls), "start", "."],
                        url=base + infer_path,
                        ready_url=base + f"/v2/models/{MODEL_NAME}/ready",
                        log=run_dir / f"{variant.key}.log",
                        cwd=repo,
                        env=mls_env,
                    )
                )
    return servers


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "rps": med("rps"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "server_cpu_us_per_request": med("server_cpu_us_per_request"),
        "requests": sum(r["requests"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "runs": len(runs),
    }


def _ratios(summary: dict[str, dict[str, Any]], concurrency: tuple[int, ...]) -> dict[str, Any]:
    """Agent vs each other server, per concurrency, on medians."""
    out: dict[str, Any] = {}
    agent = summary.get("agent")
    if agent is None:
        return out
    others = ("mlserver_tuned", "mlserver_defaults", "naive", "agent_app", "agent_h11")
    for other in (*others, "agent_granian"):
        if other not in summary:
            continue
        per_c: dict[str, Any] = {}
        for c in concurrency:
            a, o = agent.get(str(c)), summary[other].get(str(c))
            if a is None or o is None:
                continue
            per_c[str(c)] = {
                "throughput": a["rps"]["median"] / o["rps"]["median"],
                "p50": a["p50_ms"]["median"] / o["p50_ms"]["median"],
                "p99": a["p99_ms"]["median"] / o["p99_ms"]["median"],
            }
        out[f"agent_vs_{other}"] = per_c
    return out


def run(opts: Options) -> int:
    """Run the whole serving benchmark; return the process exit status."""
    started = time.monotonic()
    try:
        wrk_path = wrk.ensure_wrk()
    except wrk.WrkUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / f"serving-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    info = machine_info(wrk_path)
    print(f"results in {run_dir}", flush=True)

    bench = make_model(run_dir / "model")
    lua = wrk.write_lua(run_dir / "post.lua", bench.body)

    print("in-process: bare session.run vs the agent's handler path ...", flush=True)
    warm = max(1000, opts.inproc_calls // 10)
    in_process = inproc.measure(bench, opts.inproc_calls, warm)
    functions, app = in_process["agent_functions"], in_process["agent_asgi"]
    print(
        f"  bare p50 {functions['bare']['p50_us']:.2f} us; overhead p50: agent functions "
        f"{functions['overhead_p50_us']:.2f} us, agent app (ASGI) {app['overhead_p50_us']:.2f} us",
        flush=True,
    )

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    labels: dict[str, str] = {}
    answers: dict[str, Any] = {}
    servers: list[processes.Server] = []
    companions: list[processes.Server] = []
    try:
        servers = _start_servers(opts, bench, run_dir, notes, companions)
        live: list[processes.Server] = []
        for server in servers:
            try:
                server.wait_ready(90.0 if server.key.startswith("mlserver") else 30.0)
                answers[server.key] = _check_answer(server, bench)
            except (RuntimeError, OSError, ValueError, KeyError, TypeError) as e:
                message = f"{server.key} not measured: {e}"
                print(message, flush=True)
                notes.append(message)
                server.stop()
                continue
            live.append(server)
            labels[server.key] = server.label
            raw[server.key] = {str(c): [] for c in opts.concurrency}
            print(f"{server.key}: ready, answer checked (label {bench.label})", flush=True)
        for server in live:
            if opts.warmup > 0:
                try:
                    wrk.run(wrk_path, server.url, lua, 8, opts.warmup)
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                    notes.append(f"{server.key} warm-up: {e}")
        for repeat in range(opts.repeats):
            for c in opts.concurrency:
                for server in live:
                    if server.process.poll() is not None:
                        continue  # died earlier; noted then
                    cpu_before = server.cpu_seconds()
                    try:
                        measured, text = wrk.run(wrk_path, server.url, lua, c, opts.duration)
                    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
                        alive = server.process.poll() is None
                        message = f"{server.key} c={c} run {repeat + 1}: {e}" + (
                            "" if alive else f" (the server exited; see {server.log})"
                        )
                        print(message, flush=True)
                        notes.append(message)
                        continue
                    cpu = server.cpu_seconds() - cpu_before
                    (run_dir / f"wrk-{server.key}-c{c}-r{repeat}.txt").write_text(text)
                    raw[server.key][str(c)].append(
                        {
                            **measured.to_dict(),
                            "server_cpu_us_per_request": cpu * 1e6 / max(1, measured.requests),
                        }
                    )
                    print(
                        f"[{repeat + 1}/{opts.repeats}] c={c:<3} {server.key:<18} "
                        f"{measured.rps:9.0f} req/s  p50 {measured.p50_ms:7.3f} ms  "
                        f"p99 {measured.p99_ms:7.3f} ms  non-2xx {measured.non_2xx}  "
                        f"sock-err {measured.socket_errors}",
                        flush=True,
                    )
    finally:
        # In parallel: MLServer needs a second SIGINT and up to seconds to exit.
        with ThreadPoolExecutor(max(1, len(servers))) as pool:
            list(pool.map(lambda server: server.stop(), servers))
        for companion in companions:
            companion.stop()
    info["loadavg_end"] = list(os.getloadavg())
    if not opts.skip_mlserver and MLSERVER_VENV.exists():
        info["mlserver_venv_packages"] = mlserver.versions(MLSERVER_VENV)

    summary = {
        key: {c: _aggregate(runs) for c, runs in per_c.items() if runs}
        for key, per_c in raw.items()
    }
    result = {
        "benchmark": "serving",
        "timestamp_utc": stamp,
        "command": " ".join(["python", "-m", "benchmarks.run", *opts.argv]),
        "options": {
            "duration_s": opts.duration,
            "repeats": opts.repeats,
            "concurrency": list(opts.concurrency),
            "warmup_s": opts.warmup,
            "inproc_calls": opts.inproc_calls,
        },
        "machine": info,
        "model": {
            "name": MODEL_NAME,
            "sha256": bench.digest,
            "bytes": bench.path.stat().st_size,
            "body": bench.body.decode(),
            "label": bench.label,
        },
        "servers": labels,
        "answers": answers,
        "in_process": in_process,
        "http": summary,
        "http_runs": raw,
        "ratios": _ratios(summary, opts.concurrency),
        "notes": notes,
        "wall_s": round(time.monotonic() - started, 1),
    }
    out = run_dir / "result.json"
    out.write_text(json.dumps(result, indent=2))
    shutil.copyfile(out, RESULTS / "serving-latest.json")
    markdown = report.render(result)
    (run_dir / "section.md").write_text(markdown)
    if opts.write_docs:
        report.update_docs(DOCS, markdown)
        print(f"updated {DOCS.relative_to(REPO)}", flush=True)
    print(markdown)
    print(
        f"results: {out.relative_to(REPO)} (also bench-results/serving-latest.json); "
        f"wall {result['wall_s']} s",
        flush=True,
    )
    return 0
