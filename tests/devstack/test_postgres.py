import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import psutil
import pytest

from stepmail_devstack.postgres import SYSTEM_USER, EmbeddedPostgres, psql
from stepmail_devstack.processes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch():
    path = Path(tempfile.mkdtemp(prefix="stepmail-pgtest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_starts_answers_and_keeps_data_across_restart(scratch):
    server = EmbeddedPostgres(scratch / "data", free_port(), fast=True)
    try:
        server.start()
        assert psql(server.dsn(), "select 1") == "1"
        assert psql(server.dsn(), "select current_user") == "stepmail"
        assert psql(server.dsn(), "show server_encoding") == "UTF8"
        if os.geteuid() == 0:
            assert server.pid is not None
            assert psutil.Process(server.pid).username() == SYSTEM_USER
        psql(server.dsn(), "create table kept (v text); insert into kept values ('山田')")
        server.restart()
        assert psql(server.dsn(), "select v from kept") == "山田"
    finally:
        server.stop()
        server.stop()
    assert server.pid is None


async def test_session_dsn_works_with_asyncpg(postgres_dsn):
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "stepmail"
    finally:
        await conn.close()


def test_database_url_is_a_fresh_database(database_url, fresh_database, postgres_dsn):
    other = fresh_database("other")
    assert database_url != other
    assert database_url.rsplit("/", 1)[1].startswith("test_")
    psql(database_url, "create table t (id int)")
    assert psql(other, "select count(*) from pg_tables where tablename = 't'") == "0"
    assert psql(postgres_dsn, "select count(*) from pg_tables where tablename = 't'") == "0"
