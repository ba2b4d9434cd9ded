"""The whole platform for the end-to-end benchmark and the chaos run.

Postgres (embedded unless ``DATABASE_URL``), the broker (embedded unless
``KAFKA_BOOTSTRAP_SERVERS``), the timestamping sink (:mod:`bench.sink`; always ours, since
the measurement is taken there), the five services as processes, the load generator
(:mod:`bench.loadgen`), and CPU seconds of each process tree read from ``/proc``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import backends
from stepmail_devstack.broker import EmbeddedBroker
from stepmail_devstack.postgres import (
    EmbeddedPostgres,
    dsn_with_database,
    ensure_database,
    psql,
)
from stepmail_devstack.processes import (
    ManagedProcess,
    die_with_parent_preexec,
    free_port,
    port_is_open,
)
from stepmail_devstack.services import (
    DEV_INGEST_API_KEY,
    SERVICE_NAMES,
    ServiceProcess,
    start_platform,
    stop_services,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - the development default, public
TRIGGER = "bench.triggered"
REGISTERED = "bench.registered"


def scenario(scenario_id: str) -> dict[str, Any]:
    """One marketing mail (the example welcome template) right after the trigger."""
    return {
        "id": scenario_id,
        "name": "ベンチマーク",
        "mail_kind": "marketing",
        "trigger": {"event": TRIGGER},
        "steps": [{"id": "mail", "wait": "0s", "send": {"template": "welcome"}}],
    }


@dataclass
class Stack:
    """Postgres, broker and sink: what outlives the services of one run."""

    workdir: Path
    database_url: str
    bootstrap: str
    sink: ManagedProcess
    sink_port: int
    records: Path
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None

    @property
    def smtp_url(self) -> str:
        return f"smtp://127.0.0.1:{self.sink_port}"


@contextmanager
def open_stack(workdir: Path) -> Iterator[Stack]:
    """Start (or take from the environment) Postgres and the broker, and start a sink."""
    with ExitStack() as stack:
        database_url, postgres = backends.postgres(stack, workdir, workdir / "postgres.log")
        bootstrap, broker = backends.kafka(stack, workdir / "broker.log")
        sink_port = free_port()
        records = workdir / "accepted.txt"
        sink = ManagedProcess(
            "sink",
            [sys.executable, "-m", "bench.sink", str(sink_port), str(records)],
            cwd=REPO_ROOT,
            log_path=workdir / "sink.log",
        )
        sink.start()
        stack.callback(sink.terminate, 5)
        sink.wait_until(lambda: port_is_open("127.0.0.1", sink_port), 15, "the sink to listen")
        yield Stack(workdir, database_url, bootstrap, sink, sink_port, records, postgres, broker)


@dataclass
class Run:
    """The services of one run, on their own database and topic prefix."""

    stack: Stack
    name: str
    services: dict[str, ServiceProcess]
    database_url: str
    prefix: str
    contact_prefix: str
    env: dict[str, str] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return self.services[service].base_url

    def sql(self, query: str) -> str:
        return psql(self.database_url, query, timeout=120)

    def put_scenario(self, doc: Mapping[str, Any]) -> None:
        response = httpx.put(
            f"{self.url('orchestrator')}/v1/scenarios/{doc['id']}",
            json=dict(doc),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )
        response.raise_for_status()

    def loadgen(self, out: Path, **config: Any) -> subprocess.Popen[str]:
        """Start :mod:`bench.loadgen` against ingest; its summary is the last stdout line."""
        settings = {
            "host": "127.0.0.1",
            "port": self.services["ingest"].port,
            "key": DEV_INGEST_API_KEY,
            "prefix": self.contact_prefix,
            "out": str(out),
            **config,
        }
        path = out.with_suffix(".json")
        path.write_text(json.dumps(settings))
        return subprocess.Popen(  # noqa: S603 - our own module and config
            [sys.executable, "-m", "bench.loadgen", str(path)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent_preexec(),
        )

    def contacts_known(self) -> int:
        return int(self.sql("SELECT count(*) FROM orchestrator.contacts") or 0)

    def create_contacts(self, count: int, *, timeout: float = 600) -> float:
        """``count`` contacts with a marketing opt-in, through ingest; returns the seconds."""
        started = time.monotonic()
        out = self.stack.workdir / f"{self.name}-contacts.txt"
        generator = self.loadgen(
            out, first=0, count=count, batch=1000, connections=4, event_type=REGISTERED,
            profile=True,
        )  # fmt: skip
        finish(generator, timeout)
        deadline = time.monotonic() + timeout
        while (known := self.contacts_known()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {known} of {count} contacts reached the orchestrator")
            for service in self.services.values():
                service.ensure_alive()
            time.sleep(0.5)
        return time.monotonic() - started

    def stop(self) -> None:
        stop_services(self.services.values())


def finish(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Wait for a load generator and return its summary."""
    stdout, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"the load generator failed ({process.returncode})")
    summary: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return summary


def start_run(stack: Stack, name: str, extra_env: Mapping[str, str]) -> Run:
    """A fresh database and topic prefix, the five services started and ready."""
    db_name = f"bench_{name}_{uuid.uuid4().hex[:6]}"
    ensure_database(stack.database_url, db_name)
    database_url = dsn_with_database(stack.database_url, db_name)
    prefix = f"b{uuid.uuid4().hex[:6]}."
    env = {
        "KAFKA_TOPIC_PREFIX": prefix,
        "LOG_LEVEL": "WARNING",
        "ORCHESTRATOR_SEND_WINDOW": "",
        "INGEST_RATE_LIMIT_PER_SECOND": "1000000",
        **extra_env,
    }
    services = start_platform(
        database_url,
        stack.bootstrap,
        stack.smtp_url,
        REPO_ROOT,
        ports={service: free_port() for service in SERVICE_NAMES},
        extra_env=env,
        log_dir=stack.workdir / f"logs-{name}",
        ready_timeout=120,
    )
    return Run(stack, name, services, database_url, prefix, f"c{uuid.uuid4().hex[:5]}-", env)


def tree_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process and its descendants, reaped ones included."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def cpu_snapshot(run: Run, extra: Mapping[str, int | None]) -> dict[str, float]:
    """CPU seconds so far of each service and of ``extra`` (broker, Postgres, sink, ...)."""
    pids: dict[str, int | None] = {name: s.pid for name, s in run.services.items()}
    pids |= dict(extra)
    return {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
