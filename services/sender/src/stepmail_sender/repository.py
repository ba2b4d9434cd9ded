"""All of the sender's SQL: the delivery ledger and owner liveness.

Every state change is a conditional ``UPDATE`` on the row's current state (and, for a
row in ``sending``, on its owner and attempt), so two processes can never both move the
same row: the loser's update matches nothing.
"""

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from stepmail_common.outbox import StoredEvent
from stepmail_sender.domain import Delivery, Outcome, Parcel, Policy, RenderedMail

# A pool, a pooled connection or a plain one: all run queries the same way.
Conn: TypeAlias = (
    "asyncpg.Pool[asyncpg.Record] | asyncpg.Connection[asyncpg.Record]"
    " | PoolConnectionProxy[asyncpg.Record]"
)

# A recorded answer: the claim, its outcome, the parcel to keep (deferred mails only),
# and the outcome's outbox event and trace carrier.
Finish: TypeAlias = tuple[Delivery, Outcome, Parcel | None, dict[str, Any], dict[str, str] | None]

# classid of the sender's owner locks (two-int form, objsubid 2), apart from other locks.
OWNER_LOCK_CLASS: Final = 0x53454E44  # "SEND"

_COLUMNS = ", ".join(f.name for f in dataclasses.fields(Delivery))
_D_COLUMNS = ", ".join(f"d.{c.strip()}" for c in _COLUMNS.split(","))

# A row that may be claimed now: new, ambiguous under ``resend``, or deferred and due.
_CLAIMABLE = (
    "(d.state = 'accepted' OR (d.state = 'ambiguous' AND d.policy = 'resend')"
    " OR (d.state = 'deferred' AND d.next_attempt_at <= $3::timestamptz))"
)


def _suppressed_because(row: str) -> str:
    """Why the recipient of ``row`` (an alias with the ledger's columns) must not get it,
    if they must not (NULL otherwise): a suppression of the address or contact, else an
    opt-out of the mail's topic (``domain.TOPIC_OPT_OUT``)."""
    return (
        "COALESCE((SELECT s.reason FROM suppressions s"  # noqa: S608 - a constant alias
        f" WHERE s.mail_kind IN ('*', {row}.mail_kind) AND"
        f" ((s.scope = 'address' AND s.key = {row}.rcpt_hash)"
        f" OR (s.scope = 'contact' AND s.key = {row}.contact_id))"
        " ORDER BY s.created_at LIMIT 1),"
        " (SELECT 'unsubscribed_topic'::text FROM topic_opt_outs t"
        f" WHERE t.contact_id = {row}.contact_id"
        f" AND t.mail_kind = {row}.mail_kind AND t.topic = {row}.topic))"
    )


_SUPPRESSED_BECAUSE = _suppressed_because("d")


def _delivery(row: asyncpg.Record) -> Delivery:
    # The columns are selected in the order of the fields (``_COLUMNS``).
    return Delivery(*row)


def _mail_columns(mails: Sequence[RenderedMail], hashes: Sequence[str]) -> list[list[Any]]:
    """The ledger columns of ``mails`` as arrays, ``$1`` to ``$11`` of the statements that
    record them."""
    return [
        [m.message_id for m in mails],
        [m.contact_id for m in mails],
        [m.enrollment_id for m in mails],
        [m.scenario_id for m in mails],
        [m.scenario_version for m in mails],
        [m.step_id for m in mails],
        [m.step_index for m in mails],
        [m.mail_kind for m in mails],
        list(hashes),
        [m.parcel.rcpt_domain for m in mails],
        [m.topic for m in mails],
    ]


async def insert_many(
    conn: Conn, mails: Sequence[RenderedMail], hashes: Sequence[str], at: datetime
) -> int:
    """Record mails as ``accepted`` unless their message id is known; returns how many were new.

    The MIME is not stored here: a mail sent at once never needs it again. It is stored
    when a mail has to be sent later (``deferred``, or ``ambiguous`` under ``resend``);
    the mails of a process killed mid-send come back with their uncommitted records.
    """
    status: str = await conn.execute(
        "INSERT INTO deliveries (message_id, contact_id, enrollment_id, scenario_id,"
        " scenario_version, step_id, step_index, mail_kind, rcpt_hash, rcpt_domain,"
        " topic, created_at, updated_at)"
        " SELECT m.*, $12::timestamptz, $12::timestamptz FROM unnest($1::text[], $2::text[],"
        " $3::text[], $4::text[], $5::int[], $6::text[], $7::int[], $8::text[], $9::text[],"
        " $10::text[], $11::text[]) AS m ON CONFLICT (message_id) DO NOTHING",
        *_mail_columns(mails, hashes),
        at,
    )
    return int(status.rsplit(" ", 1)[-1])


async def claim_new(
    conn: Conn,
    mails: Sequence[RenderedMail],
    hashes: Sequence[str],
    owner: int,
    at: datetime,
) -> list[Delivery]:
    """Record the mails whose message id is new straight in ``sending`` (or ``suppressed``),
    claimed by ``owner``: one statement, where recording them ``accepted`` and then
    claiming them would take two and leave a dead row version each.

    Mails already in the ledger are left out; ``claim_many`` takes those that may go.
    """
    rows = await conn.fetch(
        "INSERT INTO deliveries AS d (message_id, contact_id, enrollment_id, scenario_id,"  # noqa: S608 - constant columns
        " scenario_version, step_id, step_index, mail_kind, rcpt_hash, rcpt_domain, topic,"
        " created_at, updated_at, claimed_at, state, reason, owner, attempt, finished_at)"
        " SELECT m.*, $12::timestamptz, $12::timestamptz, $12::timestamptz,"
        " CASE WHEN w.why IS NULL THEN 'sending' ELSE 'suppressed' END, w.why, $13, 1,"
        " CASE WHEN w.why IS NULL THEN NULL ELSE $12::timestamptz END"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],"
        " $7::int[], $8::text[], $9::text[], $10::text[], $11::text[]) AS m(message_id,"
        " contact_id, enrollment_id, scenario_id, scenario_version, step_id, step_index,"
        " mail_kind, rcpt_hash, rcpt_domain, topic)"
        f" CROSS JOIN LATERAL (SELECT {_suppressed_because('m')}) AS w(why)"
        f" ORDER BY m.message_id ON CONFLICT (message_id) DO NOTHING RETURNING {_D_COLUMNS}",
        *_mail_columns(mails, hashes),
        at,
        owner,
    )
    return [_delivery(r) for r in rows]


async def claim_sending(
    conn: Conn,
    mails: Sequence[RenderedMail],
    hashes: Sequence[str],
    owner: int,
    at: datetime,
    topic: str,
    events: Sequence[StoredEvent],
) -> set[str]:
    """Record the new mails that may go straight in ``sending``, claimed by ``owner``,
    with their ``events`` (one per mail, in order): one statement, no transaction around it.

    Returns the message ids recorded. Mails already in the ledger and mails whose
    recipient is suppressed are left out; ``claim_new`` records the suppressed ones.
    """
    rows = await conn.fetch(
        "WITH m AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"  # noqa: S608 - constant
        " $5::int[], $6::text[], $7::int[], $8::text[], $9::text[], $10::text[], $11::text[],"
        " $14::text[], $15::json[], $16::json[]) WITH ORDINALITY AS m(message_id,"
        " contact_id, enrollment_id, scenario_id, scenario_version, step_id, step_index,"
        " mail_kind, rcpt_hash, rcpt_domain, topic, key, event, trace, n)),"
        " d AS (INSERT INTO deliveries AS d (message_id, contact_id, enrollment_id,"
        " scenario_id, scenario_version, step_id, step_index, mail_kind, rcpt_hash,"
        " rcpt_domain, topic, created_at, updated_at, claimed_at, state, owner, attempt)"
        " SELECT m.message_id, m.contact_id, m.enrollment_id, m.scenario_id,"
        " m.scenario_version, m.step_id, m.step_index, m.mail_kind, m.rcpt_hash,"
        " m.rcpt_domain, m.topic, $12, $12, $12, 'sending', $13, 1 FROM m"
        f" WHERE {_suppressed_because('m')} IS NULL"
        " ORDER BY m.message_id ON CONFLICT (message_id) DO NOTHING RETURNING d.message_id),"
        " o AS (INSERT INTO outbox (topic, key, event, trace)"
        " SELECT $17, m.key, m.event, m.trace FROM m JOIN d USING (message_id) ORDER BY m.n)"
        " SELECT message_id FROM d",
        *_mail_columns(mails, hashes),
        at,
        owner,
        [key for key, _, _ in events],
        [event for _, event, _ in events],
        [trace for _, _, trace in events],
        topic,
    )
    return {r["message_id"] for r in rows}


async def claim_many(
    conn: Conn, message_ids: Sequence[str], owner: int, at: datetime
) -> list[Delivery]:
    """Take the claimable mails among ``message_ids`` into ``sending`` (or ``suppressed``).

    Rows another transaction holds are skipped: the caller looks at them one by one.
    A suppressed recipient's mail is settled here, before anything is handed over.
    """
    rows = await conn.fetch(
        "WITH target AS ("  # noqa: S608 - constant columns
        f" SELECT d.message_id, {_SUPPRESSED_BECAUSE} AS why FROM deliveries d"
        f" WHERE d.message_id = ANY($1::text[]) AND {_CLAIMABLE}"
        " ORDER BY d.message_id FOR UPDATE OF d SKIP LOCKED)"
        " UPDATE deliveries d SET"
        " state = CASE WHEN t.why IS NULL THEN 'sending' ELSE 'suppressed' END,"
        " reason = t.why, owner = $2, attempt = d.attempt + 1,"
        " resend = (d.state = 'ambiguous'), smtp_code = NULL, smtp_response = NULL,"
        " claimed_at = $3, updated_at = $3, next_attempt_at = NULL,"
        " finished_at = CASE WHEN t.why IS NULL THEN NULL ELSE $3::timestamptz END,"
        " mail = CASE WHEN t.why IS NULL THEN d.mail END"
        f" FROM target t WHERE d.message_id = t.message_id RETURNING {_D_COLUMNS}",
        list(message_ids),
        owner,
        at,
    )
    return [_delivery(r) for r in rows]


async def claim(conn: Conn, message_id: str, owner: int, at: datetime) -> Delivery | None:
    """Take one claimable mail into ``sending`` (or ``suppressed``)."""
    claimed = await claim_many(conn, [message_id], owner, at)
    return claimed[0] if claimed else None


async def finish_many(
    conn: Conn,
    done: Sequence[Finish],
    owner: int,
    at: datetime,
    topic: str,
) -> set[str]:
    """Record the answers of claimed attempts, each with its delivery event, in one
    statement; returns the message ids recorded (a claim lost meanwhile is left out, and
    so is its event).

    A ``deferred`` mail is sent again later: its parcel (``mail``, unless the ledger holds
    it already) is stored; once the fate is known, it is dropped. A hard bounce suppresses
    the recipient's address in the same statement.
    """
    if not done:
        return set()
    rows = await conn.fetch(
        "WITH v AS (SELECT * FROM json_to_recordset($1::json) AS v(n int, message_id text,"
        " attempt int, state text, code int, text text, bounce text, dsn text,"
        " next_at timestamptz, mail jsonb, key text, event json, trace json)),"
        " f AS (UPDATE deliveries d SET state = v.state, smtp_code = v.code,"
        " smtp_response = v.text, bounce = v.bounce, dsn = v.dsn,"
        " next_attempt_at = v.next_at, updated_at = $3::timestamptz,"
        " finished_at = CASE WHEN v.state = 'deferred' THEN NULL ELSE $3::timestamptz END,"
        " mail = CASE WHEN v.state = 'deferred' THEN COALESCE(d.mail, v.mail) END"
        " FROM v WHERE d.message_id = v.message_id AND d.state = 'sending' AND d.owner = $2"
        " AND d.attempt = v.attempt RETURNING d.message_id, d.rcpt_hash, d.bounce),"
        " o AS (INSERT INTO outbox (topic, key, event, trace)"
        " SELECT $4, v.key, v.event, v.trace FROM v JOIN f ON f.message_id = v.message_id"
        " ORDER BY v.n),"
        " s AS (INSERT INTO suppressions (scope, key, mail_kind, reason)"
        " SELECT DISTINCT 'address', f.rcpt_hash, '*', 'bounced' FROM f"
        " WHERE f.bounce = 'hard' AND f.rcpt_hash IS NOT NULL ON CONFLICT DO NOTHING)"
        " SELECT message_id FROM f",
        [
            {
                "n": n,
                "message_id": claimed.message_id,
                "attempt": claimed.attempt,
                "state": outcome.state,
                "code": outcome.code,
                "text": outcome.text,
                "bounce": outcome.bounce,
                "dsn": outcome.dsn,
                "next_at": outcome.next_attempt_at,
                "mail": None if mail is None else mail.to_json(),
                "key": claimed.contact_id,
                "event": event,
                "trace": trace,
            }
            for n, (claimed, outcome, mail, event, trace) in enumerate(done)
        ],
        owner,
        at,
        topic,
    )
    return {r["message_id"] for r in rows}


async def mark_ambiguous(
    conn: Conn,
    stuck: Delivery,
    policy: Policy,
    smtp_response: str | None,
    at: datetime,
    parcel: Parcel | None = None,
) -> Delivery | None:
    """Turn an attempt whose fate is unknown into ``ambiguous``; under ``resend``, keep the
    parcel (the one given, when the ledger holds none) to send it again."""
    row = await conn.fetchrow(
        "UPDATE deliveries SET state = 'ambiguous', policy = $4::text, smtp_code = NULL,"  # noqa: S608 - constant columns
        " smtp_response = $5::text, updated_at = $6::timestamptz,"
        " finished_at = CASE WHEN $4::text = 'hold' THEN $6::timestamptz END,"
        " mail = CASE WHEN $4::text = 'hold' THEN NULL ELSE COALESCE(mail, $7::jsonb) END"
        " WHERE message_id = $1 AND state = 'sending' AND owner = $2 AND attempt = $3"
        f" RETURNING {_COLUMNS}",
        stuck.message_id,
        stuck.owner,
        stuck.attempt,
        policy,
        smtp_response,
        at,
        None if parcel is None or policy == "hold" else parcel.to_json(),
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


async def parcels(conn: Conn, message_ids: Sequence[str]) -> dict[str, Parcel]:
    rows = await conn.fetch(
        "SELECT message_id, mail FROM deliveries WHERE message_id = ANY($1::text[])"
        " AND mail IS NOT NULL",
        list(message_ids),
    )
    return {r["message_id"]: Parcel.from_json(r["mail"]) for r in rows}


async def due_deferred(conn: Conn, at: datetime, limit: int) -> list[str]:
    """Message ids of deferred mails whose next attempt is due, oldest first."""
    rows = await conn.fetch(
        "SELECT message_id FROM deliveries WHERE state = 'deferred' AND next_attempt_at <= $1"
        " ORDER BY next_attempt_at LIMIT $2",
        at,
        limit,
    )
    return [r["message_id"] for r in rows]


async def count_deferred(conn: Conn) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM deliveries WHERE state = 'deferred'")
    return count


async def suppress(conn: Conn, scope: str, key: str, mail_kind: str, reason: str) -> bool:
    """Record a suppression; ``True`` if it is new."""
    status: str = await conn.execute(
        "INSERT INTO suppressions (scope, key, mail_kind, reason) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING",
        scope,
        key,
        mail_kind,
        reason,
    )
    return status.endswith(" 1")


async def unsuppress(conn: Conn, scope: str, key: str, mail_kind: str, reason: str) -> None:
    await conn.execute(
        "DELETE FROM suppressions WHERE scope = $1 AND key = $2 AND mail_kind = $3 AND reason = $4",
        scope,
        key,
        mail_kind,
        reason,
    )


async def set_topic_opt_outs(
    conn: Conn, contact_id: str, mail_kind: str, topics: Sequence[str]
) -> bool:
    """Make ``topics`` the contact's opted-out topics of ``mail_kind``; ``True`` if changed.

    Run in a transaction: the rows are replaced, not added to, since each event lists all
    the topics the contact has dropped at that moment.
    """
    removed: str = await conn.execute(
        "DELETE FROM topic_opt_outs WHERE contact_id = $1 AND mail_kind = $2"
        " AND NOT (topic = ANY($3::text[]))",
        contact_id,
        mail_kind,
        list(topics),
    )
    added: str = await conn.execute(
        "INSERT INTO topic_opt_outs (contact_id, mail_kind, topic)"
        " SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING",
        contact_id,
        mail_kind,
        sorted(set(topics)),
    )
    return not (removed.endswith(" 0") and added.endswith(" 0"))


async def erase_contact(conn: Conn, contact_id: str) -> int:
    """Forget what the ledger holds of a contact's address: the parcels and the hash.

    Rows not yet settled keep their place and become ``suppressed`` at their next claim.
    """
    await conn.execute("DELETE FROM topic_opt_outs WHERE contact_id = $1", contact_id)
    status: str = await conn.execute(
        "UPDATE deliveries SET mail = NULL, rcpt_hash = NULL WHERE contact_id = $1"
        " AND (mail IS NOT NULL OR rcpt_hash IS NOT NULL) AND state <> 'sending'",
        contact_id,
    )
    return int(status.rsplit(" ", 1)[-1])


async def ensure_bucket(conn: Conn, bucket: str, tokens: float) -> None:
    await conn.execute(
        "INSERT INTO throttles (bucket, tokens) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        bucket,
        tokens,
    )


async def take_tokens(
    conn: Conn, bucket: str, want: int, rate: float, burst: float
) -> tuple[int, float]:
    """Take up to ``want`` whole tokens from a shared bucket refilled at ``rate`` per second.

    One statement under the row lock, on the database's clock (the one clock every replica
    shares). Returns the tokens granted and the tokens left (fractional, may be < 1).
    """
    row = await conn.fetchrow(
        "WITH now AS (SELECT clock_timestamp() AS t),"
        " cur AS (SELECT LEAST($4::float8, b.tokens + $3::float8 *"
        "  EXTRACT(EPOCH FROM (now.t - b.updated_at))::float8) AS avail, now.t"
        "  FROM throttles b, now WHERE b.bucket = $1 FOR UPDATE OF b),"
        " g AS (SELECT GREATEST(0, LEAST(floor(avail), $2::int))::int AS granted, avail, t"
        "  FROM cur)"
        " UPDATE throttles b SET tokens = g.avail - g.granted, updated_at = g.t FROM g"
        " WHERE b.bucket = $1 RETURNING g.granted, g.avail - g.granted AS left",
        bucket,
        want,
        rate,
        burst,
    )
    if row is None:
        return want, 0.0
    return int(row["granted"]), float(row["left"])
