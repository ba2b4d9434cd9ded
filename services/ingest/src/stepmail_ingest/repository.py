"""All of ingest's SQL."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    name: str
    scopes: frozenset[str]
    rate_limit_per_second: float | None = None

    @property
    def scope(self) -> str:
        """The idempotency scope of requests made with this key."""
        return str(self.id)


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    id: uuid.UUID
    name: str
    scopes: list[str]
    rate_limit_per_second: float | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Remembered:
    event_id: str
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class WebhookSource:
    name: str
    kind: str
    secret: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Remember:
    key: str
    fingerprint: bytes
    event_id: str


class IngestRepository:
    def __init__(self, pool: "asyncpg.Pool[asyncpg.Record]", idempotency_hours: int = 48) -> None:
        self._pool = pool
        self._hours = idempotency_hours

    # API keys

    async def api_key_by_hash(self, key_hash: bytes) -> ApiKey | None:
        row = await self._pool.fetchrow(
            "SELECT id, name, scopes, rate_limit_per_second FROM api_keys"
            " WHERE key_hash = $1 AND revoked_at IS NULL",
            key_hash,
        )
        if row is None:
            return None
        return ApiKey(
            row["id"], row["name"], frozenset(row["scopes"]), row["rate_limit_per_second"]
        )

    async def ensure_api_key(self, name: str, key_hash: bytes, scopes: list[str]) -> None:
        await self._pool.execute(
            "INSERT INTO api_keys (id, name, key_hash, scopes) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (key_hash) DO NOTHING",
            uuid.uuid4(),
            name,
            key_hash,
            scopes,
        )

    async def create_api_key(
        self, name: str, key_hash: bytes, scopes: list[str], rate_limit: float | None
    ) -> ApiKeyRow:
        row = await self._pool.fetchrow(
            "INSERT INTO api_keys (id, name, key_hash, scopes, rate_limit_per_second)"
            " VALUES ($1, $2, $3, $4, $5)"
            " RETURNING id, name, scopes, rate_limit_per_second, created_at, revoked_at",
            uuid.uuid4(),
            name,
            key_hash,
            scopes,
            rate_limit,
        )
        assert row is not None
        return _key_row(row)

    async def list_api_keys(self) -> list[ApiKeyRow]:
        rows = await self._pool.fetch(
            "SELECT id, name, scopes, rate_limit_per_second, created_at, revoked_at"
            " FROM api_keys ORDER BY created_at, id"
        )
        return [_key_row(r) for r in rows]

    async def revoke_api_key(self, key_id: uuid.UUID) -> bytes | None:
        """Revoke; returns the key's hash (to drop it from caches), ``None`` if unknown."""
        row = await self._pool.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
            " WHERE id = $1 RETURNING key_hash",
            key_id,
        )
        return None if row is None else bytes(row["key_hash"])

    # Idempotency

    async def remembered(self, scope: str, keys: Sequence[str]) -> dict[str, Remembered]:
        rows = await self._pool.fetch(
            "SELECT key, event_id, fingerprint FROM idempotency_keys"
            " WHERE scope = $1 AND key = ANY($2::text[])"
            " AND created_at > now() - make_interval(hours => $3)",
            scope,
            list(keys),
            self._hours,
        )
        return {r["key"]: Remembered(r["event_id"], bytes(r["fingerprint"])) for r in rows}

    async def remember(self, scope: str, items: Sequence[Remember]) -> None:
        """Record keys whose events the broker acknowledged; an expired row is renewed."""
        await self._pool.execute(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, event_id)"
            " SELECT $1, k, f, e FROM unnest($2::text[], $3::bytea[], $4::text[]) AS t(k, f, e)"
            " ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            " event_id = excluded.event_id, created_at = now()"
            " WHERE idempotency_keys.created_at <= now() - make_interval(hours => $5)",
            scope,
            [i.key for i in items],
            [i.fingerprint for i in items],
            [i.event_id for i in items],
            self._hours,
        )

    async def forget_expired(self, limit: int = 5000) -> int:
        """Delete up to ``limit`` idempotency rows past the window; returns how many."""
        result = await self._pool.execute(
            "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY("
            " SELECT ctid FROM idempotency_keys"
            " WHERE created_at <= now() - make_interval(hours => $1) LIMIT $2))",
            self._hours,
            limit,
        )
        return int(result.split()[-1])

    # Webhook sources

    async def webhook_source(self, name: str) -> WebhookSource | None:
        row = await self._pool.fetchrow(
            "SELECT name, kind, secret, created_at, updated_at FROM webhook_sources"
            " WHERE name = $1",
            name,
        )
        return None if row is None else _source(row)

    async def put_webhook_source(
        self, name: str, kind: str, secret: str
    ) -> tuple[WebhookSource, bool]:
        """Create or replace; returns the source and whether it was created."""
        row = await self._pool.fetchrow(
            "INSERT INTO webhook_sources (name, kind, secret) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, secret = excluded.secret,"
            " updated_at = now()"
            " RETURNING name, kind, secret, created_at, updated_at, (xmax = 0) AS created",
            name,
            kind,
            secret,
        )
        assert row is not None
        return _source(row), bool(row["created"])

    async def list_webhook_sources(self) -> list[WebhookSource]:
        rows = await self._pool.fetch(
            "SELECT name, kind, secret, created_at, updated_at FROM webhook_sources ORDER BY name"
        )
        return [_source(r) for r in rows]

    async def delete_webhook_source(self, name: str) -> bool:
        result = await self._pool.execute("DELETE FROM webhook_sources WHERE name = $1", name)
        return result != "DELETE 0"


def _key_row(row: asyncpg.Record) -> ApiKeyRow:
    return ApiKeyRow(
        row["id"],
        row["name"],
        list(row["scopes"]),
        row["rate_limit_per_second"],
        row["created_at"],
        row["revoked_at"],
    )


def _source(row: asyncpg.Record) -> WebhookSource:
    return WebhookSource(
        row["name"], row["kind"], row["secret"], row["created_at"], row["updated_at"]
    )
