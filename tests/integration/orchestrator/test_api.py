"""The scenario API over HTTP, with the app's real lifespan (Postgres and the broker)."""

import uuid
from typing import Any

import httpx
import pytest

from stepmail_orchestrator.app import create_app
from stepmail_orchestrator.settings import OrchestratorSettings

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": "Bearer dev-admin-token"}
SCENARIO: dict[str, Any] = {
    "id": "series",
    "mail_kind": "transactional",
    "trigger": {"event": "signup"},
    "steps": [
        {"id": "one", "send": {"template": "t1"}},
        {"id": "two", "wait": "2d", "send": {"template": "t2"}},
    ],
}


@pytest.fixture
async def client(database_url, kafka_bootstrap):
    settings = OrchestratorSettings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=f"api{uuid.uuid4().hex[:8]}.",
        kafka_topic_partitions=1,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orchestrator") as client:
            yield client


async def test_scenarios_are_validated_versioned_and_switched(client):
    assert (await client.get("/v1/scenarios")).status_code == 401
    assert (
        await client.get("/v1/scenarios", headers={"Authorization": "Bearer nope"})
    ).status_code == 401

    bad = {**SCENARIO, "steps": [{"id": "one", "wait": "soon", "send": {"template": "t"}}]}
    response = await client.post("/v1/scenarios:validate", json=bad, headers=ADMIN)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "steps[0].wait"

    created = await client.put("/v1/scenarios/series", json=SCENARIO, headers=ADMIN)
    assert created.status_code == 201
    assert created.json() == {"id": "series", "version": 1, "created": True}
    same = await client.put("/v1/scenarios/series", json=SCENARIO, headers=ADMIN)
    assert (same.status_code, same.json()["version"]) == (200, 1)
    changed = {**SCENARIO, "steps": SCENARIO["steps"][:1]}
    assert (await client.put("/v1/scenarios/series", json=changed, headers=ADMIN)).json()[
        "version"
    ] == 2
    mismatch = await client.put("/v1/scenarios/other", json=SCENARIO, headers=ADMIN)
    assert mismatch.status_code == 422

    assert (await client.post("/v1/scenarios/series/pause", headers=ADMIN)).json()[
        "status"
    ] == "paused"
    listed = (await client.get("/v1/scenarios", headers=ADMIN)).json()["scenarios"]
    assert [(s["id"], s["version"], s["status"]) for s in listed] == [("series", 2, "paused")]
    assert (await client.post("/v1/scenarios/nothing/resume", headers=ADMIN)).status_code == 404


async def test_timeline_and_stats(client):
    await client.put("/v1/scenarios/series", json=SCENARIO, headers=ADMIN)
    response = await client.post(
        "/v1/scenarios/series/timeline",
        json={
            "contact": {"id": "c-1", "email": "a@example.com"},
            "event": {"name": "signup"},
            "start": "2026-11-23T10:00:00+09:00",
        },
        headers=ADMIN,
    )
    assert response.status_code == 200
    sends = [(e["step"], e["at"]) for e in response.json()["timeline"] if e["action"] == "send"]
    assert sends == [("one", "2026-11-23T10:00:00+09:00"), ("two", "2026-11-25T10:00:00+09:00")]
    stats = (await client.get("/v1/scenarios/series/stats", headers=ADMIN)).json()
    assert stats["entered"] == 0
    assert stats["steps"] == []
