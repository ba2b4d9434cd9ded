"""Shopify webhooks (orders, checkouts, customers) onto stepmail's events.

The contact id is ``shopify:<shop domain>:<customer id>``. Shopify's numeric ids exceed
what JavaScript numbers hold exactly, so they travel as strings.

| topic | event |
|---|---|
| ``orders/create`` | customer event ``order.completed`` |
| ``orders/paid`` | customer event ``order.paid`` |
| ``checkouts/create``, ``checkouts/update`` | customer event ``checkout.started`` |
| ``customers/create``, ``customers/update`` | ``contact.updated`` with consent |
| ``customers/redact`` | ``contact.erased`` |
"""

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from stepmail_common import event_types
from stepmail_ingest.adapters.names import full_name
from stepmail_ingest.errors import PayloadError

_CONSENT = {"subscribed": "granted", "unsubscribed": "withdrawn"}


def _id(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | str) and str(value).strip():
        return str(value)
    return None


def _customer_contact(shop: str, customer: object, field: str) -> dict[str, Any] | None:
    if not isinstance(customer, dict):
        return None
    customer_id = _id(customer.get("id"))
    if customer_id is None:
        raise PayloadError(f"{field}.id", "a customer needs an id")
    contact: dict[str, Any] = {"id": f"shopify:{shop}:{customer_id}"}
    email = customer.get("email")
    if isinstance(email, str) and email.strip():
        contact["email"] = email.strip()
    name = full_name(_text(customer.get("first_name")), _text(customer.get("last_name")))
    if name:
        contact["name"] = name[:200]
    locale = customer.get("locale")
    if isinstance(locale, str) and locale:
        contact["locale"] = locale[:35]
    attributes = {"shopify_customer_id": customer_id}
    tags = customer.get("tags")
    if isinstance(tags, str) and tags.strip():
        attributes["shopify_tags"] = tags
    contact["attributes"] = attributes
    return contact


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _money(value: object, field: str) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PayloadError(field, "not a decimal amount") from None
    if not amount.is_finite():
        raise PayloadError(field, "not a decimal amount")
    return amount


def _totals(payload: dict[str, Any]) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    currency = _text(payload.get("currency")) or _text(payload.get("presentment_currency"))
    if currency:
        totals["currency"] = currency
    for name in ("total_price", "subtotal_price", "total_tax", "total_discounts"):
        amount = _money(payload.get(name), name)
        if amount is None:
            continue
        totals[name] = str(amount)
        if currency == "JPY":
            # The yen has no minor unit: a whole number is what templates print (¥1,500).
            totals[f"{name}_yen"] = int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return totals


def _line_items(payload: dict[str, Any]) -> list[dict[str, Any]]:
    items = payload.get("line_items")
    if not isinstance(items, list):
        return []
    result = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise PayloadError(f"line_items.{index}", "not an object")
        price = _money(item.get("price"), f"line_items.{index}.price")
        line: dict[str, Any] = {
            "product_id": _id(item.get("product_id")),
            "variant_id": _id(item.get("variant_id")),
            "title": _text(item.get("title")) or _text(item.get("name")),
            "quantity": item.get("quantity") if isinstance(item.get("quantity"), int) else None,
            "price": None if price is None else str(price),
        }
        for key in ("sku", "variant_title", "vendor"):
            if isinstance(item.get(key), str) and item[key]:
                line[key] = item[key]
        image = item.get("image") or item.get("image_url")
        if isinstance(image, dict):
            image = image.get("src")
        if isinstance(image, str) and image:
            line["image"] = image
        result.append(line)
    return result


def _when(payload: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = payload.get(name)
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                continue
            if parsed.tzinfo is not None:
                return parsed.isoformat()
    return None


def _event(
    name: str, contact: dict[str, Any], properties: dict[str, Any], occurred_at: str
) -> tuple[str, str, dict[str, Any]]:
    data = {"name": name, "contact": contact, "properties": properties, "occurred_at": occurred_at}
    return event_types.EVENT_RECEIVED, contact["id"], data


def _order(
    shop: str, name: str, payload: dict[str, Any], now: datetime
) -> tuple[str, str, dict[str, Any]] | None:
    contact = _customer_contact(shop, payload.get("customer"), "customer")
    if contact is None:
        return None
    if "email" not in contact and isinstance(payload.get("email"), str) and payload["email"]:
        contact["email"] = payload["email"]
    properties: dict[str, Any] = {
        "order_id": _id(payload.get("id")),
        "order_name": _text(payload.get("name")),
        "order_number": payload.get("order_number"),
        "checkout_token": _text(payload.get("checkout_token")),
        "cart_token": _text(payload.get("cart_token")),
        "financial_status": _text(payload.get("financial_status")),
        "order_status_url": _text(payload.get("order_status_url")),
        **_totals(payload),
        "line_items": _line_items(payload),
    }
    when = _when(payload, "processed_at", "created_at") or now.isoformat()
    return _event(name, contact, properties, when)


def _checkout(
    shop: str, payload: dict[str, Any], now: datetime
) -> tuple[str, str, dict[str, Any]] | None:
    contact = _customer_contact(shop, payload.get("customer"), "customer")
    if contact is None:
        return None
    if "email" not in contact and isinstance(payload.get("email"), str) and payload["email"]:
        contact["email"] = payload["email"]
    locale = payload.get("customer_locale")
    if "locale" not in contact and isinstance(locale, str) and locale:
        contact["locale"] = locale[:35]
    properties: dict[str, Any] = {
        "checkout_id": _id(payload.get("id")),
        "checkout_token": _text(payload.get("token")),
        "cart_token": _text(payload.get("cart_token")),
        "abandoned_checkout_url": _text(payload.get("abandoned_checkout_url")),
        "completed_at": _text(payload.get("completed_at")),
        **_totals(payload),
        "line_items": _line_items(payload),
    }
    when = _when(payload, "updated_at", "created_at") or now.isoformat()
    return _event("checkout.started", contact, properties, when)


def _customer(shop: str, payload: dict[str, Any], now: datetime) -> tuple[str, str, dict[str, Any]]:
    contact = _customer_contact(shop, payload, "")
    assert contact is not None
    data: dict[str, Any] = {
        "contact": contact,
        "updated_at": _when(payload, "updated_at") or now.isoformat(),
    }
    consent = payload.get("email_marketing_consent")
    if isinstance(consent, dict) and consent.get("state") in _CONSENT:
        level = _text(consent.get("opt_in_level")) or "unknown"
        data["consent"] = {
            "status": _CONSENT[consent["state"]],
            "kinds": ["marketing"],
            "source": "shopify",
            "at": _when(consent, "consent_updated_at") or now.isoformat(),
            "evidence": {"form": f"Shopify {shop} email_marketing_consent, opt_in_level={level}"},
        }
    return event_types.CONTACT_UPDATED, contact["id"], data


def _redact(shop: str, payload: dict[str, Any], now: datetime) -> tuple[str, str, dict[str, Any]]:
    customer = payload.get("customer")
    customer_id = _id(customer.get("id")) if isinstance(customer, dict) else None
    if customer_id is None:
        raise PayloadError("customer.id", "a redaction names the customer")
    contact_id = f"shopify:{shop}:{customer_id}"
    return (
        event_types.CONTACT_ERASED,
        contact_id,
        {"contact_id": contact_id, "requested_at": now.isoformat()},
    )


def event_for(
    topic: str, shop: str, payload: object, now: datetime
) -> tuple[str, str, dict[str, Any]] | None:
    """(CloudEvent type, contact id, data) of one webhook; ``None`` when it is not used.

    Raises ``PayloadError`` naming the field when a used topic's payload is unusable.
    """
    if not isinstance(payload, dict):
        raise PayloadError("body", "a Shopify webhook body is a JSON object")
    if topic == "orders/create":
        return _order(shop, "order.completed", payload, now)
    if topic == "orders/paid":
        return _order(shop, "order.paid", payload, now)
    if topic in ("checkouts/create", "checkouts/update"):
        return _checkout(shop, payload, now)
    if topic in ("customers/create", "customers/update"):
        if _id(payload.get("id")) is None:
            raise PayloadError("id", "a customer needs an id")
        return _customer(shop, payload, now)
    if topic == "customers/redact":
        return _redact(shop, payload, now)
    return None
