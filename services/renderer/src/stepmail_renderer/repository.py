"""All of the renderer's SQL."""

import asyncpg

from stepmail_renderer.templates import StoredTemplate, TemplateSource

_COLUMNS = "id, version, mail_kind, subject, preheader, html, text"


def _stored(row: asyncpg.Record) -> StoredTemplate:
    source = TemplateSource(
        id=row["id"],
        mail_kind=row["mail_kind"],
        subject=row["subject"],
        preheader=row["preheader"],
        html=row["html"],
        text=row["text"],
    )
    return StoredTemplate(source, row["version"])


class RendererRepository:
    def __init__(self, pool: "asyncpg.Pool[asyncpg.Record]") -> None:
        self._pool = pool

    async def save_template(self, source: TemplateSource) -> tuple[int, bool]:
        """Store ``source`` as a new version unless the latest one has the same content.

        Returns the current version and whether it was created now. Replicas starting
        together serialise on a transaction-scoped advisory lock per template id.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('renderer.templates:' || $1, 0))",
                source.id,
            )
            latest = await conn.fetchrow(
                "SELECT version, content_hash FROM templates WHERE id = $1"
                " ORDER BY version DESC LIMIT 1",
                source.id,
            )
            if latest is not None and bytes(latest["content_hash"]) == source.content_hash:
                return int(latest["version"]), False
            version = 1 if latest is None else int(latest["version"]) + 1
            await conn.execute(
                "INSERT INTO templates (id, version, content_hash, mail_kind, subject,"
                " preheader, html, text) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                source.id,
                version,
                source.content_hash,
                source.mail_kind,
                source.subject,
                source.preheader,
                source.html,
                source.text,
            )
            return version, True

    async def latest_template(self, template_id: str) -> StoredTemplate | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM templates WHERE id = $1"  # noqa: S608 - constant columns
            " ORDER BY version DESC LIMIT 1",
            template_id,
        )
        return None if row is None else _stored(row)

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")
