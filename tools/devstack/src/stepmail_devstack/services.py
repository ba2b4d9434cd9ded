"""Launching stepmail's five services as processes, configured only by environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from stepmail_devstack.processes import DevstackError, ManagedProcess, port_is_open

SERVICE_NAMES: tuple[str, ...] = ("ingest", "orchestrator", "renderer", "sender", "tracker")
SERVICE_PORTS: dict[str, int] = {
    "ingest": 8001,
    "orchestrator": 8002,
    "renderer": 8003,
    "sender": 8004,
    "tracker": 8005,
}
HTTP_HOST = "127.0.0.1"

# Development-only secrets: public in the repository, refused outside development.
DEV_SIGNING_KEYS = "k1:dev-only-4f9c2a71d8e35b06c1a9e7f24d6b3085"
DEV_INGEST_API_KEY = "sm_dev_7Qe2xK9mWb4Lr8Tz3Nv6Hc1P"

DEV_SENDER = {
    "MAIL_FROM": "stepmail デモ <hello@example.com>",
    "SENDER_LEGAL_NAME": "ステップメール デモ株式会社",
    "SENDER_POSTAL_ADDRESS": "〒100-0005 東京都千代田区丸の内1-1-1 デモビル 10F",
    "SENDER_CONTACT": "support@example.com / 03-0000-0000",
}


# The opt-in a sign-up form records, with its proof; the welcome mail is marketing mail.
SIGNUP_CONSENT: dict[str, object] = {
    "status": "granted",
    "kinds": ["marketing"],
    "source": "signup-form",
    "evidence": {"form": "https://shop.example.com/signup"},
}


def signup_event(contact_id: str, email: str, name: str) -> dict[str, object]:
    """The first event of the README: a sign-up with the form's opt-in."""
    return {
        "type": "signup",
        "contact": {"id": contact_id, "email": email, "name": name, "consent": SIGNUP_CONSENT},
    }


def _shared_defaults(ports: Mapping[str, int]) -> dict[str, str]:
    tracker_port = ports.get("tracker", SERVICE_PORTS["tracker"])
    return {
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_TOPIC_PARTITIONS": "4",
        "HTTP_HOST": HTTP_HOST,
        "STEPMAIL_ENV": "development",
        "LOG_LEVEL": "INFO",
        "SIGNING_KEYS": DEV_SIGNING_KEYS,
        "TRACKER_PUBLIC_URL": f"http://{HTTP_HOST}:{tracker_port}",
    }


def _own_defaults(name: str, repo_root: Path) -> dict[str, str]:
    examples = repo_root / "examples"
    if name == "ingest":
        return {"INGEST_BOOTSTRAP_API_KEY": DEV_INGEST_API_KEY}
    if name == "orchestrator":
        return {"ORCHESTRATOR_SCENARIOS_DIR": str(examples / "scenarios")}
    if name == "renderer":
        return {"RENDERER_TEMPLATES_DIR": str(examples / "templates"), **DEV_SENDER}
    return {}


def platform_env(
    database_url: str,
    kafka_bootstrap: str,
    smtp_url: str,
    ports: Mapping[str, int],
    repo_root: Path,
    extra: Mapping[str, str] | None = None,
    *,
    base: Mapping[str, str] | None = None,
) -> dict[str, dict[str, str]]:
    """The environment of each service in ``ports``.

    Precedence, lowest first: the development defaults, then ``base`` (the
    current environment unless given, so an operator's own settings win), then
    the URLs and port passed here, then ``extra``.
    """
    inherited = dict(os.environ if base is None else base)
    envs: dict[str, dict[str, str]] = {}
    for name, port in ports.items():
        defaults = {**_shared_defaults(ports), **_own_defaults(name, repo_root)}
        env = {**defaults, **inherited}
        env |= {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "SMTP_URL": smtp_url,
            "HTTP_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
        env |= dict(extra or {})
        envs[name] = env
    return envs


class ServiceProcess(ManagedProcess):
    """One stepmail service, ``python -m stepmail_<name>``, on its own port."""

    def __init__(
        self,
        name: str,
        port: int,
        env: Mapping[str, str],
        *,
        argv: Sequence[str] | None = None,
        host: str = HTTP_HOST,
        cwd: Path | None = None,
        log_path: Path | None = None,
        echo: bool = False,
    ) -> None:
        super().__init__(
            name,
            argv if argv is not None else [sys.executable, "-m", f"stepmail_{name}"],
            env=env,
            cwd=cwd,
            log_path=log_path,
            echo=echo,
        )
        self.port = port
        self.host = host

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start the service; refuses a port something else already listens on."""
        if not self.running and port_is_open(self.host, self.port):
            raise DevstackError(f"{self.name}: port {self.host}:{self.port} is already in use")
        super().start()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``GET /readyz`` until it answers 200; raises with the log tail."""
        self.wait_http_ok(f"{self.base_url}/readyz", timeout)

    def restart(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """Stop (SIGTERM, then SIGKILL) and start with the same environment and port."""
        self.terminate(timeout)
        self.start()
        if wait:
            self.wait_ready()


def stop_services(services: Iterable[ServiceProcess], timeout: float = 10.0) -> None:
    """Stop services in reverse start order, each with SIGTERM and a drain deadline."""
    for service in reversed(list(services)):
        service.terminate(timeout)


def start_platform(
    database_url: str,
    kafka_bootstrap: str,
    smtp_url: str,
    repo_root: Path,
    *,
    ports: Mapping[str, int] | None = None,
    extra_env: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    echo: bool = False,
    ready_timeout: float = 60.0,
    argv: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, ServiceProcess]:
    """Start every service in ``ports`` (default: all five) and wait until all are ready.

    ``argv`` replaces the command of named services. When one fails to become
    ready, the ones started are stopped and the error is raised.
    """
    ports = dict(SERVICE_PORTS if ports is None else ports)
    envs = platform_env(database_url, kafka_bootstrap, smtp_url, ports, repo_root, extra_env)
    services: dict[str, ServiceProcess] = {}
    try:
        for name, port in ports.items():
            service = ServiceProcess(
                name,
                port,
                envs[name],
                argv=(argv or {}).get(name),
                cwd=repo_root,
                log_path=log_dir / f"{name}.log" if log_dir is not None else None,
                echo=echo,
            )
            services[name] = service
            service.start()
        for service in services.values():
            service.wait_ready(ready_timeout)
    except BaseException:
        stop_services(services.values())
        raise
    return services
