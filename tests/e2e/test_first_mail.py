"""The thin path through all five services, as a person and a CRM would use it."""

import asyncio
import re
import uuid

import httpx
import pytest
from cloudevents.core.bindings import kafka as ce_kafka

from stepmail_devstack.services import signup_event
from tests.e2e import harness

pytestmark = pytest.mark.e2e


_signup = signup_event


def test_signup_sends_a_personal_welcome_mail_whose_link_is_tracked(platform: harness.Platform):
    address = f"hanako.{uuid.uuid4().hex[:6]}@example.com"
    contact_id = f"c-{uuid.uuid4().hex[:8]}"
    response = platform.post_event(_signup(contact_id, address, "山田 花子"))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "accepted"

    mails = harness.wait_for(lambda: platform.mails_to(address), 20, "the welcome mail")
    assert len(mails) == 1
    mail = platform.catcher.message(mails[0]["id"])
    assert mail["rcpt_to"] == [address]
    assert "山田 花子" in mail["text"]
    assert "山田 花子" in mail["html"]
    headers = {name.lower(): value for name, value in mail["headers"]}
    assert "山田 花子" in headers["to"]
    assert headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    assert f"{platform.url('tracker')}/u/" in headers["list-unsubscribe"]

    links = re.findall(r'href="([^"]+)"', mail["html"])
    tracked = [link for link in links if link.startswith(f"{platform.url('tracker')}/c/")]
    assert tracked, f"no tracked link in {links}"
    assert all(
        link.startswith(platform.url("tracker")) for link in links if link.startswith("http")
    ), "every link in the mail goes through the tracker"

    click = httpx.get(tracked[0].replace("&amp;", "&"), follow_redirects=False, timeout=5)
    assert click.status_code == 302
    target = click.headers["location"]
    assert target.startswith("https://")

    def clicked(records: list) -> bool:
        return any(r.key == contact_id.encode() for r in records)

    records = asyncio.run(
        harness.read_topic(platform.kafka_bootstrap, platform.topic("engagement-events"), clicked)
    )
    record = next(r for r in records if r.key == contact_id.encode())
    event = ce_kafka.from_kafka_event(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    )
    assert event.get_type() == "stepmail.engagement.clicked.v1"
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["link"]["url"] == target
    assert data["contact_id"] == contact_id


def test_malformed_event_is_refused_with_the_field_and_produces_nothing(
    platform: harness.Platform,
):
    topic = platform.topic("contact-events")
    before = asyncio.run(harness.end_offsets(platform.kafka_bootstrap, topic))
    response = platform.post_event(
        {"type": "signup", "contact": {"id": "c-bad", "email": "not-an-address"}}
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == ["contact.email"]

    no_json = httpx.post(
        f"{platform.url('ingest')}/v1/events",
        content=b"{not json",
        headers={"Authorization": f"Bearer {platform.api_key}", "Content-Type": "application/json"},
    )
    assert no_json.status_code == 422
    assert no_json.headers["content-type"].startswith("application/problem+json")

    unauthenticated = httpx.post(
        f"{platform.url('ingest')}/v1/events", json=_signup("c-x", "x@example.com", "x")
    )
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["content-type"].startswith("application/problem+json")

    after = asyncio.run(harness.end_offsets(platform.kafka_bootstrap, topic))
    assert after == before


def test_one_idempotency_key_gives_one_mail(platform: harness.Platform):
    address = f"taro.{uuid.uuid4().hex[:6]}@example.com"
    contact_id = f"c-{uuid.uuid4().hex[:8]}"
    key = f"signup-{contact_id}"
    first = platform.post_event(
        _signup(contact_id, address, "佐藤 太郎"), **{"Idempotency-Key": key}
    )
    second = platform.post_event(
        _signup(contact_id, address, "佐藤 太郎"), **{"Idempotency-Key": key}
    )
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.json()["replayed"] is True

    harness.wait_for(lambda: platform.mails_to(address), 20, "the welcome mail")
    # A later contact's mail has passed through every stage: the replay would be there by now.
    sentinel = f"sentinel.{uuid.uuid4().hex[:6]}@example.com"
    platform.post_event(_signup(f"c-{uuid.uuid4().hex[:8]}", sentinel, "Sentinel"))
    harness.wait_for(lambda: platform.mails_to(sentinel), 20, "the sentinel mail")
    assert len(platform.mails_to(address)) == 1
    assert len(platform.enrollments(contact_id)) == 1
