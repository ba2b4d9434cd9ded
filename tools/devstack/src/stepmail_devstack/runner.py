"""The whole platform on one machine: embedded components, then the services."""

from __future__ import annotations

import json
import os
import signal
import threading
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stepmail_devstack.broker import EmbeddedBroker
from stepmail_devstack.catcher import CatcherProcess
from stepmail_devstack.postgres import EmbeddedPostgres
from stepmail_devstack.processes import DevstackError, ManagedProcess
from stepmail_devstack.services import (
    DEV_INGEST_API_KEY,
    SERVICE_PORTS,
    ServiceProcess,
    platform_env,
    signup_event,
    stop_services,
)

_SERVICE_DRAIN_SECONDS = 15.0
_INFRA_STOP_SECONDS = 30.0


def find_repo_root(start: Path | None = None) -> Path:
    """``STEPMAIL_REPO_ROOT``, else the nearest directory up with a Makefile and services/."""
    explicit = os.environ.get("STEPMAIL_REPO_ROOT")
    if explicit:
        return Path(explicit).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Makefile").is_file() and (candidate / "services").is_dir():
            return candidate
    raise DevstackError(
        f"no stepmail checkout found above {here}; run from the repository "
        "or set STEPMAIL_REPO_ROOT"
    )


@dataclass
class DevPorts:
    """Where each embedded component and service listens."""

    postgres: int = 5432
    broker: int = 9092
    smtp: int = 1025
    mail_http: int = 8025
    services: dict[str, int] = field(default_factory=lambda: dict(SERVICE_PORTS))


class _Shutdown(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM to unwind into the shutdown path."""


class Devstack:
    """Starts what the environment does not already provide, then the services.

    ``DATABASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS`` and ``SMTP_URL`` in ``environ``
    replace the embedded Postgres, broker and catcher. Everything started is
    stopped in reverse order by :meth:`stop`.
    """

    def __init__(
        self,
        repo_root: Path,
        state_dir: Path,
        ports: DevPorts,
        *,
        services: Sequence[str] = tuple(SERVICE_PORTS),
        service_argv: Mapping[str, Sequence[str]] | None = None,
        environ: Mapping[str, str] | None = None,
        echo: bool = True,
    ) -> None:
        self.repo_root = repo_root
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.ports = ports
        self.service_names = list(services)
        self.service_argv = dict(service_argv or {})
        self.environ = dict(os.environ if environ is None else environ)
        self.echo = echo
        self.postgres: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.catcher: CatcherProcess | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.database_url = self.environ.get("DATABASE_URL", "")
        self.kafka_bootstrap = self.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        self.smtp_url = self.environ.get("SMTP_URL", "")
        self._reported_dead: set[str] = set()

    def _say(self, text: str) -> None:
        print(f"stepmail-dev| {text}", flush=True)

    def start(self) -> None:
        """Start the embedded components as needed, then the services, and wait for them."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            self._say(f"starting Postgres on 127.0.0.1:{self.ports.postgres}")
            self.postgres = EmbeddedPostgres(
                self.state_dir / "pgdata",
                self.ports.postgres,
                echo=self.echo,
                log_path=self.log_dir / "postgres.log",
            )
            self.postgres.start()
            self.database_url = self.postgres.dsn()
        if not self.kafka_bootstrap:
            self._say(f"starting the broker on 127.0.0.1:{self.ports.broker}")
            self.broker = EmbeddedBroker(
                self.ports.broker, echo=self.echo, log_path=self.log_dir / "broker.log"
            )
            self.broker.start()
            self.kafka_bootstrap = self.broker.bootstrap_servers
        if not self.smtp_url:
            self._say(f"starting the SMTP catcher on 127.0.0.1:{self.ports.smtp}")
            self.catcher = CatcherProcess(
                self.ports.smtp,
                self.ports.mail_http,
                self.state_dir / "mail",
                echo=self.echo,
                log_path=self.log_dir / "catcher.log",
            )
            self.catcher.start()
            self.smtp_url = self.catcher.smtp_url
        self._start_services()

    def _start_services(self) -> None:
        ports = {name: self.ports.services[name] for name in self.service_names}
        envs = platform_env(
            self.database_url,
            self.kafka_bootstrap,
            self.smtp_url,
            ports,
            self.repo_root,
            base=self.environ,
        )
        for name, port in ports.items():
            service = ServiceProcess(
                name,
                port,
                envs[name],
                argv=self.service_argv.get(name),
                cwd=self.repo_root,
                log_path=self.log_dir / f"{name}.log",
                echo=self.echo,
            )
            self.services[name] = service
            service.start()
        for service in self.services.values():
            service.wait_ready()

    def processes(self) -> list[ManagedProcess]:
        """Every child we started, in start order."""
        found: list[ManagedProcess | None] = [
            self.postgres.process if self.postgres else None,
            self.broker.process if self.broker else None,
            self.catcher.process if self.catcher else None,
            *self.services.values(),
        ]
        return [p for p in found if p is not None]

    def check(self) -> None:
        """Report, once each, children that exited while they should be running."""
        for process in self.processes():
            if process.name in self._reported_dead or process.running:
                continue
            self._reported_dead.add(process.name)
            self._say(
                f"{process.name} exited unexpectedly (code {process.returncode}); "
                f"last output:\n{process.log_tail()}"
            )

    def stop(self) -> None:
        """Services first (SIGTERM, drain deadline, SIGKILL), then catcher, broker, Postgres."""
        if self.services:
            self._say("stopping services")
            stop_services(self.services.values(), _SERVICE_DRAIN_SECONDS)
        if self.catcher is not None:
            self.catcher.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop(_INFRA_STOP_SECONDS)
        self._say("stopped")

    def summary(self) -> str:
        """A table of where everything is, for people."""
        rows: list[tuple[str, str]] = [
            ("postgres", self.database_url + ("" if self.postgres else "  (external)")),
            ("kafka", self.kafka_bootstrap + ("" if self.broker else "  (external)")),
            ("smtp", self.smtp_url + ("" if self.catcher else "  (external)")),
        ]
        if self.catcher is not None:
            rows.append(("mail catcher", self.catcher.http_url + "/"))
        rows += [(name, service.base_url) for name, service in self.services.items()]
        rows.append(("logs", str(self.log_dir)))
        api_key = self.environ.get("INGEST_BOOTSTRAP_API_KEY", DEV_INGEST_API_KEY)
        rows.append(("dev API key", api_key))
        width = max(len(name) for name, _ in rows)
        lines = ["", "stepmail is running:", ""]
        lines += [f"  {name:<{width}}  {where}" for name, where in rows]
        if "ingest" in self.services:
            ingest = self.services["ingest"].base_url
            first_event = json.dumps(
                signup_event("c-1001", "hanako@example.com", "山田 花子"),
                ensure_ascii=False,
                separators=(",", ":"),
            )
            lines += [
                "",
                "Send the first event:",
                "",
                f"  KEY={api_key}",
                f'  curl -sS -X POST {ingest}/v1/events -H "Authorization: Bearer $KEY" '
                "-H 'Content-Type: application/json' "
                f"-d '{first_event}'",
            ]
        lines += ["", "Ctrl-C stops everything.", ""]
        return "\n".join(lines)

    def run(self, poll_interval: float = 0.5) -> int:
        """Start, print the summary, watch the children until SIGINT/SIGTERM, then stop."""

        def on_signal(signum: int, frame: types.FrameType | None) -> None:
            raise _Shutdown(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            try:
                self.start()
                print(self.summary(), flush=True)
                idle = threading.Event()
                while True:
                    self.check()
                    idle.wait(poll_interval)
            except _Shutdown as received:
                self._say(f"{received} received, shutting down")
            except DevstackError as exc:
                self._say(f"startup failed: {exc}")
                code = 1
            finally:
                # A second Ctrl-C must not cut the orderly stop short.
                for sig in previous:
                    signal.signal(sig, signal.SIG_IGN)
                self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code
