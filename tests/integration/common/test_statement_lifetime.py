"""A pooled connection prepares its statements again after ``statement_lifetime``, so a
plan made while a table was nearly empty does not outlive the table's growth."""

import asyncio
import uuid

import pytest

from stepmail_common.db import create_pool

pytestmark = pytest.mark.integration

UPDATE = "UPDATE grows SET n = n + 1 FROM unnest($1::text[]) AS u(id) WHERE grows.id = u.id"
SCANS = (
    "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = 'grows'"
)


async def _scan_of_one_update(pool, ids: list[str]) -> str:
    """How one run of the prepared update read ``grows``: ``seq`` or ``index``."""
    async with pool.acquire() as conn, conn.transaction():
        seq_before, index_before = await conn.fetchrow(SCANS)
        await conn.execute(UPDATE, ids)
        seq_after, index_after = await conn.fetchrow(SCANS)
    seq, index = seq_after - seq_before, index_after - index_before
    assert bool(seq) != bool(index), (seq, index)
    return "seq" if seq else "index"


@pytest.mark.parametrize(("lifetime", "replanned"), [(1, True), (0, False)])
async def test_a_plan_made_on_an_empty_table_lasts_only_the_statements_lifetime(
    database_url: str, lifetime: int, replanned: bool
) -> None:
    schema = f"lifetime_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(
        database_url, schema, max_size=1, generic_plans=True, statement_lifetime=lifetime
    )
    try:
        await pool.execute(f"CREATE SCHEMA {schema}")
        # Never analyzed while the test runs, as a fresh table between autovacuum passes.
        await pool.execute(
            "CREATE TABLE grows (id text PRIMARY KEY, n int NOT NULL DEFAULT 0)"
            " WITH (autovacuum_enabled = false)"
        )
        assert await _scan_of_one_update(pool, ["a"]) == "seq", "planned while empty"
        await pool.execute(
            "INSERT INTO grows (id) SELECT 'r' || i FROM generate_series(1, 50000) AS i"
        )
        assert await _scan_of_one_update(pool, ["r1", "r2"]) == "seq", "the plan is kept"
        await asyncio.sleep(lifetime + 0.5)
        expected = "index" if replanned else "seq"
        assert await _scan_of_one_update(pool, ["r1", "r2"]) == expected
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.close()
