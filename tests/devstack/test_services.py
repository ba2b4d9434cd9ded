from pathlib import Path

from stepmail_devstack.services import (
    DEV_INGEST_API_KEY,
    SERVICE_PORTS,
    platform_env,
)


def test_platform_env_gives_each_service_its_settings():
    envs = platform_env(
        "postgresql://stepmail@127.0.0.1:5432/stepmail",
        "127.0.0.1:9092",
        "smtp://127.0.0.1:1025",
        SERVICE_PORTS,
        Path("/repo"),
        base={"PATH": "/usr/bin"},
    )
    assert set(envs) == set(SERVICE_PORTS)
    for name, env in envs.items():
        assert env["HTTP_PORT"] == str(SERVICE_PORTS[name])
        assert env["HTTP_HOST"] == "127.0.0.1"
        assert env["KAFKA_ENABLE_IDEMPOTENCE"] == "false"
        assert env["KAFKA_TOPIC_PARTITIONS"] == "4"
        assert env["STEPMAIL_ENV"] == "development"
        assert env["PATH"] == "/usr/bin"
    assert envs["renderer"]["SIGNING_KEYS"] == envs["tracker"]["SIGNING_KEYS"]
    assert envs["renderer"]["TRACKER_PUBLIC_URL"] == "http://127.0.0.1:8005"
    assert envs["renderer"]["MAIL_FROM"] == "stepmail デモ <hello@example.com>"
    assert envs["renderer"]["RENDERER_TEMPLATES_DIR"] == "/repo/examples/templates"
    assert envs["orchestrator"]["ORCHESTRATOR_SCENARIOS_DIR"] == "/repo/examples/scenarios"
    assert envs["ingest"]["INGEST_BOOTSTRAP_API_KEY"] == DEV_INGEST_API_KEY
    assert envs["sender"]["SMTP_URL"] == "smtp://127.0.0.1:1025"


def test_operator_settings_win_over_defaults_but_not_over_arguments():
    envs = platform_env(
        "postgresql://test/db",
        "kafka:9092",
        "smtp://mail:25",
        {"sender": 9004, "tracker": 9005},
        Path("/repo"),
        extra={"LOG_LEVEL": "DEBUG"},
        base={
            "KAFKA_ENABLE_IDEMPOTENCE": "true",
            "DATABASE_URL": "postgresql://operator/db",
            "HTTP_PORT": "1",
            "LOG_LEVEL": "WARNING",
        },
    )
    sender = envs["sender"]
    assert sender["KAFKA_ENABLE_IDEMPOTENCE"] == "true"
    assert sender["DATABASE_URL"] == "postgresql://test/db"
    assert sender["HTTP_PORT"] == "9004"
    assert sender["LOG_LEVEL"] == "DEBUG"
    assert sender["TRACKER_PUBLIC_URL"] == "http://127.0.0.1:9005"
