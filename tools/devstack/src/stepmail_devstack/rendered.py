"""Synthetic ``mail.rendered`` events, shaped as the renderer publishes them: load for the
sender in its benchmark and its scale tests, without running the rest of the platform."""

from datetime import UTC, datetime
from typing import Any

from stepmail_common import event_types
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import EventProducer, Outgoing, ensure_topics


def rendered_mails(
    topic: str, mime_template: str, count: int, *, contacts: int, run: str
) -> list[Outgoing]:
    """``count`` mails to ``contacts`` contacts (several steps each), ids unique to ``run``.

    ``mime_template`` holds ``{mid}`` and ``{rcpt}`` for the message id and recipient.
    """
    contacts = max(1, contacts)
    out: list[Outgoing] = []
    for i in range(count):
        n = i % contacts
        contact_id = f"c-{run}-{n:06d}"
        message_id = derived_id("synthetic", run, str(i))
        rcpt = f"u{n}.{run}@example.jp"
        data: dict[str, Any] = {
            "message_id": message_id,
            "enrollment_id": f"enr-{run}-{n}",
            "scenario": {"id": "welcome", "version": 1},
            "step": {"id": f"s{i // contacts}", "index": i // contacts},
            "contact_id": contact_id,
            "mail_kind": "marketing",
            "envelope": {"mail_from": "bounce@example.com", "rcpt_to": rcpt},
            "mime": mime_template.replace("{mid}", message_id).replace("{rcpt}", rcpt),
            "rendered_at": datetime.now(UTC).isoformat(),
        }
        event = CloudEvent(
            type=event_types.MAIL_RENDERED,
            source="urn:stepmail:renderer",
            subject=contact_id,
            data=data,
            id=derived_id("rendered", message_id),
        )
        out.append(Outgoing(topic, event, contact_id))
    return out


async def publish(bootstrap: str, items: list[Outgoing], partitions: int) -> None:
    """Create the topic with ``partitions`` and publish ``items`` in chunks."""
    await ensure_topics(bootstrap, [items[0].topic], partitions)
    async with EventProducer(bootstrap, "synthetic-mails", enable_idempotence=False) as producer:
        for start in range(0, len(items), 1000):
            await producer.publish_many(items[start : start + 1000])
