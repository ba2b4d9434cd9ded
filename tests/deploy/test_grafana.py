"""The Grafana dashboard deploy/grafana/stepmail-pipeline.json: valid, portable (the data
source is a variable), and reading only metrics the services expose, in valid PromQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests import promtool
from tests.deploy.promql import PROMETHEUS, exposed_names, metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "stepmail-pipeline.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's own variables, as Prometheus would see them once Grafana filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def test_the_dashboard_is_identified_and_its_data_source_a_variable():
    doc = _dashboard()
    assert doc["uid"] == "stepmail-pipeline"
    assert doc["title"]
    (variable,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "datasource"
    assert variable["query"] == "prometheus"
    for panel in _panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


def test_the_golden_signals_are_on_it():
    read = set().union(*(metric_names(expr) for _, expr in _exprs()))
    for name in (
        "stepmail_ingest_events_accepted_total",
        "stepmail_orchestrator_steps_due_total",
        "stepmail_renderer_mails_rendered_total",
        "stepmail_sender_mails_sent_total",
        "stepmail_sender_mails_failed_total",
        "stepmail_tracker_opens_total",
        "stepmail_tracker_clicks_total",
        "stepmail_kafka_consumer_lag",
        "stepmail_kafka_messages_consumed_total",
        "stepmail_orchestrator_send_latency_seconds_bucket",
    ):
        assert name in read, name
    latency = [e for t, e in _exprs() if "stepmail_orchestrator_send_latency_seconds" in e]
    assert [e.split(",")[0] for e in latency] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
    ]


def test_every_query_reads_only_metrics_the_services_expose():
    known = exposed_names() | PROMETHEUS
    for title, expr in _exprs():
        names = metric_names(expr)
        assert names, f"{title}: {expr}"
        assert names <= known, f"{title} reads {sorted(names - known)}, which no service exposes"
        assert 'job="stepmail"' in expr, f"{title}: {expr}"


def test_every_query_is_valid_promql(tmp_path: Path):
    """promtool parses each query as a recording rule's expression."""
    rules = []
    for i, (_, expr) in enumerate(_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"stepmail:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool.run("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells
