"""The rollout core stays pure (issue 8): stdlib + errors/rollout/monitoring, no clock, no I/O,
and the same answer in every process (no dependence on hash randomisation)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROLLOUT = Path(__file__).resolve().parents[2] / "src" / "modelfleet" / "rollout"
CORE = ("cohorts", "plan", "_fields", "gates", "change", "stages")
ALLOWED = ("modelfleet.errors", "modelfleet.rollout", "modelfleet.monitoring")
# Reading the time or touching files/processes/network is the shells' job.
FORBIDDEN_MODULES = {"time", "os", "io", "socket", "subprocess", "random", "pathlib", "yaml"}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "open", "print", "monotonic", "perf_counter"}


def imports(tree: ast.AST) -> list[str]:
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


@pytest.mark.parametrize("name", CORE)
def test_imports_only_stdlib_and_the_pure_packages(name: str) -> None:
    tree = ast.parse((ROLLOUT / f"{name}.py").read_text())
    for target in imports(tree):
        root = target.split(".")[0]
        if root == "modelfleet":
            assert target.startswith(ALLOWED), f"{name}.py imports {target}"
        else:
            assert root in sys.stdlib_module_names or root == "__future__", target
            assert root not in FORBIDDEN_MODULES, f"{name}.py imports {target}"


@pytest.mark.parametrize("name", CORE)
def test_reads_no_clock_and_opens_nothing(name: str) -> None:
    tree = ast.parse((ROLLOUT / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            assert called not in FORBIDDEN_CALLS, f"{name}.py:{node.lineno} calls {called}()"


SCRIPT = """
import json
from modelfleet.rollout.cohorts import plan_cohorts
fleet = [f"dev-{i}" for i in range(3000)]
groups = {d: f"cell:{i % 97}" for i, d in enumerate(fleet) if i % 4 == 0}
plan = plan_cohorts(fleet, "ro-replay", [1, 9, 90, 100], groups)
print(json.dumps([plan.stages, list(plan.stage_of.items())]))
"""


def test_the_same_cohorts_in_every_process() -> None:
    runs = []
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout))
    assert runs[0] == runs[1] == runs[2]
