"""Accepting customer events: idempotency, the CloudEvent, the durable publish."""

import hashlib
import uuid
from dataclasses import dataclass

import orjson

from stepmail_common import event_types
from stepmail_common.clock import Clock
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import EventProducer
from stepmail_common.problems import Problem
from stepmail_common.topics import Topics
from stepmail_ingest.repository import ApiKey, IngestRepository
from stepmail_ingest.schemas import EventIn

SOURCE = "urn:stepmail:ingest"


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str
    replayed: bool


def _fingerprint(event: EventIn) -> bytes:
    return hashlib.sha256(
        orjson.dumps(event.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).digest()


class EventIntake:
    """Turns accepted requests into events on ``contact-events``."""

    def __init__(
        self, repo: IngestRepository, producer: EventProducer, topics: Topics, clock: Clock
    ) -> None:
        self._repo = repo
        self._producer = producer
        self._topics = topics
        self._clock = clock

    async def accept(self, key: ApiKey, event: EventIn, idempotency_key: str | None) -> Accepted:
        """Publish ``event`` once per idempotency key (header, else the event's own id).

        The CloudEvent id is derived from that key, so even two racing requests with one
        key publish the same id, which consumers deduplicate on.
        """
        dedupe = idempotency_key or (f"id:{event.id}" if event.id else None)
        fingerprint = _fingerprint(event)
        if dedupe is not None:
            seen = await self._repo.remembered(key.id, dedupe)
            if seen is not None:
                if seen.fingerprint != fingerprint:
                    raise Problem(
                        422,
                        "Idempotency key reused",
                        "This Idempotency-Key was already used with a different body.",
                        type_="urn:stepmail:problem:idempotency-key-reused",
                        errors=[{"field": "Idempotency-Key", "detail": "reused with another body"}],
                    )
                return Accepted(seen.event_id, replayed=True)
        event_id = derived_id("ingest", str(key.id), dedupe) if dedupe else str(uuid.uuid4())
        now = self._clock.now()
        contact = event.contact.model_dump(mode="json", exclude_none=True)
        data = {
            "name": event.type,
            "contact": contact,
            "properties": event.properties,
            "occurred_at": (event.occurred_at or now).isoformat(),
        }
        if dedupe is not None:
            data["idempotency_key"] = dedupe[:255]
        cloud_event = CloudEvent(
            type=event_types.EVENT_RECEIVED,
            source=SOURCE,
            subject=event.contact.id,
            data=data,
            id=event_id,
            time=now,
        )
        await self._producer.publish(self._topics.contact_events, cloud_event, key=event.contact.id)
        if dedupe is not None:
            await self._repo.remember(key.id, dedupe, fingerprint, event_id)
        return Accepted(event_id, replayed=False)
