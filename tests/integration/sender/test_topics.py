"""Preference-centre topics: an opt-out of one topic stops that topic's mail, and only it.

The events are the tracker's (valid against the published schemas); the sender's ledger is
on a real Postgres and the mails go to a real SMTP server, which shows what was handed
over. The last test runs the whole sender app on the broker.
"""

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from stepmail_common import event_types
from stepmail_common.events import CloudEvent, derived_id, validate
from stepmail_common.kafka import EventProducer
from stepmail_common.topics import Topics
from stepmail_sender.app import create_app
from stepmail_sender.domain import RenderedMail
from stepmail_sender.handlers import feedback_dispatcher
from stepmail_sender.ledger import Ledger
from stepmail_sender.settings import SenderSettings
from tests.integration.sender.conftest import EVENTS_TOPIC, rendered_data
from tests.integration.sender.test_app import poll_state, read_until

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 23, 1, 0, tzinfo=UTC).isoformat()


def opt_out(contact_id: str, topics: list[str] | None) -> CloudEvent:
    """What the tracker publishes when the preference page drops ``topics`` (None: all)."""
    data: dict[str, Any] = {
        "message_id": f"earlier-{contact_id}",
        "contact_id": contact_id,
        "mail_kind": "marketing",
        "method": "page",
        "at": NOW,
    }
    if topics is not None:
        data["topics"] = topics
    return _event(event_types.ENGAGEMENT_UNSUBSCRIBED, data)


def resubscribe(contact_id: str) -> CloudEvent:
    data = {"contact_id": contact_id, "mail_kind": "marketing", "method": "page", "at": NOW}
    return _event(event_types.ENGAGEMENT_RESUBSCRIBED, data)


def _event(type_: str, data: dict[str, Any]) -> CloudEvent:
    made = CloudEvent(
        type=type_, source="urn:stepmail:tracker", subject=data["contact_id"], data=data
    )
    validate(made.to_dict())
    return made


def topical_data(message_id: str, contact_id: str, topic: str | None) -> dict[str, Any]:
    data = rendered_data(message_id, rcpt_to=f"{contact_id}@example.jp", contact_id=contact_id)
    if topic is not None:
        data["topic"] = topic
    return data


def mail(message_id: str, contact_id: str, topic: str | None) -> RenderedMail:
    return RenderedMail.from_data(topical_data(message_id, contact_id, topic))


@pytest.fixture
def feedback(sender_pool):
    return feedback_dispatcher(Ledger(sender_pool, EVENTS_TOPIC))


async def outcomes(deliverer, mails: list[RenderedMail]) -> dict[str, tuple[str, str | None]]:
    await deliverer.handle_many(mails)
    rows = {m.message_id: await deliverer._ledger.get(m.message_id) for m in mails}
    return {mid: (row.state, row.suppression().get("topic")) for mid, row in rows.items()}


async def test_a_topic_opt_out_stops_that_topic_only_and_a_resubscribe_lifts_it(
    make_deliverer, smtp_server, feedback, sender_pool
):
    deliverer = await make_deliverer()
    rendered_before = mail("tp-news-1", "c-tp", "news")
    await deliverer._ledger.accept_many([rendered_before], datetime.now(UTC))
    await feedback(opt_out("c-tp", ["news"]))
    assert await outcomes(
        deliverer,
        [rendered_before, mail("tp-camp-1", "c-tp", "campaign"), mail("tp-none-1", "c-tp", None)],
    ) == {
        "tp-news-1": ("suppressed", "news"),
        "tp-camp-1": ("sent", None),
        "tp-none-1": ("sent", None),
    }
    # Another contact's news is not theirs to stop.
    assert await outcomes(deliverer, [mail("tp-news-other", "c-other", "news")]) == {
        "tp-news-other": ("sent", None)
    }

    # The delivery event says why, in the published schema.
    row = await sender_pool.fetchrow(
        "SELECT event FROM outbox WHERE event->>'type' = $1 AND event->'data'->>'message_id' = $2",
        event_types.DELIVERY_SUPPRESSED,
        "tp-news-1",
    )
    suppressed = CloudEvent.from_json(orjson.dumps(row["event"]))
    assert (suppressed.data["reason"], suppressed.data["topic"]) == ("unsubscribed", "news")
    ledger_row = await deliverer._ledger.get("tp-news-1")
    assert (ledger_row.public()["reason"], ledger_row.public()["topic"]) == (
        "unsubscribed_topic",
        "news",
    )

    # The page's next choice replaces the first: news back in, campaign out.
    await feedback(opt_out("c-tp", ["campaign"]))
    assert await outcomes(
        deliverer, [mail("tp-news-2", "c-tp", "news"), mail("tp-camp-2", "c-tp", "campaign")]
    ) == {"tp-news-2": ("sent", None), "tp-camp-2": ("suppressed", "campaign")}

    await feedback(resubscribe("c-tp"))
    assert await outcomes(deliverer, [mail("tp-camp-3", "c-tp", "campaign")]) == {
        "tp-camp-3": ("sent", None)
    }
    assert [r.message_id for r in smtp_server.received] == [
        "tp-camp-1",
        "tp-none-1",
        "tp-news-other",
        "tp-news-2",
        "tp-camp-3",
    ]


async def test_a_topic_choice_does_not_lift_an_opt_out_of_the_whole_kind(
    make_deliverer, smtp_server, feedback
):
    deliverer = await make_deliverer()
    await feedback(opt_out("c-all", None))
    await feedback(opt_out("c-all", ["news"]))
    states = await outcomes(deliverer, [mail("tp-all-1", "c-all", "campaign")])
    assert states == {"tp-all-1": ("suppressed", None)}
    assert (await deliverer._ledger.get("tp-all-1")).reason == "unsubscribed"
    assert smtp_server.received == []


async def test_erasure_forgets_the_topic_choices(feedback, sender_pool):
    await feedback(opt_out("c-gone", ["news", "campaign"]))
    assert await sender_pool.fetchval("SELECT count(*) FROM topic_opt_outs") == 2
    await feedback(
        CloudEvent(
            type=event_types.CONTACT_ERASED,
            source="urn:stepmail:ingest",
            subject="c-gone",
            data={"contact_id": "c-gone", "requested_at": NOW},
        )
    )
    assert await sender_pool.fetchval("SELECT count(*) FROM topic_opt_outs") == 0


async def test_the_sender_app_honours_topic_opt_outs_from_the_broker(
    database_url, kafka_bootstrap, smtp_server, sender_pool
):
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    settings = SenderSettings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=topics.prefix,
        kafka_topic_partitions=1,
        kafka_enable_idempotence=False,
        smtp_url=smtp_server.url,
        sender_outbox_interval_seconds=0.1,
    )
    app = create_app(settings)

    async def until_opt_outs(expected: int, within: float = 30.0) -> None:
        """Wait until the sender has recorded ``expected`` topic opt-outs of the contact."""
        deadline = time.monotonic() + within
        query = "SELECT count(*) FROM topic_opt_outs WHERE contact_id = 'c-app'"
        while await sender_pool.fetchval(query) != expected:
            assert time.monotonic() < deadline, f"the sender never recorded {expected} opt-outs"
            await asyncio.sleep(0.05)

    async def publish_mails(producer: EventProducer, *mails: tuple[str, str]) -> None:
        for message_id, topic in mails:
            event = CloudEvent(
                type=event_types.MAIL_RENDERED,
                source="urn:stepmail:renderer",
                subject="c-app",
                data=topical_data(message_id, "c-app", topic),
                id=derived_id(message_id, "rendered"),
            )
            await producer.publish(topics.mail_rendered, event, "c-app")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            EventProducer(kafka_bootstrap, "test", enable_idempotence=False) as producer,
            httpx.AsyncClient(transport=transport, base_url="http://sender") as client,
        ):
            await producer.publish(topics.engagement_events, opt_out("c-app", ["news"]), "c-app")
            # Opt-outs and mails come on different topics: the test lets the opt-out land
            # first, as the tracker's page would long before the next mail is rendered.
            await until_opt_outs(1)
            await publish_mails(producer, ("app-news-1", "news"), ("app-camp-1", "campaign"))
            news = await poll_state(client, "app-news-1")
            campaign = await poll_state(client, "app-camp-1")

            await producer.publish(topics.engagement_events, resubscribe("c-app"), "c-app")
            await until_opt_outs(0)
            await publish_mails(producer, ("app-news-2", "news"))
            news_again = await poll_state(client, "app-news-2")

    assert (news["state"], news["reason"], news["topic"]) == (
        "suppressed",
        "unsubscribed_topic",
        "news",
    )
    assert campaign["state"] == "sent"
    assert news_again["state"] == "sent"
    assert smtp_server.count("app-news-1") == 0
    assert smtp_server.count("app-camp-1") == smtp_server.count("app-news-2") == 1

    def reported(records: list) -> bool:
        return any(_is_suppressed(r) for r in records)

    records = await read_until(kafka_bootstrap, topics.delivery_events, reported)
    event = CloudEvent.from_json(next(r for r in records if _is_suppressed(r)).value)
    assert event.data["message_id"] == "app-news-1"
    assert (event.data["reason"], event.data["topic"]) == ("unsubscribed", "news")


def _is_suppressed(record: Any) -> bool:
    return bool(
        record.value and CloudEvent.from_json(record.value).type == event_types.DELIVERY_SUPPRESSED
    )
