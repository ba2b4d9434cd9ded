"""All of the orchestrator's SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from stepmail_common.outbox import OutboxEvent
from stepmail_common.outbox import add as add_to_outbox
from stepmail_orchestrator.scenarios import Scenario, parse_scenario

if TYPE_CHECKING:
    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    )

_CONTACT_COLUMNS = (
    "id, email, name, locale, time_zone, attributes, tags, consent, opted_out_topics,"
    " last_marketing_at"
)


def contact_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {k: row[k] for k in _CONTACT_COLUMNS.split(", ")}


@dataclass(frozen=True, slots=True)
class Enrollment:
    id: uuid.UUID
    scenario_id: str
    scenario_version: int
    contact_id: str
    trigger_event: dict[str, Any]
    step_index: int
    status: str
    next_due_at: datetime | None
    created_at: datetime
    scenario_digest: str


def _enrollment(row: asyncpg.Record) -> Enrollment:
    return Enrollment(
        row["id"],
        row["scenario_id"],
        row["scenario_version"],
        row["contact_id"],
        row["trigger_event"],
        row["step_index"],
        row["status"],
        row["next_due_at"],
        row["created_at"],
        row["digest"],
    )


# An enrollment with the digest of its scenario version (``e`` joined with ``s``).
_ENROLLMENT_COLUMNS = (
    "e.id, e.scenario_id, e.scenario_version, e.contact_id, e.trigger_event, e.step_index,"
    " e.status, e.next_due_at, e.created_at, s.digest"
)
_ENROLLMENT_FROM = (
    "enrollments e JOIN scenarios s ON s.id = e.scenario_id AND s.version = e.scenario_version"
)

# Parsed scenario versions, by content digest: a version's content never changes.
_PARSED: dict[tuple[str, int, str], Scenario] = {}
_DIGESTS: dict[tuple[str, int], str] = {}


def _parsed(scenario_id: str, version: int, digest: str, definition: dict[str, Any]) -> Scenario:
    key = (scenario_id, version, digest)
    if key not in _PARSED:
        _PARSED[key] = parse_scenario(definition, f"{scenario_id} v{version}")
        _DIGESTS[key[:2]] = digest
    return _PARSED[key]


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What a batch of contact events is matched against, read once per batch."""

    active: list[tuple[Scenario, int]]
    """The latest version of every active scenario."""
    exit_events: frozenset[str]
    """The events that some version of some scenario exits on: only those can end a
    running enrollment (of any version or status), so only they are looked up for."""


async def catalogue(conn: Connection) -> Catalogue:
    rows = await conn.fetch(
        "SELECT s.id, s.version, s.digest, st.status = 'active'"
        " AND s.version = max(s.version) OVER (PARTITION BY s.id) AS latest_active"
        " FROM scenarios s JOIN scenario_status st ON st.id = s.id ORDER BY s.id"
    )
    missing = [r for r in rows if (r["id"], r["version"], r["digest"]) not in _PARSED]
    if missing:
        for d in await conn.fetch(
            "SELECT s.id, s.version, s.digest, s.definition FROM scenarios s"
            " JOIN unnest($1::text[], $2::int[]) AS v(id, version)"
            " ON s.id = v.id AND s.version = v.version",
            [r["id"] for r in missing],
            [r["version"] for r in missing],
        ):
            _parsed(d["id"], d["version"], d["digest"], d["definition"])
    versions = [(_PARSED[(r["id"], r["version"], r["digest"])], r) for r in rows]
    return Catalogue(
        active=[(s, r["version"]) for s, r in versions if r["latest_active"]],
        exit_events=frozenset(rule.event for s, _ in versions for rule in s.exits),
    )


async def save_scenario(conn: Connection, scenario: Scenario) -> tuple[int, bool]:
    """Store ``scenario``; a changed one becomes a new version. Returns (version, created)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('scenario:' || $1))", scenario.id)
        latest = await conn.fetchrow(
            "SELECT version, digest FROM scenarios WHERE id = $1 ORDER BY version DESC LIMIT 1",
            scenario.id,
        )
        await conn.execute(
            "INSERT INTO scenario_status (id) VALUES ($1) ON CONFLICT DO NOTHING", scenario.id
        )
        if latest is not None and latest["digest"] == scenario.digest():
            return int(latest["version"]), False
        version = 1 if latest is None else latest["version"] + 1
        await conn.execute(
            "INSERT INTO scenarios (id, version, definition, digest) VALUES ($1, $2, $3, $4)",
            scenario.id,
            version,
            scenario.to_definition(),
            scenario.digest(),
        )
        return int(version), True


async def scenario_of(conn: Connection, enrollment: Enrollment) -> Scenario:
    """The scenario version an enrollment runs."""
    key = (enrollment.scenario_id, enrollment.scenario_version, enrollment.scenario_digest)
    if key in _PARSED:
        return _PARSED[key]
    definition = await conn.fetchval(
        "SELECT definition FROM scenarios WHERE id = $1 AND version = $2", key[0], key[1]
    )
    return _parsed(*key, definition)


async def list_scenarios(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT DISTINCT ON (s.id) s.id, s.version, st.status, s.definition, s.created_at"
        " FROM scenarios s JOIN scenario_status st USING (id) ORDER BY s.id, s.version DESC"
    )


async def latest_active(conn: Connection) -> list[tuple[Scenario, int]]:
    """The latest version of every active scenario."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (s.id) s.id, s.version, s.digest, s.definition FROM scenarios s"
        " JOIN scenario_status st ON st.id = s.id AND st.status = 'active'"
        " ORDER BY s.id, s.version DESC"
    )
    return [
        (_parsed(r["id"], r["version"], r["digest"], r["definition"]), r["version"]) for r in rows
    ]


async def set_scenario_status(conn: Connection, scenario_id: str, status: str) -> bool:
    result = await conn.execute(
        "UPDATE scenario_status SET status = $2, updated_at = now() WHERE id = $1",
        scenario_id,
        status,
    )
    return result.endswith(" 1")


async def mark_processed(conn: Connection, consumer: str, event_ids: Sequence[str]) -> set[str]:
    """Record ``event_ids`` as consumed in one statement; returns those that were not
    already (the rest are redeliveries)."""
    rows = await conn.fetch(
        "INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::text[])"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        list(event_ids),
    )
    return {r["event_id"] for r in rows}


@dataclass(frozen=True, slots=True)
class ContactChange:
    """What one event says of a contact: its profile, consent per mail kind (merged into
    the recorded one) and, for a trigger, the activity (name, properties, when)."""

    contact: dict[str, Any]
    consent: dict[str, Any] | None = None
    activity: tuple[str, dict[str, Any], datetime] | None = None


async def upsert_contacts(
    conn: Connection, changes: Sequence[ContactChange], locale: str, time_zone: str
) -> dict[str, tuple[dict[str, Any], bool]]:
    """Create each contact or merge what its event says into its profile, record the
    activities, in one statement (one change per contact); returns by contact id each
    contact and whether it has an active enrollment (only then can an event end one).

    Rows are locked in id order, the order every statement that locks several takes.
    """
    rows = await conn.fetch(
        f"""
        WITH v AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::jsonb[], $7::jsonb[], $8::timestamptz[], $9::text[],
                                 $10::jsonb[])
                AS v(id, email, name, locale, time_zone, attributes, consent, at, activity,
                     properties)
        ), c AS (
            INSERT INTO contacts
                (id, email, name, locale, time_zone, attributes, consent, last_activity_at)
            SELECT v.id, v.email, v.name, COALESCE(v.locale, old.locale, $11),
                   COALESCE(v.time_zone, old.time_zone, $12), COALESCE(v.attributes, '{{}}'),
                   COALESCE(v.consent, '{{}}'), v.at
            FROM v LEFT JOIN contacts old ON old.id = v.id
            ORDER BY v.id
            ON CONFLICT (id) DO UPDATE SET
                email = COALESCE(EXCLUDED.email, contacts.email),
                name = COALESCE(EXCLUDED.name, contacts.name),
                locale = EXCLUDED.locale,
                time_zone = EXCLUDED.time_zone,
                attributes = contacts.attributes || EXCLUDED.attributes,
                consent = contacts.consent || EXCLUDED.consent,
                last_activity_at = GREATEST(contacts.last_activity_at, EXCLUDED.last_activity_at),
                updated_at = now()
            RETURNING {_CONTACT_COLUMNS}
        ), a AS (
            INSERT INTO activity (contact_id, name, properties, occurred_at)
            SELECT v.id, v.activity, v.properties, v.at FROM v WHERE v.activity IS NOT NULL
        )
        SELECT {_CONTACT_COLUMNS}, EXISTS (
            SELECT 1 FROM enrollments e WHERE e.contact_id = c.id AND e.status = 'active'
        ) AS has_active
        FROM c
        """,  # noqa: S608 - column list is a constant
        [c.contact["id"] for c in changes],
        [c.contact.get("email") for c in changes],
        [c.contact.get("name") for c in changes],
        [c.contact.get("locale") for c in changes],
        [c.contact.get("time_zone") for c in changes],
        [c.contact.get("attributes") for c in changes],
        [c.consent for c in changes],
        [c.activity[2] if c.activity else None for c in changes],
        [c.activity[0] if c.activity else None for c in changes],
        [c.activity[1] if c.activity else None for c in changes],
        locale,
        time_zone,
    )
    return {r["id"]: (contact_dict(r), r["has_active"]) for r in rows}


async def set_consent(
    conn: Connection, contact_id: str, kind: str, consent: dict[str, Any]
) -> None:
    await conn.execute(
        "UPDATE contacts SET consent = consent || jsonb_build_object($2::text, $3::jsonb),"
        " updated_at = now() WHERE id = $1",
        contact_id,
        kind,
        consent,
    )


async def set_opted_out_topics(
    conn: Connection, contact_id: str, kind: str, topics: Sequence[str]
) -> None:
    """Replace the preference-centre topics the contact opted out of for ``kind``."""
    await conn.execute(
        "UPDATE contacts SET opted_out_topics = CASE WHEN cardinality($3::text[]) = 0"
        " THEN opted_out_topics - $2::text"
        " ELSE opted_out_topics || jsonb_build_object($2::text, to_jsonb($3::text[])) END,"
        " updated_at = now() WHERE id = $1",
        contact_id,
        kind,
        sorted(set(topics)),
    )


async def get_contact(conn: Connection, contact_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE id = $1",  # noqa: S608
        contact_id,
    )
    return None if row is None else contact_dict(row)


async def update_profile(
    conn: Connection,
    contact_id: str,
    add_tags: tuple[str, ...],
    remove_tags: tuple[str, ...],
    attributes: dict[str, Any],
) -> None:
    await conn.execute(
        """
        UPDATE contacts SET
            tags = ARRAY(SELECT DISTINCT t FROM unnest(tags || $2::text[]) t
                         WHERE t <> ALL($3::text[]) ORDER BY t),
            attributes = attributes || $4::jsonb,
            updated_at = now()
        WHERE id = $1
        """,
        contact_id,
        list(add_tags),
        list(remove_tags),
        attributes,
    )


async def recent_activity(
    conn: Connection, contact_id: str, name: str, since: datetime
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT properties FROM activity WHERE contact_id = $1 AND name = $2 AND occurred_at >= $3",
        contact_id,
        name,
        since,
    )
    return [r["properties"] for r in rows]


async def prune_activity(conn: Connection, before: datetime) -> None:
    await conn.execute("DELETE FROM activity WHERE occurred_at < $1", before)


async def prune_processed(pool: asyncpg.Pool[asyncpg.Record], kept: timedelta, limit: int) -> int:
    """Forget the marks of events consumed longer than ``kept`` ago, by the database's
    clock, which stamped them: at most ``limit``, in a statement of its own. Returns how
    many."""
    status = await pool.execute(
        "DELETE FROM processed_events WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM processed_events WHERE processed_at < now() - $1::interval"
        " LIMIT $2))",
        kept,
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True, slots=True)
class Entry:
    """A contact's past in a scenario, read under the entry lock."""

    last_created_at: datetime | None
    last_ended_at: datetime | None
    has_active: bool


async def lock_entry(conn: Connection, scenario_id: str, contact_id: str) -> Entry:
    """Serialise enrollment decisions for one contact and scenario (until the transaction
    ends), then read what they depend on, in one round trip (``enrollment_entry``, whose
    read sees what the lock's previous holder committed)."""
    row = await conn.fetchrow("SELECT * FROM enrollment_entry($1, $2)", scenario_id, contact_id)
    assert row is not None
    return Entry(row["last_created_at"], row["last_ended_at"], row["has_active"])


async def lock_entries(
    conn: Connection, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Entry]:
    """``lock_entry`` for many (scenario, contact) pairs in one round trip, locked in
    sorted order."""
    ordered = sorted(set(pairs))
    rows = await conn.fetch(
        "SELECT * FROM enrollment_entries($1::text[], $2::text[])",
        [s for s, _ in ordered],
        [c for _, c in ordered],
    )
    return {
        (r["entry_scenario_id"], r["entry_contact_id"]): Entry(
            r["last_created_at"], r["last_ended_at"], r["has_active"]
        )
        for r in rows
    }


def new_enrollment(
    scenario: Scenario,
    version: int,
    contact_id: str,
    trigger_event: dict[str, Any],
    status: str,
    at: datetime,
) -> Enrollment:
    """An enrollment at its first step, to be written with ``PendingWrites.enroll``."""
    digest = _DIGESTS.get((scenario.id, version)) or scenario.digest()
    return Enrollment(
        uuid.uuid4(), scenario.id, version, contact_id, trigger_event, 0, status, None, at, digest
    )


async def active_enrollments(conn: Connection, contact_id: str) -> list[Enrollment]:
    rows = await conn.fetch(
        f"SELECT {_ENROLLMENT_COLUMNS} FROM {_ENROLLMENT_FROM}"  # noqa: S608
        " WHERE e.contact_id = $1 AND e.status = 'active' FOR UPDATE OF e",
        contact_id,
    )
    return [_enrollment(r) for r in rows]


_CONTACT_AS = ", ".join(f"c.{c} AS contact_{c}" for c in _CONTACT_COLUMNS.split(", "))


async def claim_due(
    conn: Connection, now: datetime, limit: int
) -> list[tuple[Enrollment, dict[str, Any]]]:
    """Lock up to ``limit`` due enrollments (other replicas skip them: SKIP LOCKED), each
    with its contact, in one round trip."""
    rows = await conn.fetch(
        f"""
        SELECT {_ENROLLMENT_COLUMNS}, {_CONTACT_AS}
        FROM {_ENROLLMENT_FROM} JOIN contacts c ON c.id = e.contact_id
        WHERE e.status = 'active' AND e.next_due_at <= $1
        ORDER BY e.next_due_at LIMIT $2
        FOR UPDATE OF e SKIP LOCKED
        """,  # noqa: S608
        now,
        limit,
    )
    columns = _CONTACT_COLUMNS.split(", ")
    return [(_enrollment(r), {c: r[f"contact_{c}"] for c in columns}) for r in rows]


async def scenario_statuses(conn: Connection) -> dict[str, str]:
    return {
        r["id"]: r["status"] for r in await conn.fetch("SELECT id, status FROM scenario_status")
    }


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows (at least one) as column lists: the parameters of an ``unnest`` of arrays."""
    return [list(column) for column in zip(*rows, strict=True)]


@dataclass(slots=True)
class _NewEnrollment:
    """An enrollment made in this pass, with what the pass did to it since: written once,
    as it ends the pass, instead of inserted and then updated."""

    id: uuid.UUID
    scenario_id: str
    scenario_version: int
    contact_id: str
    trigger_event: dict[str, Any]
    status: str
    created_at: datetime
    ended_at: datetime | None
    step_index: int = 0
    next_due_at: datetime | None = None
    exit_reason: str | None = None
    converted: bool = False

    def row(self) -> tuple[Any, ...]:
        """The values in the order of the columns ``flush`` inserts."""
        return (
            self.id,
            self.scenario_id,
            self.scenario_version,
            self.contact_id,
            self.trigger_event,
            self.status,
            self.created_at,
            self.ended_at,
            self.step_index,
            self.next_due_at,
            self.exit_reason,
            self.converted,
        )


@dataclass
class PendingWrites:
    """State changes of one pass, written together: a few round trips instead of a few per
    enrollment. Flushed before anything reads them back and at the end of the pass."""

    enrollments: dict[uuid.UUID, _NewEnrollment] = field(default_factory=dict)
    entries: set[tuple[str, str]] = field(default_factory=set)
    """(scenario, contact) of the enrollments not written yet."""
    locked: dict[tuple[str, str], Entry] = field(default_factory=dict)
    """Entries read under their lock ahead of the enrollment decisions (``lock_entries``);
    each is used once, and dropped when an enrollment of its pair is made."""
    outbox: list[OutboxEvent] = field(default_factory=list)
    messages: list[tuple[Any, ...]] = field(default_factory=list)
    schedules: list[tuple[Any, ...]] = field(default_factory=list)
    finishes: list[tuple[Any, ...]] = field(default_factory=list)
    touches: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return bool(
            self.enrollments
            or self.outbox
            or self.messages
            or self.schedules
            or self.finishes
            or self.touches
        )

    def enroll(self, enrollment: Enrollment) -> None:
        e = enrollment
        self.enrollments[e.id] = _NewEnrollment(
            e.id,
            e.scenario_id,
            e.scenario_version,
            e.contact_id,
            e.trigger_event,
            e.status,
            e.created_at,
            ended_at=None if e.status == "active" else e.created_at,
        )
        self.entries.add((e.scenario_id, e.contact_id))
        self.locked.pop((e.scenario_id, e.contact_id), None)

    def schedule(self, enrollment_id: uuid.UUID, step_index: int, next_due_at: datetime) -> None:
        new = self.enrollments.get(enrollment_id)
        if new is None:
            self.schedules.append((enrollment_id, step_index, next_due_at))
            return
        new.step_index = step_index
        if new.status == "active":
            new.next_due_at = next_due_at

    def finish(
        self,
        enrollment_id: uuid.UUID,
        status: str,
        at: datetime,
        reason: str | None = None,
        converted: bool = False,
    ) -> None:
        new = self.enrollments.get(enrollment_id)
        if new is None:
            self.finishes.append((enrollment_id, status, at, reason, converted))
        elif new.status == "active":
            new.status, new.ended_at, new.next_due_at = status, at, None
            new.exit_reason, new.converted = reason, converted

    def message(
        self,
        message_id: str,
        enrollment: Enrollment,
        step_id: str,
        variant: str,
        mail_kind: str,
        at: datetime,
    ) -> None:
        self.messages.append(
            (
                message_id,
                enrollment.id,
                enrollment.scenario_id,
                step_id,
                variant,
                enrollment.contact_id,
                mail_kind,
                at,
            )
        )

    def touch_marketing(self, contact_id: str, at: datetime) -> None:
        self.touches.append((contact_id, at))

    async def flush(self, conn: Connection) -> None:
        """One set-based statement per kind of change (not one execution per row)."""
        if self.enrollments:
            await conn.execute(
                "INSERT INTO enrollments (id, scenario_id, scenario_version, contact_id,"
                " trigger_event, status, created_at, ended_at, step_index, next_due_at,"
                " exit_reason, converted)"
                " SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[],"
                " $5::jsonb[], $6::text[], $7::timestamptz[], $8::timestamptz[], $9::int[],"
                " $10::timestamptz[], $11::text[], $12::bool[])",
                *_columns([e.row() for e in self.enrollments.values()]),
            )
        if self.outbox:
            await add_to_outbox(conn, self.outbox)
        if self.messages:
            await conn.execute(
                "INSERT INTO messages (message_id, enrollment_id, scenario_id, step_id, variant,"
                " contact_id, mail_kind, requested_at)"
                " SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[],"
                " $5::text[], $6::text[], $7::text[], $8::timestamptz[])"
                " ON CONFLICT DO NOTHING",
                *_columns(self.messages),
            )
        if self.touches:
            # The latest time per contact. The rows are locked in id order first (an
            # UPDATE's join follows no order), so concurrent passes lock contacts in one
            # order: no deadlock.
            latest = dict(sorted(self.touches))
            await conn.execute(
                "WITH locked AS (SELECT id FROM contacts WHERE id = ANY($1::text[])"
                " ORDER BY id FOR UPDATE)"
                " UPDATE contacts c SET last_marketing_at = v.at"
                " FROM locked JOIN unnest($1::text[], $2::timestamptz[]) AS v(id, at)"
                " ON v.id = locked.id WHERE c.id = locked.id",
                list(latest),
                list(latest.values()),
            )
        if self.schedules:
            # One row per enrollment: the last schedule of the pass wins, as it would row by row.
            last = {row[0]: row for row in self.schedules}
            await conn.execute(
                "UPDATE enrollments e SET step_index = v.step_index, next_due_at = v.due"
                " FROM unnest($1::uuid[], $2::int[], $3::timestamptz[]) AS v(id, step_index, due)"
                " WHERE e.id = v.id",
                *_columns(list(last.values())),
            )
        if self.finishes:
            # The first finish of an enrollment wins: row by row, the later ones would find
            # it no longer active.
            first: dict[uuid.UUID, tuple[Any, ...]] = {}
            for row in self.finishes:
                first.setdefault(row[0], row)
            await conn.execute(
                "UPDATE enrollments e SET status = v.status, next_due_at = NULL,"
                " ended_at = v.at, exit_reason = v.reason, converted = v.converted"
                " FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::bool[])"
                " AS v(id, status, at, reason, converted)"
                " WHERE e.id = v.id AND e.status = 'active'",
                *_columns(list(first.values())),
            )
        self.enrollments.clear()
        self.entries.clear()
        self.outbox.clear()
        self.messages.clear()
        self.touches.clear()
        self.schedules.clear()
        self.finishes.clear()


async def message_facts(conn: Connection, enrollment_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """Per step id: whether its mail was sent, opened, clicked (and which links)."""
    rows = await conn.fetch(
        "SELECT m.step_id, m.sent_at, m.opened_at, m.clicked_at,"
        " ARRAY(SELECT url FROM message_clicks c WHERE c.message_id = m.message_id) AS links"
        " FROM messages m WHERE m.enrollment_id = $1",
        enrollment_id,
    )
    return {
        r["step_id"]: {
            "requested": True,
            "sent": r["sent_at"] is not None,
            "opened": r["opened_at"] is not None,
            "clicked": r["clicked_at"] is not None,
            "clicked_links": list(r["links"]),
        }
        for r in rows
    }


_FACT_COLUMNS = {
    "sent": "sent_at",
    "failed": "failed_at",
    "opened": "opened_at",
    "clicked": "clicked_at",
    "unsubscribed": "unsubscribed_at",
    "complained": "complained_at",
}


async def record_fact(conn: Connection, message_id: str, fact: str, at: datetime) -> str | None:
    """Set the first time of ``fact`` for a message; returns its enrollment's contact id."""
    column = _FACT_COLUMNS[fact]
    contact: str | None = await conn.fetchval(
        f"UPDATE messages SET {column} = COALESCE({column}, $2) WHERE message_id = $1"  # noqa: S608
        " RETURNING contact_id",
        message_id,
        at,
    )
    return contact


async def record_sent(
    conn: Connection, sent: dict[str, datetime]
) -> list[tuple[datetime, datetime, str]]:
    """Set the sent time of each message (by id) in one statement; for those sent the first
    time only, return when it was sent, when the step was released to ``steps-due`` and
    the mail's kind (a mail resent after an ambiguous handover keeps its first time)."""
    rows = await conn.fetch(
        "UPDATE messages m SET sent_at = v.at"
        " FROM unnest($1::text[], $2::timestamptz[]) AS v(message_id, at)"
        " WHERE m.message_id = v.message_id AND m.sent_at IS NULL"
        " RETURNING v.at, m.requested_at, m.mail_kind",
        list(sent),
        list(sent.values()),
    )
    return [(r["at"], r["requested_at"], r["mail_kind"]) for r in rows]


async def record_click(conn: Connection, message_id: str, url: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO message_clicks (message_id, url, clicked_at)"
        " SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM messages WHERE message_id = $1)"
        " ON CONFLICT DO NOTHING",
        message_id,
        url,
        at,
    )


async def erase_contact(conn: Connection, contact_id: str) -> None:
    """Forget the person: profile, activity, enrollments and their message facts."""
    await conn.execute("DELETE FROM contacts WHERE id = $1", contact_id)


async def add_notification(conn: Connection, url: str, body: dict[str, Any], at: datetime) -> None:
    await conn.execute(
        "INSERT INTO notifications (id, url, body, next_at) VALUES ($1, $2, $3, $4)",
        uuid.uuid4(),
        url,
        body,
        at,
    )


async def due_notifications(conn: Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, url, body, attempts FROM notifications"
        " WHERE delivered_at IS NULL AND failed_at IS NULL AND next_at <= $1"
        " ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )


async def notification_result(
    conn: Connection,
    notification_id: uuid.UUID,
    *,
    delivered_at: datetime | None,
    next_at: datetime | None,
    failed_at: datetime | None,
    error: str | None,
) -> None:
    await conn.execute(
        "UPDATE notifications SET attempts = attempts + 1, delivered_at = $2,"
        " next_at = COALESCE($3, next_at), failed_at = $4, last_error = $5 WHERE id = $1",
        notification_id,
        delivered_at,
        next_at,
        failed_at,
        error,
    )


async def enrollments_of(conn: Connection, contact_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, scenario_id, scenario_version, step_index, status, next_due_at, exit_reason,"
        " converted, created_at FROM enrollments WHERE contact_id = $1 ORDER BY created_at",
        contact_id,
    )


async def scenario_stats(
    conn: Connection, scenario_id: str
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """Counts for a scenario (all versions) and per step."""
    totals = await conn.fetchrow(
        """
        SELECT count(*) AS entered,
               count(*) FILTER (WHERE status = 'held_out') AS held_out,
               count(*) FILTER (WHERE status = 'active') AS active,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status = 'exited') AS exited,
               count(*) FILTER (WHERE converted) AS converted
        FROM enrollments WHERE scenario_id = $1
        """,
        scenario_id,
    )
    assert totals is not None
    steps = await conn.fetch(
        """
        SELECT step_id, variant,
               count(*) AS requested,
               count(sent_at) AS sent,
               count(failed_at) AS failed,
               count(opened_at) AS opened,
               count(clicked_at) AS clicked,
               count(unsubscribed_at) AS unsubscribed,
               count(complained_at) AS complained,
               count(*) FILTER (WHERE e.converted) AS converted
        FROM messages m JOIN enrollments e ON e.id = m.enrollment_id
        WHERE m.scenario_id = $1
        GROUP BY step_id, variant ORDER BY step_id, variant
        """,
        scenario_id,
    )
    return totals, steps


async def migrate_enrollments(conn: Connection, scenario_id: str) -> tuple[int, int]:
    """Move active enrollments of older versions to the latest, keeping their step by id.

    An enrollment whose current step no longer exists stays on its version.
    """
    async with conn.transaction():
        latest = await conn.fetchrow(
            "SELECT version, digest, definition FROM scenarios WHERE id = $1"
            " ORDER BY version DESC LIMIT 1",
            scenario_id,
        )
        if latest is None:
            return 0, 0
        target = _parsed(scenario_id, latest["version"], latest["digest"], latest["definition"])
        positions = {step.id: i for i, step in enumerate(target.steps)}
        rows = await conn.fetch(
            f"SELECT {_ENROLLMENT_COLUMNS} FROM {_ENROLLMENT_FROM}"  # noqa: S608
            " WHERE e.scenario_id = $1 AND e.status = 'active' AND e.scenario_version < $2"
            " FOR UPDATE OF e",
            scenario_id,
            latest["version"],
        )
        moved = kept = 0
        for row in rows:
            enrollment = _enrollment(row)
            current = await scenario_of(conn, enrollment)
            step_id = (
                current.steps[enrollment.step_index].id
                if enrollment.step_index < len(current.steps)
                else None
            )
            if step_id is None or step_id not in positions:
                kept += 1
                continue
            await conn.execute(
                "UPDATE enrollments SET scenario_version = $2, step_index = $3 WHERE id = $1",
                enrollment.id,
                latest["version"],
                positions[step_id],
            )
            moved += 1
        return moved, kept
