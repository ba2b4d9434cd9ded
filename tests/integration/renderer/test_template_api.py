# ruff: noqa: RUF001 - Japanese text takes full-width punctuation
"""The template store's API on the real broker and Postgres: save, validate, version,
layouts, archive, preview, test send and failure stats."""

import base64
import email
import email.policy
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepmail_common import event_types
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import DLQ_REASON, EventProducer
from stepmail_common.topics import Topics
from stepmail_renderer.app import create_app
from stepmail_renderer.settings import RendererSettings
from tests.integration.kafka_reader import parse_event, read_records

pytestmark = pytest.mark.integration

TOKEN = "api-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CART = {
    "subject": "{{ contact | honorific }}、カートに商品が残っています",
    "mail_kind": "marketing",
    "event_properties": ["items", "total"],
    "html": (
        '{% extends "layouts/base.html.j2" %}{% block content %}'
        "<p>{{ contact | honorific }}</p>"
        '{% for item in event.properties.items %}<p><a href="{{ item.url }}">{{ item.name }}</a>'
        " {{ item.price | yen }}</p>{% endfor %}"
        "<p>合計 {{ event.properties.total | yen }}</p>{% endblock %}"
    ),
    "sample": {
        "event": {
            "name": "cart_abandoned",
            "properties": {
                "items": [
                    {"name": "ほうじ茶", "price": 1280, "url": "https://shop.example.com/i/1"}
                ],
                "total": 1280,
            },
        }
    },
}
BASE = (
    "<html><body>{% block content %}{% endblock %}"
    '<p><a href="{{ unsubscribe_url }}">配信停止</a></p></body></html>'
)


class Api:
    def __init__(self, client: httpx.AsyncClient, settings: RendererSettings) -> None:
        self.client = client
        self.settings = settings
        self.topics = Topics(settings.kafka_topic_prefix)


@pytest.fixture
async def api(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Api]:
    (tmp_path / "templates").mkdir()
    settings = RendererSettings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=f"ra{uuid.uuid4().hex[:10]}.",
        kafka_topic_partitions=1,
        renderer_templates_dir=tmp_path / "templates",
        signing_keys="k1:integration-secret-0123456789",
        stepmail_admin_token=TOKEN,
        tracker_public_url="https://t.example.jp",
        mail_from="デモショップ <shop@example.com>",
        sender_legal_name="株式会社デモショップ",
        sender_postal_address="〒100-0005 東京都千代田区丸の内1-1-1",
        sender_contact="support@example.com",
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://renderer"
        ) as client,
    ):
        yield Api(client, settings)


async def _put(api: Api, template_id: str, body: dict[str, Any]) -> httpx.Response:
    return await api.client.put(f"/v1/templates/{template_id}", json=body, headers=AUTH)


async def test_the_api_needs_the_admin_token(api: Api):
    assert (await api.client.get("/v1/templates")).status_code == 401
    wrong = await api.client.get("/v1/templates", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["content-type"] == "application/problem+json"
    page = await api.client.get("/preview/x")
    assert page.status_code == 401
    assert page.headers["www-authenticate"].startswith("Basic")


async def test_save_version_layouts_preview_and_archive(api: Api):
    missing_layout = await _put(api, "cart", CART)
    assert missing_layout.status_code == 422
    assert "layouts/base.html.j2" in missing_layout.text

    layout = await api.client.put("/v1/layouts/base.html.j2", json={"source": BASE}, headers=AUTH)
    assert layout.status_code == 201

    first = await _put(api, "cart", CART)
    assert (first.status_code, first.json()) == (201, {"id": "cart", "version": 1, "created": True})
    again = await _put(api, "cart", CART)
    assert (again.status_code, again.json()["version"], again.json()["created"]) == (200, 1, False)
    changed = await _put(api, "cart", {**CART, "subject": "カートのお知らせ"})
    assert changed.json() == {"id": "cart", "version": 2, "created": True}

    latest = (await api.client.get("/v1/templates/cart", headers=AUTH)).json()
    assert (latest["version"], latest["subject"]) == (2, "カートのお知らせ")
    v1 = (await api.client.get("/v1/templates/cart/versions/1", headers=AUTH)).json()
    assert v1["subject"] == CART["subject"]
    listed = (await api.client.get("/v1/templates", headers=AUTH)).json()["templates"]
    assert [(t["id"], t["version"]) for t in listed] == [("cart", 2)]

    preview = await api.client.post(
        "/v1/templates/cart/preview",
        json={"contact": {"name": "佐藤 花子"}, "version": 1},
        headers=AUTH,
    )
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["subject"] == "佐藤 花子 様、カートに商品が残っています"
    assert "¥1,280" in body["html"]
    assert "https://t.example.jp/c/" in body["html"]
    assert "配信停止（受信拒否）" in body["text"]
    names = {h["name"] for h in body["headers"]}
    assert {"List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID"} <= names

    basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
    page = await api.client.get("/preview/cart", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200
    assert "カートのお知らせ" in page.text
    assert "<iframe sandbox" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]

    archived = await api.client.delete("/v1/templates/cart", headers=AUTH)
    assert archived.json() == {"id": "cart", "archived": True}
    listed = (await api.client.get("/v1/templates", headers=AUTH)).json()["templates"]
    assert listed == []
    gone = await api.client.post("/v1/templates/cart/preview", json={}, headers=AUTH)
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("change", "field", "detail"),
    [
        ({"html": "<p>{{ contact.name </p>"}, "html", "line 1"),
        (
            {"html": '<p>{{ event.properties.cupon }}</p><a href="{{ unsubscribe_url }}">x</a>'},
            "html",
            "event.properties.cupon",
        ),
        ({"html": "<p>{{ contact.nmae }}</p>{{ unsubscribe_url }}"}, "html", "contact.nmae"),
        ({"html": "<p>こんにちは</p>"}, "html", "unsubscribe link"),
        ({"sender": "nobody"}, "sender", "nobody"),
        ({"mail_kind": "bulk"}, "mail_kind", ""),
    ],
)
async def test_invalid_templates_are_refused_naming_field_and_line(
    api: Api, change: dict[str, Any], field: str, detail: str
):
    body = {"subject": "件名", "html": '<p>本文</p><a href="{{ unsubscribe_url }}">停止</a>'}
    response = await api.client.post(
        "/v1/templates:validate", json={"id": "news", **body, **change}, headers=AUTH
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert any(e["field"] == field and detail in e["detail"] for e in errors), errors
    assert (await api.client.get("/v1/templates/news", headers=AUTH)).status_code == 404


async def test_test_send_and_render_failures_reach_kafka_and_stats(api: Api, kafka_bootstrap: str):
    await api.client.put("/v1/layouts/base.html.j2", json={"source": BASE}, headers=AUTH)
    assert (await _put(api, "cart", CART)).status_code == 201
    sent = await api.client.post(
        "/v1/templates/cart/test-send",
        json={"to": "marketer@example.jp", "test_send_id": "ts-1"},
        headers=AUTH,
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["message_id"]
    assert message_id == derived_id("renderer", "test-send", "ts-1")
    bad_to = await api.client.post(
        "/v1/templates/cart/test-send", json={"to": "not an address"}, headers=AUTH
    )
    assert bad_to.status_code == 422
    assert bad_to.json()["errors"][0]["field"] == "to"

    records = await read_records(kafka_bootstrap, api.topics.mail_rendered, 1)
    event = parse_event(records[0])
    assert event.data["message_id"] == message_id
    assert event.data["envelope"]["rcpt_to"] == "marketer@example.jp"
    msg = email.message_from_string(event.data["mime"], policy=email.policy.default)
    assert msg["X-Stepmail-Test-Send"] == "ts-1"

    # A step naming version 1, whose event lacks the declared 'items': dead-letters.
    async with EventProducer(kafka_bootstrap, "test", enable_idempotence=False) as producer:
        step = CloudEvent(
            type=event_types.STEP_DUE,
            source="urn:test",
            subject="c-1",
            data={
                "message_id": str(uuid.uuid4()),
                "enrollment_id": "enr-1",
                "scenario": {"id": "cart", "version": 1},
                "step": {"id": "reminder", "index": 0},
                "template": "cart",
                "template_version": 1,
                "mail_kind": "marketing",
                "contact": {"id": "c-1", "email": "a@example.jp"},
                "event": {"name": "cart_abandoned", "properties": {"total": 1}},
                "due_at": datetime.now(UTC).isoformat(),
            },
        )
        await producer.publish(api.topics.steps_due, step, key="c-1")
    dlq = await read_records(kafka_bootstrap, Topics.dlq(api.topics.steps_due), 1)
    assert "items" in dict(dlq[0].headers)[DLQ_REASON].decode()
    stats = (await api.client.get("/v1/stats/templates", headers=AUTH)).json()
    assert stats["templates"]["cart"]["failures"] == 1
    assert stats["templates"]["cart"]["by_version"][0]["error"] == "TemplateRenderError"
    metrics = (await api.client.get("/metrics")).text
    assert (
        'stepmail_renderer_template_failures_total{error="TemplateRenderError",template="cart"}'
        in metrics
    )
