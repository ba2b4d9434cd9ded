"""The resources every service's lifespan opens, each closed by the exit stack."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from stepmail_common.db import create_pool, migrate
from stepmail_common.kafka import EventProducer, ensure_topics
from stepmail_common.settings import CommonSettings

if TYPE_CHECKING:
    import asyncpg


async def open_database(
    stack: AsyncExitStack,
    settings: CommonSettings,
    schema: str,
    package: str,
    *,
    generic_plans: bool = False,
) -> asyncpg.Pool[asyncpg.Record]:
    """The service's pool on its own schema, migrated to the package's latest version."""
    pool = await create_pool(
        settings.database_url,
        schema,
        max_size=settings.database_pool_max,
        generic_plans=generic_plans,
    )
    stack.push_async_callback(pool.close)
    await migrate(pool, schema, package)
    return pool


async def open_producer(
    stack: AsyncExitStack, settings: CommonSettings, service: str, topics: Sequence[str]
) -> EventProducer:
    """Make sure ``topics`` (and their dead-letter twins) exist, then start a producer."""
    await ensure_topics(
        settings.kafka_bootstrap_servers,
        topics,
        settings.kafka_topic_partitions,
        settings.kafka_topic_replication,
    )
    producer = EventProducer(
        settings.kafka_bootstrap_servers,
        f"stepmail-{service}",
        enable_idempotence=settings.kafka_enable_idempotence,
        compression=settings.kafka_compression,
    )
    await producer.start()
    stack.push_async_callback(producer.stop)
    return producer


async def migrate_only(settings: CommonSettings, schema: str, package: str) -> None:
    """``python -m stepmail_<service> migrate``: apply the migrations and leave."""
    pool = await create_pool(settings.database_url, schema, max_size=1)
    try:
        await migrate(pool, schema, package)
    finally:
        await pool.close()
