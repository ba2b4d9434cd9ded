"""All of the tracker's SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg


@dataclass(frozen=True, slots=True)
class Preference:
    """A contact's state for one kind of mail; ``topics`` set means those topics only."""

    subscribed: bool
    topics: tuple[str, ...] | None
    version: int

    @property
    def all_out(self) -> bool:
        return not self.subscribed and self.topics is None


SUBSCRIBED = Preference(True, None, 0)


@dataclass(frozen=True, slots=True)
class Sent:
    """When a mail was accepted by the receiving server, and whose it was."""

    message_id: str
    contact_id: str
    at: datetime


class Repository:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    async def record_sent(self, sent: Sequence[Sent]) -> None:
        """Store when each mail was sent; a redelivered one changes nothing."""
        if not sent:
            return
        await self._pool.execute(
            "INSERT INTO deliveries (message_id, contact_id, sent_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])"
            " ON CONFLICT (message_id) DO NOTHING",
            [s.message_id for s in sent],
            [s.contact_id for s in sent],
            [s.at for s in sent],
        )

    async def sent_at(self, message_id: str) -> datetime | None:
        value: datetime | None = await self._pool.fetchval(
            "SELECT sent_at FROM deliveries WHERE message_id = $1", message_id
        )
        return value

    async def preference(self, contact_id: str, mail_kind: str) -> Preference:
        row = await self._pool.fetchrow(
            "SELECT subscribed, topics, version FROM opt_outs"
            " WHERE contact_id = $1 AND mail_kind = $2",
            contact_id,
            mail_kind,
        )
        if row is None:
            return SUBSCRIBED
        topics = row["topics"]
        return Preference(
            row["subscribed"], tuple(topics) if topics is not None else None, row["version"]
        )

    async def set_preference(
        self,
        contact_id: str,
        mail_kind: str,
        subscribed: bool,
        topics: Sequence[str] | None,
        now: datetime,
    ) -> tuple[Preference, bool]:
        """Store the state; the new preference and whether it changed (a replay does not)."""
        wanted_topics = sorted(set(topics)) if topics is not None else None
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT subscribed, topics, version FROM opt_outs"
                " WHERE contact_id = $1 AND mail_kind = $2 FOR UPDATE",
                contact_id,
                mail_kind,
            )
            if row is not None:
                current_topics = sorted(row["topics"]) if row["topics"] is not None else None
                if row["subscribed"] == subscribed and current_topics == wanted_topics:
                    return Preference(
                        subscribed,
                        tuple(wanted_topics) if wanted_topics is not None else None,
                        row["version"],
                    ), False
            elif subscribed and wanted_topics is None:
                return SUBSCRIBED, False
            version = await conn.fetchval(
                "INSERT INTO opt_outs (contact_id, mail_kind, subscribed, topics, version,"
                " updated_at) VALUES ($1, $2, $3, $4, 1, $5)"
                " ON CONFLICT (contact_id, mail_kind) DO UPDATE SET subscribed = $3,"
                " topics = $4, version = opt_outs.version + 1, updated_at = $5"
                " RETURNING version",
                contact_id,
                mail_kind,
                subscribed,
                wanted_topics,
                now,
            )
        topics_out = tuple(wanted_topics) if wanted_topics is not None else None
        return Preference(subscribed, topics_out, version), True

    async def record_signal(self, kind: str, at: datetime) -> None:
        await self._pool.execute("INSERT INTO signals (kind, at) VALUES ($1, $2)", kind, at)

    async def window_counts(self, since: datetime) -> tuple[int, int, int]:
        """(sent, complaints, unsubscribes) since ``since``."""
        row = await self._pool.fetchrow(
            "SELECT (SELECT count(*) FROM deliveries WHERE sent_at >= $1) AS sent,"
            " (SELECT count(*) FROM signals WHERE kind = 'complaint' AND at >= $1) AS complaints,"
            " (SELECT count(*) FROM signals WHERE kind = 'unsubscribe' AND at >= $1) AS unsubs",
            since,
        )
        assert row is not None
        return int(row["sent"]), int(row["complaints"]), int(row["unsubs"])

    async def prune(
        self, now: datetime, keep_deliveries: timedelta, keep_signals: timedelta
    ) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            sent = await conn.execute(
                "DELETE FROM deliveries WHERE sent_at < $1", now - keep_deliveries
            )
            signals = await conn.execute("DELETE FROM signals WHERE at < $1", now - keep_signals)
        return int(sent.split()[-1]) + int(signals.split()[-1])

    async def erase_contact(self, contact_id: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM opt_outs WHERE contact_id = $1", contact_id)
            await conn.execute("DELETE FROM deliveries WHERE contact_id = $1", contact_id)
