"""Shopify webhooks: HMAC over the raw body, orders, abandoned checkouts, customers."""

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

import orjson
import pytest

from stepmail_common import event_types
from tests.integration.ingest.conftest import Ingest
from tests.integration.ingest.shopify_examples import CHECKOUT, CUSTOMER, CUSTOMERS_REDACT, ORDER

pytestmark = pytest.mark.integration

SHOP = "matcha-do.myshopify.com"
SECRET = "shpss_0123456789abcdef0123456789abcdef"
CONTACT_ID = f"shopify:{SHOP}:706405506930370084"


def _hmac(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


async def _send(
    ingest: Ingest,
    topic: str,
    payload: Any,
    *,
    webhook_id: str | None = None,
    sign: bytes | None = None,
) -> Any:
    raw = orjson.dumps(payload)
    return await ingest.client.post(
        "/v1/shopify/webhooks",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-Hmac-Sha256": _hmac(sign if sign is not None else raw),
            "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
            "X-Shopify-API-Version": "2025-04",
        },
    )


@pytest.fixture
async def shop(ingest: Ingest) -> Ingest:
    response = await ingest.client.put(
        f"/v1/admin/webhook-sources/{SHOP}",
        json={"kind": "shopify", "secret": SECRET},
        headers=ingest.auth(),
    )
    assert response.status_code == 200, response.text
    assert "shpss" not in response.text
    return ingest


async def test_order_checkout_and_customer_topics(shop: Ingest):
    for topic, payload in [
        ("checkouts/create", CHECKOUT),
        ("orders/create", ORDER),
        ("customers/update", CUSTOMER),
    ]:
        response = await _send(shop, topic, payload)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
    checkout, order, customer = await shop.events(3)

    assert checkout.subject == order.subject == customer.subject == CONTACT_ID
    assert checkout.data["name"] == "checkout.started"
    assert checkout.data["properties"]["checkout_token"] == ORDER["checkout_token"]
    assert (
        checkout.data["properties"]["abandoned_checkout_url"] == CHECKOUT["abandoned_checkout_url"]
    )
    assert checkout.data["contact"]["locale"] == "ja"

    assert order.data["name"] == "order.completed"
    props = order.data["properties"]
    assert props["order_id"] == "820982911946154508"
    assert props["checkout_token"] == "bd5a8aa1ecd019dd3520ff791ee3a24c"
    assert props["cart_token"] == "eeafa272cebfd4b22385bc4b645e762c"
    assert (props["total_price"], props["total_price_yen"], props["currency"]) == (
        "4380",
        4380,
        "JPY",
    )
    assert props["line_items"] == [
        {
            "product_id": "788032119674292922",
            "variant_id": "642667041472713922",
            "title": "宇治抹茶",
            "quantity": 1,
            "price": "3980",
            "sku": "MATCHA-100",
            "variant_title": "100g",
        }
    ]
    assert order.data["contact"]["name"] == "佐藤 花子"
    assert order.data["occurred_at"] == "2025-04-01T10:00:00+09:00"

    assert customer.type == event_types.CONTACT_UPDATED
    assert customer.data["contact"]["email"] == "hanako.sato@example.jp"
    consent = customer.data["consent"]
    assert consent["status"] == "granted"
    assert consent["kinds"] == ["marketing"]
    assert consent["at"] == "2025-04-01T09:04:30+09:00"
    assert "confirmed_opt_in" in consent["evidence"]["form"]


async def test_signature_is_checked_on_the_raw_body(shop: Ingest):
    raw = orjson.dumps(ORDER)
    tampered = await _send(shop, "orders/create", {**ORDER, "total_price": "1"}, sign=raw)
    assert tampered.status_code == 401
    assert tampered.headers["content-type"].startswith("application/problem+json")
    # Same JSON, serialised differently: the signature of the original bytes no longer fits.
    reserialised = json.dumps(ORDER, indent=1).encode()
    response = await shop.client.post(
        "/v1/shopify/webhooks",
        content=reserialised,
        headers={
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-Hmac-Sha256": _hmac(raw),
        },
    )
    assert response.status_code == 401
    unknown_shop = await shop.client.post(
        "/v1/shopify/webhooks",
        content=raw,
        headers={
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Shop-Domain": "other.myshopify.com",
            "X-Shopify-Hmac-Sha256": _hmac(raw),
        },
    )
    assert unknown_shop.status_code == 401
    assert await shop.events_until_sentinel() == []


async def test_webhook_id_dedupes_and_unused_topics_are_ignored(shop: Ingest):
    first = await _send(
        shop, "orders/create", ORDER, webhook_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    )
    again = await _send(
        shop, "orders/create", ORDER, webhook_id="b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    )
    assert again.json()["results"][0] == {**first.json()["results"][0], "replayed": True}
    ignored = await _send(shop, "products/update", {"id": 1, "title": "抹茶"})
    assert ignored.status_code == 200
    assert ignored.json()["status"] == "ignored"
    guest = await _send(shop, "orders/create", {**ORDER, "customer": None})
    assert guest.json()["status"] == "ignored"
    redact = await _send(shop, "customers/redact", CUSTOMERS_REDACT)
    assert redact.status_code == 200
    events = await shop.events_until_sentinel()
    assert [e.type for e in events] == [event_types.EVENT_RECEIVED, event_types.CONTACT_ERASED]
    assert events[1].data["contact_id"] == CONTACT_ID
