"""Ingest in-process on the real broker and Postgres, each test with its own topics and database."""

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord

from stepmail_common.events import CloudEvent
from stepmail_common.topics import Topics
from stepmail_ingest.app import create_app
from stepmail_ingest.settings import IngestSettings
from tests.integration.kafka_reader import parse_event, read_records

ADMIN_KEY = "sm_test_admin_0123456789abcdefghij"


@dataclass
class Ingest:
    client: httpx.AsyncClient
    settings: IngestSettings
    topic: str

    def auth(self, key: str = ADMIN_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def post(
        self, path: str, body: Any = None, key: str = ADMIN_KEY, **headers: str
    ) -> httpx.Response:
        return await self.client.post(path, json=body, headers={**self.auth(key), **headers})

    async def new_key(self, *scopes: str, rate: float | None = None) -> str:
        body: dict[str, Any] = {"name": "test", "scopes": list(scopes)}
        if rate is not None:
            body["rate_limit_per_second"] = rate
        response = await self.post("/v1/admin/api-keys", body)
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    async def events(self, count: int, within: float = 20.0) -> list[CloudEvent]:
        """The first ``count`` events of contact-events (each also read by the CloudEvents SDK)."""
        records = await read_records(
            self.settings.kafka_bootstrap_servers, self.topic, count, within
        )
        return [parse(r) for r in records]

    async def events_until_sentinel(self) -> list[CloudEvent]:
        """Everything published before a sentinel event, which is posted now."""
        sentinel = {"type": "sentinel", "contact": {"id": f"sentinel-{uuid.uuid4().hex[:6]}"}}
        response = await self.post("/v1/events", sentinel)
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            records = await read_records(
                self.settings.kafka_bootstrap_servers, self.topic, 10_000, 1.0
            )
            events = [parse(r) for r in records]
            if any(e.data.get("name") == "sentinel" for e in events):
                return [e for e in events if e.data.get("name") != "sentinel"]
        raise AssertionError("the sentinel event never arrived")


def parse(record: ConsumerRecord[bytes, bytes]) -> CloudEvent:
    """The event, read by the CloudEvents SDK too, keyed by its contact (the subject)."""
    event = parse_event(record)
    assert record.key == event.subject.encode()
    return event


def settings_for(database_url: str, bootstrap: str, **overrides: Any) -> IngestSettings:
    return IngestSettings(
        database_url=database_url,
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=f"i{uuid.uuid4().hex[:10]}.",
        kafka_topic_partitions=1,
        ingest_bootstrap_api_key=ADMIN_KEY,
        **overrides,
    )


@pytest.fixture
def ingest_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def ingest(
    database_url: str, kafka_bootstrap: str, ingest_overrides: dict[str, Any]
) -> AsyncIterator[Ingest]:
    settings = settings_for(database_url, kafka_bootstrap, **ingest_overrides)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingest"
        ) as client,
    ):
        yield Ingest(client, settings, Topics(settings.kafka_topic_prefix).contact_events)
