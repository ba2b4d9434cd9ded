"""The broker stops: 503 with Retry-After for one event or a batch, and nothing half-written."""

from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from stepmail_devstack.broker import EmbeddedBroker
from stepmail_devstack.processes import free_port
from stepmail_ingest.app import create_app
from tests.integration.ingest.conftest import ADMIN_KEY, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(free_port()) as own:
        yield own


async def test_broker_down_answers_503_and_remembers_nothing(
    database_url: str, broker: EmbeddedBroker
):
    settings = settings_for(database_url, broker.bootstrap_servers)
    app = create_app(settings)
    event = {"type": "signup", "contact": {"id": "c-1"}}
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://ingest",
            timeout=60,
        ) as client,
    ):
        up = await client.post(
            "/v1/events", json=event, headers={**auth, "Idempotency-Key": "before"}
        )
        assert up.status_code == 202
        broker.stop()
        down = await client.post(
            "/v1/events", json=event, headers={**auth, "Idempotency-Key": "during"}
        )
        assert down.status_code == 503
        assert down.headers["content-type"].startswith("application/problem+json")
        assert int(down.headers["Retry-After"]) >= 1
        # Many events go out as record batches of their own: the same answer.
        batch_down = await client.post(
            "/v1/events:batch",
            json={"events": [event] * 40},
            headers={**auth, "Idempotency-Key": "batch-during"},
        )
        assert batch_down.status_code == 503
        assert int(batch_down.headers["Retry-After"]) >= 1
    connection = await asyncpg.connect(database_url)
    try:
        keys = await connection.fetch("SELECT key FROM ingest.idempotency_keys")
    finally:
        await connection.close()
    assert [r["key"] for r in keys] == ["before"]
