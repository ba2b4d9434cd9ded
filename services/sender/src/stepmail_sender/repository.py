"""All of the sender's SQL: the delivery ledger and owner liveness.

Every state change is a conditional ``UPDATE`` on the row's current state (and, for a
row in ``sending``, on its owner and attempt), so two processes can never both move the
same row: the loser's update matches nothing.
"""

from datetime import datetime
from typing import Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from stepmail_sender.domain import Delivery, Parcel, Policy, RenderedMail

# A pool, a pooled connection or a plain one: all run queries the same way.
Conn: TypeAlias = (
    "asyncpg.Pool[asyncpg.Record] | asyncpg.Connection[asyncpg.Record]"
    " | PoolConnectionProxy[asyncpg.Record]"
)

# classid of the sender's owner locks (two-int form, objsubid 2), apart from other locks.
OWNER_LOCK_CLASS: Final = 0x53454E44  # "SEND"

_COLUMNS = (
    "message_id, contact_id, scenario_id, scenario_version, step_id, step_index, state,"
    " attempt, owner, resend, policy, smtp_code, smtp_response, created_at, updated_at,"
    " claimed_at, finished_at"
)


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(**{key: row[key] for key in row.keys()})  # noqa: SIM118 - Record


async def insert_if_absent(conn: Conn, mail: RenderedMail, at: datetime) -> bool:
    """Record a mail as ``accepted`` unless its message id is known; ``True`` if new."""
    status: str = await conn.execute(
        "INSERT INTO deliveries (message_id, contact_id, enrollment_id, scenario_id,"
        " scenario_version, step_id, step_index, mail_kind, mail, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"
        " ON CONFLICT (message_id) DO NOTHING",
        mail.message_id,
        mail.contact_id,
        mail.enrollment_id,
        mail.scenario_id,
        mail.scenario_version,
        mail.step_id,
        mail.step_index,
        mail.mail_kind,
        mail.parcel.to_json(),
        at,
    )
    return status.endswith(" 1")


async def claim(conn: Conn, message_id: str, owner: int, at: datetime) -> Delivery | None:
    """Take a mail that may be sent (new, or ambiguous under ``resend``) into ``sending``."""
    row = await conn.fetchrow(
        "UPDATE deliveries SET state = 'sending', owner = $2, attempt = attempt + 1,"  # noqa: S608 - constant columns
        " resend = (state = 'ambiguous'), smtp_code = NULL, smtp_response = NULL,"
        " claimed_at = $3, updated_at = $3, finished_at = NULL"
        " WHERE message_id = $1"
        " AND (state = 'accepted' OR (state = 'ambiguous' AND policy = 'resend'))"
        f" RETURNING {_COLUMNS}",
        message_id,
        owner,
        at,
    )
    return None if row is None else _delivery(row)


async def finish(
    conn: Conn,
    claimed: Delivery,
    state: str,
    smtp_code: int | None,
    smtp_response: str | None,
    at: datetime,
) -> Delivery | None:
    """Record the answer of the claimed attempt; ``None`` if the claim was lost meanwhile."""
    row = await conn.fetchrow(
        "UPDATE deliveries SET state = $4, smtp_code = $5, smtp_response = $6,"  # noqa: S608 - constant columns
        " finished_at = $7, updated_at = $7, mail = NULL"
        " WHERE message_id = $1 AND state = 'sending' AND owner = $2 AND attempt = $3"
        f" RETURNING {_COLUMNS}",
        claimed.message_id,
        claimed.owner,
        claimed.attempt,
        state,
        smtp_code,
        smtp_response,
        at,
    )
    return None if row is None else _delivery(row)


async def mark_ambiguous(
    conn: Conn,
    stuck: Delivery,
    policy: Policy,
    smtp_response: str | None,
    at: datetime,
) -> Delivery | None:
    """Turn an attempt whose fate is unknown into ``ambiguous``; keep the parcel to resend."""
    row = await conn.fetchrow(
        "UPDATE deliveries SET state = 'ambiguous', policy = $4::text, smtp_code = NULL,"  # noqa: S608 - constant columns
        " smtp_response = $5::text, updated_at = $6::timestamptz,"
        " finished_at = CASE WHEN $4::text = 'hold' THEN $6::timestamptz END,"
        " mail = CASE WHEN $4::text = 'hold' THEN NULL ELSE mail END"
        " WHERE message_id = $1 AND state = 'sending' AND owner = $2 AND attempt = $3"
        f" RETURNING {_COLUMNS}",
        stuck.message_id,
        stuck.owner,
        stuck.attempt,
        policy,
        smtp_response,
        at,
    )
    return None if row is None else _delivery(row)


async def get(conn: Conn, message_id: str) -> Delivery | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM deliveries WHERE message_id = $1",  # noqa: S608 - constant
        message_id,
    )
    return None if row is None else _delivery(row)


async def parcel(conn: Conn, message_id: str) -> Parcel | None:
    doc = await conn.fetchval("SELECT mail FROM deliveries WHERE message_id = $1", message_id)
    return None if doc is None else Parcel.from_json(doc)


async def orphans(conn: Conn, me: int, limit: int = 500) -> list[Delivery]:
    """Rows in ``sending`` whose owner holds no lock any more, and rows of this process."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM deliveries d WHERE d.state = 'sending'"  # noqa: S608 - constant
        " AND (d.owner = $1 OR NOT EXISTS ("
        "  SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
        "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "  AND l.classid = $2::bigint::oid AND l.objid = d.owner::oid AND l.objsubid = 2))"
        " ORDER BY d.claimed_at LIMIT $3",
        me,
        OWNER_LOCK_CLASS,
        limit,
    )
    return [_delivery(r) for r in rows]


async def owner_alive(conn: Conn, owner: int) -> bool:
    """Whether some session holds ``owner``'s lock, i.e. its process still runs."""
    alive: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2)",
        OWNER_LOCK_CLASS,
        owner,
    )
    return alive


async def try_owner_lock(conn: Conn, owner: int) -> bool:
    """Take ``owner``'s session lock if no one holds it and no row carries it yet."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", OWNER_LOCK_CLASS, owner):
        return False
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM deliveries WHERE owner = $1)", owner):
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", OWNER_LOCK_CLASS, owner)
        return False
    return True
