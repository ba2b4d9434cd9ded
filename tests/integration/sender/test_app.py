"""The sender process end to end in one test: real broker, real Postgres, real SMTP server."""

import asyncio
import time
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from cloudevents.core.bindings import kafka as ce_kafka

from stepmail_common import event_types
from stepmail_common.events import CloudEvent, derived_id, validate
from stepmail_common.kafka import EventProducer
from stepmail_common.topics import Topics
from stepmail_sender.app import create_app
from stepmail_sender.settings import SenderSettings
from tests.integration.sender.conftest import rendered_data

pytestmark = pytest.mark.integration


async def read_until(bootstrap: str, topic: str, done, within: float = 30.0) -> list:
    """Read ``topic`` from the start until ``done(records)`` holds, within a deadline."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(1)])
        await consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + within
        while not done(records):
            assert time.monotonic() < deadline, f"only {len(records)} records on {topic}"
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def poll_state(client: httpx.AsyncClient, message_id: str, within: float = 30.0) -> dict:
    deadline = time.monotonic() + within
    while True:
        response = await client.get(f"/v1/deliveries/{message_id}")
        if response.status_code == 200 and response.json()["state"] not in ("accepted", "sending"):
            return response.json()
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.05)


async def test_consumed_mails_are_sent_once_and_reported_on_the_broker(
    database_url, kafka_bootstrap, smtp_server
):
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    settings = SenderSettings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=topics.prefix,
        kafka_topic_partitions=1,
        kafka_enable_idempotence=False,
        smtp_url=smtp_server.url,
        smtp_retry_backoff_seconds=0.01,
        sender_outbox_interval_seconds=0.1,
    )
    smtp_server.rcpt_script["gone@example.org"] = ["550 5.1.1 unknown user"]
    mails = {
        "app-ok-1": ("c-1", "one@example.org"),
        "app-ok-2": ("c-2", "two@example.org"),
        "app-550": ("c-3", "gone@example.org"),
    }
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with EventProducer(kafka_bootstrap, "test", enable_idempotence=False) as producer:
            # The first mail twice, as a redelivery would bring it.
            for message_id in ["app-ok-1", "app-ok-1", "app-ok-2", "app-550"]:
                contact_id, rcpt = mails[message_id]
                event = CloudEvent(
                    type=event_types.MAIL_RENDERED,
                    source="urn:stepmail:renderer",
                    subject=contact_id,
                    data=rendered_data(message_id, rcpt_to=rcpt, contact_id=contact_id),
                    id=derived_id(message_id, "rendered"),
                )
                await producer.publish(topics.mail_rendered, event, contact_id)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sender") as client:
            ok_1 = await poll_state(client, "app-ok-1")
            ok_2 = await poll_state(client, "app-ok-2")
            refused = await poll_state(client, "app-550")
            missing = await client.get("/v1/deliveries/nope")
            ready = await client.get("/readyz")
            exposed = (await client.get("/metrics")).text
    assert (ok_1["state"], ok_1["attempt"], ok_1["smtp_code"]) == ("sent", 1, 250)
    assert ok_2["state"] == "sent"
    assert (refused["state"], refused["smtp_code"]) == ("failed", 550)
    assert "example.org" not in str([ok_1, ok_2, refused])
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert ready.status_code == 200, ready.text
    assert "stepmail_sender_smtp_seconds_bucket" in exposed
    assert smtp_server.count("app-ok-1") == 1
    assert smtp_server.count("app-ok-2") == 1

    def complete(records: list) -> bool:
        types = {r.value and CloudEvent.from_json(r.value).type for r in records}
        return len(records) >= 6 and event_types.DELIVERY_FAILED in types

    records = await read_until(kafka_bootstrap, topics.delivery_events, complete)
    seen = []
    for record in records:
        parsed = ce_kafka.from_kafka_event(
            ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
        )
        data = parsed.get_data()
        assert isinstance(data, dict)
        validate(CloudEvent.from_json(record.value).to_dict())
        assert record.key == mails[data["message_id"]][0].encode()
        assert parsed.get_subject() == mails[data["message_id"]][0]
        assert parsed.get_source() == "urn:stepmail:sender"
        assert parsed.get_id() == derived_id(
            data["message_id"], data["state"], str(data["attempt"])
        )
        seen.append((data["message_id"], parsed.get_type()))
    assert sorted(set(seen)) == sorted(
        [
            ("app-550", event_types.DELIVERY_SENDING),
            ("app-550", event_types.DELIVERY_FAILED),
            ("app-ok-1", event_types.DELIVERY_SENDING),
            ("app-ok-1", event_types.DELIVERY_SENT),
            ("app-ok-2", event_types.DELIVERY_SENDING),
            ("app-ok-2", event_types.DELIVERY_SENT),
        ]
    )
