"""Pure pieces: token buckets, names, Shopify money, API key caching."""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from stepmail_ingest.adapters import shopify
from stepmail_ingest.adapters.names import full_name
from stepmail_ingest.auth import ApiKeys, basic_username, hash_api_key
from stepmail_ingest.errors import PayloadError
from stepmail_ingest.ratelimit import RateLimiter, retry_after
from stepmail_ingest.repository import ApiKey


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_refills_at_the_rate():
    clock = Clock()
    limiter = RateLimiter(burst_seconds=2.0, monotonic=clock)
    assert [limiter.take("k", 1.0) for _ in range(2)] == [0.0, 0.0]
    wait = limiter.take("k", 1.0)
    assert wait == pytest.approx(1.0)
    assert retry_after(wait) == "1"
    clock.t += 1.0
    assert limiter.take("k", 1.0) == 0.0
    assert limiter.take("other", 1.0) == 0.0


def test_names_follow_the_language():
    assert full_name("花子", "佐藤") == "佐藤 花子"
    assert full_name("Hanako", "Sato") == "Hanako Sato"
    assert full_name(None, "佐藤") == "佐藤"
    assert full_name("", None) is None


def test_shopify_yen_and_bad_money():
    now = datetime(2025, 4, 1, tzinfo=UTC)
    order: dict[str, Any] = {
        "id": 1,
        "currency": "JPY",
        "total_price": "1500.00",
        "customer": {"id": 2},
        "line_items": [],
    }
    mapped = shopify.event_for("orders/create", "s.myshopify.com", order, now)
    assert mapped is not None
    assert mapped[2]["properties"]["total_price_yen"] == 1500
    assert mapped[1] == "shopify:s.myshopify.com:2"
    with pytest.raises(PayloadError) as error:
        shopify.event_for("orders/create", "s", {**order, "total_price": "abc"}, now)
    assert error.value.field == "total_price"
    usd = shopify.event_for("orders/create", "s", {**order, "currency": "USD"}, now)
    assert usd is not None
    assert "total_price_yen" not in usd[2]["properties"]


def test_basic_user_name():
    assert basic_username("Basic YWJjOg==") == "abc"
    with pytest.raises(Exception, match="Unauthorized"):
        basic_username("Bearer abc")


class FakeRepo:
    def __init__(self) -> None:
        self.calls = 0
        self.key = ApiKey(uuid.uuid4(), "k", frozenset({"events:write"}))

    async def api_key_by_hash(self, key_hash: bytes) -> ApiKey | None:
        self.calls += 1
        return self.key if key_hash == hash_api_key("sm_good") else None


def test_key_cache_spares_the_database_until_it_expires():
    clock = Clock()
    repo = FakeRepo()
    keys = ApiKeys(repo, ttl=10.0, monotonic=clock)  # type: ignore[arg-type]

    async def run() -> None:
        for _ in range(5):
            assert await keys.lookup("sm_good") == repo.key
        assert repo.calls == 1
        clock.t += 11
        await keys.lookup("sm_good")
        assert repo.calls == 2
        keys.forget(hash_api_key("sm_good"))
        await keys.lookup("sm_good")
        assert repo.calls == 3

    asyncio.run(run())


def test_free_form_objects_refuse_integers_no_consumer_can_read():
    from pydantic import ValidationError

    from stepmail_ingest.schemas import EventIn

    with pytest.raises(ValidationError) as error:
        EventIn.model_validate({"type": "x", "contact": {"id": "c"}, "properties": {"n": [2**64]}})
    assert error.value.errors()[0]["loc"] == ("properties",)
    EventIn.model_validate({"type": "x", "contact": {"id": "c"}, "properties": {"n": 2**63 - 1}})
    EventIn.model_validate({"type": "x", "contact": {"id": "c"}, "properties": {"n": -(2**63)}})
    with pytest.raises(ValidationError):
        EventIn.model_validate(
            {"type": "x", "contact": {"id": "c"}, "properties": {"n": -(2**63) - 1}}
        )


def test_free_form_objects_refuse_values_nested_more_than_64_levels():
    from pydantic import ValidationError

    from stepmail_ingest.schemas import EventIn

    def nested(levels: int, leaf: object) -> object:
        value = leaf
        for level in range(levels):
            value = {"k": value} if level % 2 else [value]
        return value

    def event(properties: object) -> dict[str, object]:
        return {"type": "x", "contact": {"id": "c"}, "properties": properties}

    # ``properties`` is level 0, its values level 1: 63 containers put the leaf at 64.
    EventIn.model_validate(event({"deep": nested(63, "leaf")}))
    EventIn.model_validate(event({"deep": nested(63, [])}))
    with pytest.raises(ValidationError, match="nested more than 64 levels"):
        EventIn.model_validate(event({"deep": nested(64, "leaf")}))


def test_contacts_keep_the_addresses_events_carry():
    from pydantic import ValidationError

    from stepmail_ingest.schemas import EventIn
    from tests.unit.common.test_events import BREAKING_ADDRESSES, LEGACY_ADDRESSES

    def event(address: str) -> dict[str, object]:
        return {"type": "signup", "contact": {"id": "c", "email": address}}

    for address in LEGACY_ADDRESSES:
        assert EventIn.model_validate(event(address)).contact.email == address
    for address in BREAKING_ADDRESSES:
        with pytest.raises(ValidationError):
            EventIn.model_validate(event(address))
