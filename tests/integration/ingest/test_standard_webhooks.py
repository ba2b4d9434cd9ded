"""Generic webhooks signed the Standard Webhooks way, checked against the reference library."""

import json
import time
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from tests.integration.ingest.conftest import Ingest

pytestmark = pytest.mark.integration

EVENT = {"type": "trial.started", "contact": {"id": "crm-5"}, "properties": {"plan": "pro"}}


def _headers(secret: str, msg_id: str, body: bytes, at: float | None = None) -> dict[str, str]:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


@pytest.fixture
async def source(ingest: Ingest) -> tuple[Ingest, str]:
    response = await ingest.client.put(
        "/v1/admin/webhook-sources/crm", json={"kind": "standard"}, headers=ingest.auth()
    )
    assert response.status_code == 200
    secret: str = response.json()["secret"]
    assert secret.startswith("whsec_")
    listed = await ingest.client.get("/v1/admin/webhook-sources", headers=ingest.auth())
    assert secret not in listed.text
    return ingest, secret


async def _post(ingest: Ingest, body: bytes, headers: dict[str, str]) -> Any:
    return await ingest.client.post("/v1/webhooks/crm", content=body, headers=headers)


async def test_signed_event_and_batch_are_accepted_once(source: tuple[Ingest, str]):
    ingest, secret = source
    body = orjson.dumps(EVENT)
    first = await _post(ingest, body, _headers(secret, "msg_1", body))
    assert first.status_code == 202, first.text
    again = await _post(ingest, body, _headers(secret, "msg_1", body))
    assert again.json()["results"][0]["replayed"] is True
    batch = orjson.dumps({"events": [EVENT, {**EVENT, "contact": {"id": "crm-6"}}]})
    assert (await _post(ingest, batch, _headers(secret, "msg_2", batch))).status_code == 202
    events = await ingest.events_until_sentinel()
    assert [e.subject for e in events] == ["crm-5", "crm-5", "crm-6"]
    assert events[0].id == first.json()["results"][0]["id"]


async def test_bad_signatures_and_stale_timestamps_are_refused(source: tuple[Ingest, str]):
    ingest, secret = source
    body = orjson.dumps(EVENT)
    good = _headers(secret, "msg_3", body)
    tampered = orjson.dumps({**EVENT, "type": "trial.ended"})
    assert (await _post(ingest, tampered, good)).status_code == 401
    reserialised = json.dumps(EVENT, indent=2).encode()
    assert (await _post(ingest, reserialised, good)).status_code == 401
    for skew in (-301, 301):
        stale = _headers(secret, "msg_4", body, time.time() + skew)
        assert (await _post(ingest, body, stale)).status_code == 401
    missing = {k: v for k, v in good.items() if k != "webhook-signature"}
    assert (await _post(ingest, body, missing)).status_code == 401
    other = await ingest.client.post("/v1/webhooks/unknown", content=body, headers=good)
    assert other.status_code == 401
    invalid = orjson.dumps({"type": "x", "contact": {}})
    refused = await _post(ingest, invalid, _headers(secret, "msg_5", invalid))
    assert refused.status_code == 422
    assert await ingest.events_until_sentinel() == []
