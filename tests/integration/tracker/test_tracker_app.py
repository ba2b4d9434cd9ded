"""The tracker over HTTP with the real broker: redirects, refusals, unsubscribes."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import REGISTRY

from stepmail_common import event_types
from stepmail_common.signing import Signer
from stepmail_common.topics import Topics
from stepmail_common.tracking import ClickToken, MailRef, UnsubscribeToken
from stepmail_tracker.app import create_app
from stepmail_tracker.settings import TrackerSettings
from tests.integration.kafka_reader import parse_event, read_records

pytestmark = pytest.mark.integration

KEYS = "k2:integration-secret-0123456789,k1:older-secret-abcdefghijkl"
SIGNER = Signer.from_spec(KEYS)
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"


@dataclass
class Tracker:
    client: httpx.AsyncClient
    topics: Topics
    bootstrap: str
    app: object


def _ref(contact_id: str) -> MailRef:
    return MailRef(str(uuid.uuid4()), contact_id, "welcome", 1, "welcome", 0)


@pytest.fixture
async def tracker(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Tracker]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = TrackerSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=prefix,
        kafka_topic_partitions=1,
        signing_keys=KEYS,
        database_url=database_url,
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://tracker.test"
        ) as client,
    ):
        yield Tracker(client, Topics(prefix), kafka_bootstrap, app)


async def test_valid_click_redirects_to_the_exact_url_and_publishes(tracker: Tracker):
    url = "https://shop.example.com/getting-started?utm_source=stepmail&utm_campaign=welcome#top"
    token = ClickToken(_ref("c-42"), 3, url).encode(SIGNER)
    response = await tracker.client.get(f"/c/{token}", headers={"User-Agent": BROWSER})
    assert response.status_code == 302
    assert response.headers["location"] == url
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    records = await read_records(tracker.bootstrap, tracker.topics.engagement_events, 1)
    assert len(records) == 1
    assert records[0].key == b"c-42"
    event = parse_event(records[0])
    assert event.type == event_types.ENGAGEMENT_CLICKED
    assert event.subject == "c-42"
    assert event.data["link"] == {"index": 3, "url": url}
    assert event.data["machine"] is False


async def test_a_tampered_or_foreign_token_is_refused_without_redirect(tracker: Tracker):
    good = ClickToken(_ref("c-1"), 0, "https://shop.example.com/").encode(SIGNER)
    kid, _, mac = good.split(".")
    evil = ClickToken(_ref("c-1"), 0, "https://evil.example.net/").encode(SIGNER).split(".")[1]
    foreign = ClickToken(_ref("c-1"), 0, "https://evil.example.net/").encode(
        Signer.from_spec("k2:someone-elses-secret-000000")
    )
    unsubscribe_as_click = UnsubscribeToken(_ref("c-1"), "marketing").encode(SIGNER)
    for token in (f"{kid}.{evil}.{mac}", foreign, good[:-2], "x", unsubscribe_as_click):
        response = await tracker.client.get(f"/c/{token}")
        assert response.status_code == 400, token
        assert "location" not in response.headers
        assert response.headers["content-type"].startswith("text/html")
        assert "このリンクは無効です" in response.text
        assert "This link is not valid" in response.text
    # Nothing was published: the next valid click is the topic's first event.
    marker = ClickToken(_ref("c-marker"), 0, "https://shop.example.com/").encode(SIGNER)
    assert (await tracker.client.get(f"/c/{marker}")).status_code == 302
    records = await read_records(tracker.bootstrap, tracker.topics.engagement_events, 1)
    assert [r.key for r in records] == [b"c-marker"]


async def test_a_scanner_click_is_marked_as_machine(tracker: Tracker):
    token = ClickToken(_ref("c-7"), 0, "https://shop.example.com/").encode(SIGNER)
    response = await tracker.client.get(f"/c/{token}", headers={"User-Agent": "Barracuda"})
    assert response.status_code == 302
    records = await read_records(tracker.bootstrap, tracker.topics.engagement_events, 1)
    assert parse_event(records[0]).data["machine"] is True


async def test_get_confirms_and_one_click_post_unsubscribes_idempotently(tracker: Tracker):
    ref = _ref("c-9")
    path = f"/u/{UnsubscribeToken(ref, 'marketing').encode(SIGNER)}"
    page = await tracker.client.get(path)
    assert page.status_code == 200
    assert '<meta charset="utf-8">' in page.text
    assert '<html lang="ja">' in page.text
    assert '<section lang="en">' in page.text
    assert '<form method="post">' in page.text
    assert page.text.index("配信停止") < page.text.index("Unsubscribe")

    # A click between the GET and the POSTs: had the GET published, it would come first.
    marker = ClickToken(ref, 0, "https://shop.example.com/").encode(SIGNER)
    assert (await tracker.client.get(f"/c/{marker}")).status_code == 302

    one_click = {"List-Unsubscribe": "One-Click"}
    first = await tracker.client.post(path, data=one_click)
    assert first.status_code == 200
    assert "location" not in first.headers
    assert "配信停止のお手続きが完了しました" in first.text
    replay = await tracker.client.post(path, data=one_click)
    assert replay.status_code == 200
    assert "location" not in replay.headers

    records = await read_records(tracker.bootstrap, tracker.topics.engagement_events, 3)
    events = [parse_event(r) for r in records]
    assert [e.type for e in events] == [
        event_types.ENGAGEMENT_CLICKED,
        event_types.ENGAGEMENT_UNSUBSCRIBED,
        event_types.ENGAGEMENT_UNSUBSCRIBED,
    ]
    assert events[1].id == events[2].id
    assert events[1].data["method"] == "one-click"
    assert events[1].data["mail_kind"] == "marketing"
    assert events[1].data["message_id"] == ref.message_id
    assert all(r.key == b"c-9" for r in records)


async def test_multipart_one_click_and_page_form(tracker: Tracker):
    token = UnsubscribeToken(_ref("c-10"), "marketing").encode(SIGNER)
    multipart = await tracker.client.post(
        f"/u/{token}", files={"List-Unsubscribe": (None, "One-Click")}
    )
    assert multipart.status_code == 200
    page_form = await tracker.client.post(f"/u/{token}", data={"confirm": "page"})
    assert page_form.status_code == 200
    records = await read_records(tracker.bootstrap, tracker.topics.engagement_events, 2)
    assert [parse_event(r).data["method"] for r in records] == ["one-click", "page"]


async def test_an_invalid_unsubscribe_token_is_refused(tracker: Tracker):
    click = ClickToken(_ref("c-1"), 0, "https://shop.example.com/").encode(SIGNER)
    assert (await tracker.client.get(f"/u/{click}")).status_code == 400
    response = await tracker.client.post(f"/u/{click}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 400


async def test_the_person_is_redirected_even_when_the_broker_is_gone(tracker: Tracker):
    before = REGISTRY.get_sample_value(
        "stepmail_tracker_publish_failures_total", {"event": "clicked"}
    )
    await tracker.app.state.producer.stop()  # type: ignore[attr-defined]
    token = ClickToken(_ref("c-11"), 0, "https://shop.example.com/").encode(SIGNER)
    response = await tracker.client.get(f"/c/{token}", headers={"User-Agent": BROWSER})
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example.com/"
    after = REGISTRY.get_sample_value(
        "stepmail_tracker_publish_failures_total", {"event": "clicked"}
    )
    assert (after or 0) == (before or 0) + 1
    # An unsubscribe, though, is only confirmed once recorded.
    path = f"/u/{UnsubscribeToken(_ref('c-11'), 'marketing').encode(SIGNER)}"
    refused = await tracker.client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert refused.status_code == 503
    assert "retry-after" in refused.headers


async def test_metrics_are_exposed(tracker: Tracker):
    token = ClickToken(_ref("c-12"), 0, "https://shop.example.com/").encode(SIGNER)
    await tracker.client.get(f"/c/{token}", headers={"User-Agent": BROWSER})
    await tracker.client.get("/c/bad")
    text = (await tracker.client.get("/metrics")).text
    assert 'stepmail_tracker_clicks_total{machine="false"}' in text
    assert 'stepmail_tracker_invalid_tokens_total{route="click"}' in text
    assert (await tracker.client.get("/readyz")).status_code == 200
