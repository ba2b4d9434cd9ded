"""All of the renderer's SQL."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from stepmail_renderer.templates import LayoutSource, StoredTemplate, TemplateSource

_COLUMNS = (
    "t.id, t.version, t.mail_kind, t.subject, t.preheader, t.html, t.text, t.sender,"
    " t.event_properties, t.contact_attributes, t.sample, t.description, t.updated_at,"
    " a.id IS NOT NULL AS archived"
)
_FROM = "templates t LEFT JOIN template_archive a ON a.id = t.id"
# The latest version of every layout, as {name: [version, source]}.
_LAYOUTS = (
    "SELECT DISTINCT ON (name) name, version, source FROM layouts ORDER BY name, version DESC"
)


def _tuple(value: list[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _stored(row: asyncpg.Record) -> StoredTemplate:
    source = TemplateSource(
        id=row["id"],
        mail_kind=row["mail_kind"],
        subject=row["subject"],
        preheader=row["preheader"],
        html=row["html"],
        text=row["text"],
        sender=row["sender"],
        event_properties=_tuple(row["event_properties"]),
        contact_attributes=_tuple(row["contact_attributes"]),
        sample=row["sample"],
        description=row["description"],
    )
    return StoredTemplate(source, row["version"], archived=row["archived"])


@dataclass(frozen=True, slots=True)
class TemplateSummary:
    """One template in the list: its latest version."""

    id: str
    version: int
    mail_kind: str
    description: str | None
    archived: bool
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FailureCount:
    """How often one template version failed with one error class."""

    version: int
    error: str
    failures: int
    last_at: datetime


class RendererRepository:
    def __init__(self, pool: "asyncpg.Pool[asyncpg.Record]") -> None:
        self._pool = pool

    async def save_template(self, source: TemplateSource) -> tuple[int, bool]:
        """Store ``source`` as a new version unless the latest one has the same content.

        Returns the current version and whether it was created now. Saving a template
        un-archives it. Replicas starting together serialise on a transaction-scoped
        advisory lock per template id.
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
                " preheader, html, text, sender, event_properties, contact_attributes,"
                " sample, description)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                source.id,
                version,
                source.content_hash,
                source.mail_kind,
                source.subject,
                source.preheader,
                source.html,
                source.text,
                source.sender,
                _list(source.event_properties),
                _list(source.contact_attributes),
                source.sample,
                source.description,
            )
            await conn.execute("DELETE FROM template_archive WHERE id = $1", source.id)
            return version, True

    async def template(self, template_id: str, version: int | None = None) -> StoredTemplate | None:
        """A version of a template, the latest when ``version`` is ``None``."""
        if version is None:
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM {_FROM} WHERE t.id = $1"  # noqa: S608 - constants
                " ORDER BY t.version DESC LIMIT 1",
                template_id,
            )
        else:
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS} FROM {_FROM} WHERE t.id = $1 AND t.version = $2",  # noqa: S608
                template_id,
                version,
            )
        return None if row is None else _stored(row)

    async def latest_template(self, template_id: str) -> StoredTemplate | None:
        return await self.template(template_id)

    async def latest_versions(self, template_ids: Sequence[str]) -> dict[str, tuple[int, bool]]:
        """The latest version of each template and whether it is archived, in one query."""
        rows = await self._pool.fetch(
            "SELECT t.id, max(t.version) AS version,"
            " EXISTS (SELECT 1 FROM template_archive a WHERE a.id = t.id) AS archived"
            " FROM templates t WHERE t.id = ANY($1::text[]) GROUP BY t.id",
            list(template_ids),
        )
        return {r["id"]: (int(r["version"]), bool(r["archived"])) for r in rows}

    async def layout_versions(self) -> dict[str, int]:
        rows = await self._pool.fetch(
            "SELECT name, max(version) AS version FROM layouts GROUP BY name"
        )
        return {r["name"]: int(r["version"]) for r in rows}

    async def layouts(self) -> dict[str, tuple[int, str]]:
        async with self._pool.acquire() as conn:
            return await self._layouts(conn)

    @staticmethod
    async def _layouts(conn: Any) -> dict[str, tuple[int, str]]:
        rows = await conn.fetch(_LAYOUTS)
        return {r["name"]: (int(r["version"]), r["source"]) for r in rows}

    async def layout(self, name: str, version: int | None = None) -> tuple[int, str] | None:
        row = await self._pool.fetchrow(
            "SELECT version, source FROM layouts WHERE name = $1"
            " AND ($2::integer IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
            name,
            version,
        )
        return None if row is None else (int(row["version"]), row["source"])

    async def save_layout(self, layout: LayoutSource) -> tuple[int, bool]:
        """Store a layout as a new version unless unchanged; (version, created)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('renderer.layouts:' || $1, 0))",
                layout.name,
            )
            latest = await conn.fetchrow(
                "SELECT version, content_hash FROM layouts WHERE name = $1"
                " ORDER BY version DESC LIMIT 1",
                layout.name,
            )
            if latest is not None and bytes(latest["content_hash"]) == layout.content_hash:
                return int(latest["version"]), False
            version = 1 if latest is None else int(latest["version"]) + 1
            await conn.execute(
                "INSERT INTO layouts (name, version, content_hash, source) VALUES ($1, $2, $3, $4)",
                layout.name,
                version,
                layout.content_hash,
                layout.source,
            )
            return version, True

    async def list_templates(self, include_archived: bool) -> list[TemplateSummary]:
        rows = await self._pool.fetch(
            "SELECT DISTINCT ON (t.id) t.id, t.version, t.mail_kind, t.description,"  # noqa: S608
            " t.updated_at, a.id IS NOT NULL AS archived"
            f" FROM {_FROM} ORDER BY t.id, t.version DESC"
        )
        return [
            TemplateSummary(
                r["id"],
                r["version"],
                r["mail_kind"],
                r["description"],
                r["archived"],
                r["updated_at"],
            )
            for r in rows
            if include_archived or not r["archived"]
        ]

    async def versions(self, template_id: str) -> list[tuple[int, datetime]]:
        rows = await self._pool.fetch(
            "SELECT version, updated_at FROM templates WHERE id = $1 ORDER BY version",
            template_id,
        )
        return [(int(r["version"]), r["updated_at"]) for r in rows]

    async def archive(self, template_id: str) -> bool:
        """Archive a template; ``False`` when there is no such template."""
        async with self._pool.acquire() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT 1 FROM templates WHERE id = $1 LIMIT 1", template_id
            )
            if not exists:
                return False
            await conn.execute(
                "INSERT INTO template_archive (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
                template_id,
            )
            return True

    async def record_failure(
        self, template_id: str, version: int, error: str, at: datetime
    ) -> None:
        await self._pool.execute(
            "INSERT INTO render_failures (template_id, version, error, failures, last_at)"
            " VALUES ($1, $2, $3, 1, $4) ON CONFLICT (template_id, version, error)"
            " DO UPDATE SET failures = render_failures.failures + 1, last_at = EXCLUDED.last_at",
            template_id,
            version,
            error,
            at,
        )

    async def failures(self, template_id: str | None = None) -> dict[str, list[FailureCount]]:
        rows = await self._pool.fetch(
            "SELECT template_id, version, error, failures, last_at FROM render_failures"
            " WHERE $1::text IS NULL OR template_id = $1 ORDER BY template_id, version, error",
            template_id,
        )
        out: dict[str, list[FailureCount]] = {}
        for r in rows:
            out.setdefault(r["template_id"], []).append(
                FailureCount(r["version"], r["error"], r["failures"], r["last_at"])
            )
        return out

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")


def _list(value: tuple[str, ...] | None) -> list[str] | None:
    return None if value is None else list(value)
