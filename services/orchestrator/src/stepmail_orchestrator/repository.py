"""All of the orchestrator's SQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from stepmail_orchestrator.scenarios import Scenario, parse_scenario

if TYPE_CHECKING:
    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    )


@dataclass(frozen=True, slots=True)
class DueEnrollment:
    id: uuid.UUID
    scenario_id: str
    scenario_version: int
    step_index: int
    due_at: datetime
    trigger_event: dict[str, Any]
    contact: dict[str, Any]


async def save_scenario(conn: Connection, scenario: Scenario) -> int | None:
    """Store ``scenario`` as a new version if it changed; returns that version or None."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('scenario:' || $1))", scenario.id)
        latest = await conn.fetchrow(
            "SELECT version, digest FROM scenarios WHERE id = $1 ORDER BY version DESC LIMIT 1",
            scenario.id,
        )
        if latest is not None and latest["digest"] == scenario.digest():
            return None
        version = 1 if latest is None else latest["version"] + 1
        await conn.execute(
            "INSERT INTO scenarios (id, version, definition, digest) VALUES ($1, $2, $3, $4)",
            scenario.id,
            version,
            scenario.to_definition(),
            scenario.digest(),
        )
        return int(version)


async def scenario_version(conn: Connection, scenario_id: str, version: int) -> Scenario:
    definition = await conn.fetchval(
        "SELECT definition FROM scenarios WHERE id = $1 AND version = $2", scenario_id, version
    )
    return parse_scenario(definition, f"{scenario_id} v{version}")


async def list_scenarios(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT DISTINCT ON (id) id, version, status, definition, created_at"
        " FROM scenarios ORDER BY id, version DESC"
    )


async def active_triggered_by(conn: Connection, event_name: str) -> list[tuple[Scenario, int]]:
    """The latest version of each active scenario whose trigger is ``event_name``."""
    rows = await conn.fetch(
        "SELECT * FROM (SELECT DISTINCT ON (id) id, version, status, definition FROM scenarios"
        "  ORDER BY id, version DESC) latest"
        " WHERE status = 'active' AND definition -> 'trigger' ->> 'event' = $1",
        event_name,
    )
    return [(parse_scenario(r["definition"], r["id"]), r["version"]) for r in rows]


async def mark_processed(conn: Connection, consumer: str, event_id: str) -> bool:
    """Record ``event_id`` as consumed; False when it already was (a redelivery)."""
    status = await conn.execute(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        consumer,
        event_id,
    )
    return status.endswith(" 1")


async def upsert_contact(
    conn: Connection, contact: dict[str, Any], locale: str, time_zone: str
) -> None:
    """Create the contact or merge what the event says into its profile."""
    await conn.execute(
        """
        INSERT INTO contacts (id, email, name, locale, time_zone, attributes)
        VALUES ($1, $2, $3, COALESCE($4, $7), COALESCE($5, $8), COALESCE($6, '{}'::jsonb))
        ON CONFLICT (id) DO UPDATE SET
            email = COALESCE(EXCLUDED.email, contacts.email),
            name = COALESCE($3, contacts.name),
            locale = COALESCE($4, contacts.locale),
            time_zone = COALESCE($5, contacts.time_zone),
            attributes = contacts.attributes || COALESCE($6, '{}'::jsonb),
            updated_at = now()
        """,
        contact["id"],
        contact.get("email"),
        contact.get("name"),
        contact.get("locale"),
        contact.get("time_zone"),
        contact.get("attributes"),
        locale,
        time_zone,
    )


async def enroll(
    conn: Connection,
    scenario_id: str,
    version: int,
    contact_id: str,
    trigger_event: dict[str, Any],
    due_at: datetime,
) -> bool:
    """Enroll once ever; False when the contact already was in this scenario."""
    status = await conn.execute(
        "INSERT INTO enrollments (id, scenario_id, scenario_version, contact_id, trigger_event,"
        " next_due_at) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (scenario_id, contact_id) DO NOTHING",
        uuid.uuid4(),
        scenario_id,
        version,
        contact_id,
        trigger_event,
        due_at,
    )
    return status.endswith(" 1")


async def claim_due(conn: Connection, now: datetime, limit: int) -> list[DueEnrollment]:
    """Lock up to ``limit`` due enrollments; other replicas skip them (SKIP LOCKED)."""
    rows = await conn.fetch(
        """
        SELECT e.id, e.scenario_id, e.scenario_version, e.step_index, e.next_due_at,
               e.trigger_event, c.id AS contact_id, c.email, c.name, c.locale, c.time_zone,
               c.attributes
        FROM enrollments e JOIN contacts c ON c.id = e.contact_id
        WHERE e.status = 'active' AND e.next_due_at <= $1
        ORDER BY e.next_due_at
        LIMIT $2
        FOR UPDATE OF e SKIP LOCKED
        """,
        now,
        limit,
    )
    return [
        DueEnrollment(
            id=r["id"],
            scenario_id=r["scenario_id"],
            scenario_version=r["scenario_version"],
            step_index=r["step_index"],
            due_at=r["next_due_at"],
            trigger_event=r["trigger_event"],
            contact={
                "id": r["contact_id"],
                "email": r["email"],
                "name": r["name"],
                "locale": r["locale"],
                "time_zone": r["time_zone"],
                "attributes": r["attributes"],
            },
        )
        for r in rows
    ]


async def advance(
    conn: Connection, enrollment_id: uuid.UUID, step_index: int, next_due_at: datetime | None
) -> None:
    """Move to ``step_index``; without a next due time the enrollment is completed."""
    await conn.execute(
        "UPDATE enrollments SET step_index = $2, next_due_at = $3,"
        " status = CASE WHEN $3::timestamptz IS NULL THEN 'completed' ELSE status END,"
        " updated_at = now() WHERE id = $1",
        enrollment_id,
        step_index,
        next_due_at,
    )


async def enrollments_of(conn: Connection, contact_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, scenario_id, scenario_version, step_index, status, next_due_at, created_at"
        " FROM enrollments WHERE contact_id = $1 ORDER BY created_at",
        contact_id,
    )
