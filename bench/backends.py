"""Postgres and the broker for a benchmark: the ones the environment names, else embedded.

``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` win; otherwise an embedded Postgres
(fsync off) in the benchmark's work directory and an embedded Tansu broker are started,
and stopped when ``stack`` closes.
"""

import os
from contextlib import ExitStack
from pathlib import Path

from stepmail_devstack.broker import EmbeddedBroker
from stepmail_devstack.postgres import EmbeddedPostgres
from stepmail_devstack.processes import free_port


def postgres(
    stack: ExitStack, workdir: Path, log_path: Path | None = None
) -> tuple[str, EmbeddedPostgres | None]:
    """The server's URL, and the embedded server when one was started (a restart needs it)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, None
    workdir.chmod(0o755)  # the embedded Postgres runs as its own user
    server = EmbeddedPostgres(workdir / "pg", free_port(), fast=True, log_path=log_path)
    server.start()
    stack.callback(server.stop)
    return server.dsn(), server


def kafka(stack: ExitStack, log_path: Path | None = None) -> tuple[str, EmbeddedBroker | None]:
    """The bootstrap servers, and the embedded broker when one was started."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        return bootstrap, None
    broker = EmbeddedBroker(free_port(), log_path=log_path)
    broker.start()
    stack.callback(broker.stop)
    return broker.bootstrap_servers, broker
