"""The Postgres pool and the migrations runner; each service owns one schema."""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from typing import Any

import asyncpg
import orjson

log = logging.getLogger(__name__)


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
        )


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Release a connection to the pool without asyncpg's reset query.

    The default reset (unlock advisory locks, close cursors, unlisten, reset settings) costs
    a round trip on every release; stepmail's pooled connections hold no session state
    (advisory locks are transaction-scoped, settings are ``SET LOCAL``, nothing listens),
    and asyncpg still rolls back a transaction left open before this runs.
    """


# How long a connection keeps a prepared statement, and so its plan. Postgres plans a
# statement for its tables as they are then, and keeps a generic plan until the tables are
# analyzed: on a fresh database, the sent-time update was planned as a sequential scan of
# ``messages`` (cheapest while it was nearly empty), whose cost grew with every mail until
# autovacuum's first ANALYZE a minute or more later. Prepared again every 15 s, a plan
# follows the tables' growth, for a round trip per statement and connection.
STATEMENT_LIFETIME_SECONDS = 15


def _quote_ident(name: str) -> str:
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


async def create_pool(
    dsn: str,
    schema: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    generic_plans: bool = False,
    statement_lifetime: int = STATEMENT_LIFETIME_SECONDS,
) -> asyncpg.Pool[asyncpg.Record]:
    """A pool whose connections see ``schema`` first and decode JSON with orjson.

    ``generic_plans`` makes Postgres plan each prepared statement once, for a service whose
    statements are set-based over array parameters: their best plan does not depend on the
    values, and left to choose, Postgres may plan a large statement again at every call
    (it did so for the sender's claim of a few mails at a time, at about 0.3 ms a call).
    """
    settings = {"search_path": f"{_quote_ident(schema)},public", "timezone": "UTC"}
    if generic_plans:
        settings["plan_cache_mode"] = "force_generic_plan"
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings=settings,
        command_timeout=30,
        max_cached_statement_lifetime=statement_lifetime,
    )
    assert pool is not None
    return pool


def _lock_key(schema: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True
    )


async def migrate(pool: asyncpg.Pool[asyncpg.Record], schema: str, package: str) -> list[str]:
    """Apply ``<package>/migrations/*.sql`` in name order, once each, under an advisory lock.

    Safe with any number of replicas starting at once: the lock serialises them and the
    ``schema_migrations`` table records what ran. Returns the versions applied now.
    """
    quoted = _quote_ident(schema)
    files = sorted(
        (
            f
            for f in resources.files(package).joinpath("migrations").iterdir()
            if f.name.endswith(".sql")
        ),
        key=lambda f: f.name,
    )
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            listed = f"SELECT version FROM {quoted}.schema_migrations"  # noqa: S608 - quoted ident
            done = {r["version"] for r in await conn.fetch(listed)}
            for file in files:
                version = file.name.removesuffix(".sql")
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {quoted}")
                    await conn.execute(file.read_text(encoding="utf-8"))
                    await conn.execute(
                        f"INSERT INTO {quoted}.schema_migrations (version) VALUES ($1)",  # noqa: S608
                        version,
                    )
                applied_now.append(version)
                log.info("migration applied", extra={"schema": schema, "version": version})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    return applied_now
