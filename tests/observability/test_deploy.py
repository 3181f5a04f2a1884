"""deploy/: alert rules, their unit tests and runbooks, the Grafana dashboards (issue 7).

Nothing here may reference a metric that does not exist: every name in every PromQL
expression of the rules and dashboards must be in the contract's list
(:data:`tests.prom.METRIC_NAMES`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prom import METRIC_NAMES, run_promtool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))

# -- reading PromQL --------------------------------------------------------------------------

_KEYWORDS = frozenset(
    [
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ]
)
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's variables with stand-in values, so that the expressions are plain PromQL.
_GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$datasource": "prometheus",
    "$model": "m",
    "$version": ".*",
    "$site": ".*",
}


def grafana_to_promql(expr: str) -> str:
    for var, value in sorted(_GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    leftover = re.findall(r"\$(?!\d)\w+", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr))
    assert not leftover, f"unknown Grafana variable(s) {leftover} in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name in _KEYWORDS or re.fullmatch(r"\d+\w*", name):
            continue
        names.add(name)
    return names


def exposed_name(name: str) -> str:
    """``x_bucket`` → ``x`` for the histograms of the contract; anything else unchanged."""
    for suffix in _HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in METRIC_NAMES:
            return base
    return name


def test_the_promql_reader_finds_metrics_and_only_metrics() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (model, le) (rate(a_seconds_bucket{x="y(z)"}[5m])))'
        " / on (model) group_left () max by (model) (label_replace(b_info, "
        '"version", "$1", "candidate", "(.+)")) and c_total offset 5m > bool 0.5'
        " or rules:recorded:rate5m"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_info", "c_total", "rules:recorded:rate5m"}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every target of every panel."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target["expr"]))
    return found


def uses() -> list[tuple[str, str]]:
    """(where, expr) of every PromQL expression in deploy/."""
    out = [(f"alerts.yml {r.get('alert') or r.get('record')}", r["expr"]) for r in alert_rules()]
    out += [(f"{file} panel {title!r}", grafana_to_promql(expr)) for file, title, expr in
            dashboard_targets()]  # fmt: skip
    return out


# -- the checks -------------------------------------------------------------------------------


def test_every_metric_the_rules_and_dashboards_use_exists_in_the_contract() -> None:
    recorded = {r["record"] for r in alert_rules() if "record" in r}
    problems = [
        f"{where}: {name}"
        for where, expr in uses()
        for name in sorted(metric_names(expr))
        if exposed_name(name) not in METRIC_NAMES and name not in recorded
    ]
    assert not problems, "metrics not in the contract:\n  " + "\n  ".join(problems)


def test_alert_rules_pass_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", str(ALERTS))
    assert "SUCCESS" in out


def test_alert_unit_tests_pass() -> None:
    out = run_promtool("test", "rules", "alerts_test.yml", cwd=ALERTS.parent)
    assert "SUCCESS" in out


def test_the_example_scrape_config_is_valid_with_its_rules() -> None:
    run_promtool("check", "config", "prometheus.yml", cwd=ALERTS.parent)


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses recording rules; one rule per dashboard expression.
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, _, expr) in enumerate(dashboard_targets())
    ]
    assert len(rules) >= 20
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run_promtool("check", "rules", str(path))


@pytest.mark.parametrize(
    "rule", [r for r in alert_rules() if "alert" in r], ids=lambda r: r["alert"]
)
def test_every_alert_names_a_runbook_that_says_what_to_check_and_do(rule: dict[str, Any]) -> None:
    url = rule["annotations"].get("runbook_url", "")
    assert re.fullmatch(r"docs/runbooks/[a-z0-9-]+\.md", url), url
    text = (ROOT / url).read_text()
    assert rule["alert"] in text, f"{url} does not name the alert {rule['alert']}"
    for heading in ("## What it means", "## Check", "## Do"):
        assert heading in text, f"{url} lacks {heading!r}"
    assert rule["annotations"].get("summary") and rule["labels"].get("severity")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_are_grafana_dashboards_on_a_prometheus_datasource_variable(
    path: Path,
) -> None:
    doc = json.loads(path.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${datasource}", var["name"]
    panels = doc["panels"]
    assert len(panels) >= 6
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}, panel
        assert panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"


def test_the_dashboards_cover_what_the_issue_asks_for() -> None:
    exprs = {file: " ".join(e for f, _, e in dashboard_targets() if f == file) for file, _, _ in
             dashboard_targets()}  # fmt: skip
    fleet, model = exprs["modelfleet-fleet.json"], exprs["modelfleet-model.json"]
    assert "modelfleet_hub_devices_serving" in fleet and "site" in fleet  # versions per site
    assert 'state="stale"' in fleet  # stale devices
    assert "modelfleet_hub_telemetry_ingest_lag_seconds_bucket" in fleet  # ingest lag
    assert "modelfleet_agent_request_seconds_bucket" in model  # latency by version
    assert "server_error|timeout" in model  # errors by version
    assert '"candidate"' in model and '"production"' in model  # canary vs stable
