"""Session fixtures for stepmail's integration and end-to-end tests.

Every fixture starts its own component on free ports, so the tests run beside
a ``make run``; ``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` point them at
existing servers instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepmail_devstack.broker import EmbeddedBroker
from stepmail_devstack.catcher import CatcherProcess
from stepmail_devstack.postgres import (
    EmbeddedPostgres,
    dsn_with_database,
    ensure_database,
    psql,
    quote_ident,
)
from stepmail_devstack.processes import free_port
from stepmail_devstack.runner import find_repo_root

CreateDatabase = Callable[..., str]


def _scratch_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    # As root, Postgres runs as an unprivileged user that must reach the data dir.
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def repo_root(request: pytest.FixtureRequest) -> Path:
    """The checkout's root directory."""
    return find_repo_root(request.config.rootpath)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of database ``stepmail``: ``DATABASE_URL`` or a throwaway embedded server."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    scratch = _scratch_dir("stepmail-test-pg-")
    server = EmbeddedPostgres(scratch / "data", free_port(), fast=True)
    try:
        server.start()
        yield server.dsn()
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers: ``KAFKA_BOOTSTRAP_SERVERS`` or an embedded broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = EmbeddedBroker(free_port())
    try:
        broker.start()
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def smtp_catcher() -> Iterator[CatcherProcess]:
    """An SMTP catcher on free ports, shared by the session; filter by recipient or id."""
    catcher = CatcherProcess(free_port(), free_port())
    try:
        catcher.start()
        yield catcher
    finally:
        catcher.stop()


@pytest.fixture(scope="session")
def fresh_database(postgres_dsn: str) -> Iterator[CreateDatabase]:
    """Factory: ``fresh_database(prefix="test") -> DSN`` of a new, uniquely named database.

    The databases are dropped at the end of the session.
    """
    created: list[str] = []

    def create(prefix: str = "test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        ensure_database(postgres_dsn, name)
        created.append(name)
        return dsn_with_database(postgres_dsn, name)

    yield create
    for name in created:
        psql(postgres_dsn, f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


@pytest.fixture
def database_url(fresh_database: CreateDatabase) -> str:
    """DSN of a database of this test's own, empty."""
    return fresh_database()
