"""The alert rules and the Prometheus configuration in deploy/prometheus.

``promtool check rules`` and ``promtool test rules`` (alerts.test.yaml) run on the real
files; every metric an alert reads is one the services expose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import promtool
from tests.deploy.promql import KAFKA_EXPORTER, PROMETHEUS, exposed_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yaml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yaml"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check():
    checked = promtool.run("check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout


def test_rules_pass_their_unit_tests():
    tested = promtool.run("test", "rules", ALERT_TESTS.name, cwd=PROMETHEUS_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_firing_and_silent():
    cases = [
        case
        for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    for rule in _rules():
        name = rule["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name} is never shown firing"
        assert any(not case.get("exp_alerts") for case in mine), f"{name} is never shown silent"


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_alerts_read_only_metrics_the_services_expose(rule: dict[str, Any]):
    names = metric_names(rule["expr"])
    assert names, rule["expr"]
    unknown = names - exposed_names() - PROMETHEUS - KAFKA_EXPORTER
    assert not unknown, f"{rule['alert']} reads {sorted(unknown)}, which no service exposes"
    if names & KAFKA_EXPORTER:
        assert rule["alert"] == "StepmailDeadLetterTopicNotEmpty", "only this alert needs it"


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_alerts_have_a_severity_a_summary_and_the_runbook(rule: dict[str, Any]):
    assert rule["alert"].startswith("Stepmail")
    assert rule["labels"]["severity"] in ("page", "ticket")
    assert rule["annotations"]["summary"]
    assert rule["annotations"]["runbook"] == "README.md#operations"
    readme = (ROOT / "README.md").read_text()
    assert f"`{rule['alert']}`" in readme, "the README's Operations section explains it"


def test_prometheus_configuration_is_valid(tmp_path: Path):
    """Debian's promtool is built without Kubernetes discovery: the check runs on a copy
    whose pod discovery is swapped for a static target (relabelling and rules stay)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yaml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "stepmail"
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:8004"]}]
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "alerts.yaml").write_text(ALERTS.read_text())
    checked = promtool.run("check", "config", tmp_path / "prometheus.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_pods_carry_what_the_scrape_configuration_selects():
    for path in sorted(K8S_BASE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            template = doc["spec"]["template"]["metadata"]
            assert template["labels"]["app.kubernetes.io/part-of"] == "stepmail", path
            assert template["labels"]["app.kubernetes.io/component"], path
            assert template["annotations"]["prometheus.io/scrape"] == "true", path
            assert template["annotations"]["prometheus.io/path"] == "/metrics", path
