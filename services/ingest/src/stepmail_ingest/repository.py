"""All of ingest's SQL."""

import uuid
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    name: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Remembered:
    event_id: str
    fingerprint: bytes


class IngestRepository:
    def __init__(self, pool: "asyncpg.Pool[asyncpg.Record]") -> None:
        self._pool = pool

    async def api_key_by_hash(self, key_hash: bytes) -> ApiKey | None:
        row = await self._pool.fetchrow(
            "SELECT id, name, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            key_hash,
        )
        return None if row is None else ApiKey(row["id"], row["name"], frozenset(row["scopes"]))

    async def ensure_api_key(self, name: str, key_hash: bytes, scopes: list[str]) -> None:
        await self._pool.execute(
            "INSERT INTO api_keys (id, name, key_hash, scopes) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (key_hash) DO NOTHING",
            uuid.uuid4(),
            name,
            key_hash,
            scopes,
        )

    async def remembered(self, api_key_id: uuid.UUID, key: str) -> Remembered | None:
        row = await self._pool.fetchrow(
            "SELECT event_id, fingerprint FROM idempotency_keys"
            " WHERE api_key_id = $1 AND key = $2 AND created_at > now() - interval '48 hours'",
            api_key_id,
            key,
        )
        return None if row is None else Remembered(row["event_id"], bytes(row["fingerprint"]))

    async def remember(
        self, api_key_id: uuid.UUID, key: str, fingerprint: bytes, event_id: str
    ) -> None:
        await self._pool.execute(
            "INSERT INTO idempotency_keys (api_key_id, key, fingerprint, event_id)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (api_key_id, key) DO NOTHING",
            api_key_id,
            key,
            fingerprint,
            event_id,
        )
