"""Offline checks of docker-compose.yml (no Docker engine is needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"

SERVICES = {"ingest": 8001, "orchestrator": 8002, "renderer": 8003, "sender": 8004, "tracker": 8005}
REQUIRED_ENV = {
    "DATABASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_ENABLE_IDEMPOTENCE",
    "HTTP_HOST",
    "HTTP_PORT",
    "STEPMAIL_ENV",
}
EXTRA_ENV = {
    "renderer": {"SIGNING_KEYS", "TRACKER_PUBLIC_URL", "MAIL_FROM", "SENDER_LEGAL_NAME"},
    "tracker": {"SIGNING_KEYS"},
    "sender": {"SMTP_URL", "SENDER_AMBIGUOUS_POLICY"},
}
TOPICS = [
    "stepmail.contact-events",
    "stepmail.steps-due",
    "stepmail.mail-rendered",
    "stepmail.delivery-events",
    "stepmail.engagement-events",
]
HEALTHY = {"service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _published(service: dict[str, Any]) -> set[tuple[int, int]]:
    pairs = set()
    for port in service.get("ports", []):
        host, _, container = str(port).rpartition(":")
        pairs.add((int(host.rpartition(":")[2]), int(container)))
    return pairs


def test_the_platform_and_its_infrastructure_are_defined(services: dict[str, Any]) -> None:
    assert {"kafka", "kafka-init", "postgres", "mailpit", *SERVICES} <= set(services)


def test_depends_on_names_real_services_and_waits_for_health(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long form with conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec.get("condition") in HEALTHY, f"{name} -> {target}: {spec}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            else:
                assert services[target].get("restart", "no") == "no", f"{target} is not one-shot"


def test_healthchecks_on_infrastructure_and_services(services: dict[str, Any]) -> None:
    for name in ("kafka", "postgres", "mailpit", *SERVICES):
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
    for name, port in SERVICES.items():
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in test, f"{name}: liveness is /healthz on its own port"


def test_stepmail_services_use_the_dockerfile_and_wait_for_their_dependencies(
    services: dict[str, Any],
) -> None:
    for name in SERVICES:
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
        assert (ROOT / service["build"].get("dockerfile", "Dockerfile")).is_file()
        assert service["command"] == [f"stepmail-{name}"]
        depends = service["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["kafka-init"]["condition"] == "service_completed_successfully", name
    assert services["sender"]["depends_on"]["mailpit"]["condition"] == "service_healthy"


def test_stepmail_services_have_their_configuration(services: dict[str, Any]) -> None:
    for name, port in SERVICES.items():
        env = _env(services[name])
        missing = (REQUIRED_ENV | EXTRA_ENV.get(name, set())) - set(env)
        assert not missing, f"{name} lacks {missing}"
        assert env["HTTP_PORT"] == str(port), name
        assert env["HTTP_HOST"] == "0.0.0.0", name
        assert env["KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] == "kafka", name
        assert env["KAFKA_ENABLE_IDEMPOTENCE"] == "true", f"{name}: Apache Kafka supports it"
        assert "@postgres:5432/" in env["DATABASE_URL"], name
        assert env["STEPMAIL_ENV"] == "development", f"{name}: compose holds dev-only secrets"
    assert _env(services["sender"])["SMTP_URL"] == "smtp://mailpit:1025"
    renderer, tracker = _env(services["renderer"]), _env(services["tracker"])
    assert renderer["SIGNING_KEYS"] == tracker["SIGNING_KEYS"], (
        "tracker must verify renderer's links"
    )


def test_example_scenarios_and_templates_are_mounted(services: dict[str, Any]) -> None:
    for name, var, source in (
        ("orchestrator", "ORCHESTRATOR_SCENARIOS_DIR", "./examples/scenarios"),
        ("renderer", "RENDERER_TEMPLATES_DIR", "./examples/templates"),
    ):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts.get(_env(services[name])[var]) == source, name


def test_dev_secrets_are_placeholders(services: dict[str, Any]) -> None:
    """Compose secrets start with "dev", which STEPMAIL_ENV=production refuses."""
    for name in SERVICES:
        env = _env(services[name])
        for key in ("INGEST_BOOTSTRAP_API_KEY",):
            if key in env:
                assert env[key].startswith("dev"), f"{name}: {key}"
        if "SIGNING_KEYS" in env:
            for entry in env["SIGNING_KEYS"].split(","):
                assert entry.split(":", 1)[1].startswith("dev"), f"{name}: SIGNING_KEYS"
        assert "dev-only" in env["DATABASE_URL"], name
    assert "DEV ONLY" in COMPOSE_FILE.read_text()


def test_default_ports_are_published(services: dict[str, Any]) -> None:
    for name, port in SERVICES.items():
        assert (port, port) in _published(services[name]), name
    assert (9092, 9092) in _published(services["kafka"])
    assert (5432, 5432) in _published(services["postgres"])
    assert {(1025, 1025), (8025, 8025)} <= _published(services["mailpit"])


def test_images_are_pinned(services: dict[str, Any]) -> None:
    expected = {"kafka": "apache/kafka", "postgres": "postgres", "mailpit": "axllent/mailpit"}
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if name in SERVICES:
            continue
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"
    for name, repository in expected.items():
        assert services[name]["image"].startswith(f"{repository}:"), name
    assert services["kafka-init"]["image"] == services["kafka"]["image"]


def test_kafka_runs_kraft_without_auto_created_topics(services: dict[str, Any]) -> None:
    env = _env(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:19092" in advertised
    assert "localhost:9092" in advertised


def test_topic_init_creates_the_ten_topics(services: dict[str, Any]) -> None:
    script = "\n".join(services["kafka-init"]["command"])
    assert "kafka-topics.sh" in script
    assert "--if-not-exists" in script
    created = dict(re.findall(r"^create (\S+) (\d+)$", script, flags=re.MULTILINE))
    assert set(created) == set(TOPICS) | {f"{t}.dlq" for t in TOPICS}
    for topic in TOPICS:
        assert int(created[topic]) == 12, topic
        assert 1 <= int(created[f"{topic}.dlq"]) <= 3, topic
    partitions = {_env(services[name])["KAFKA_TOPIC_PARTITIONS"] for name in SERVICES}
    assert partitions == {"12"}


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` (plugin) nor `docker-compose` is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
