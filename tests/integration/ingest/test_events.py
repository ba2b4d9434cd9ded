"""Customer events, single and batched: durability, idempotency, all-or-nothing, errors."""

import json
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from stepmail_common import event_types
from stepmail_ingest.schemas import BatchAccepted, EventAccepted
from tests.integration.ingest.conftest import Ingest

pytestmark = pytest.mark.integration


def _event(contact_id: str = "c-1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "signup",
        "contact": {"id": contact_id, "email": "hanako@example.jp", "name": "佐藤 花子"},
        "properties": {"plan": "trial", "price_yen": 1500},
        **extra,
    }


async def test_event_is_published_as_a_cloudevent_keyed_by_contact(ingest: Ingest):
    response = await ingest.post(
        "/v1/events", _event("c-42", occurred_at="2025-04-01T09:00:00+09:00")
    )
    assert response.status_code == 202
    body = response.json()
    assert response.headers["content-type"] == "application/json"
    assert EventAccepted.model_validate(body).model_dump() == body
    assert "Idempotent-Replayed" not in response.headers
    (event,) = await ingest.events(1)
    assert event.id == body["id"]
    assert event.type == event_types.EVENT_RECEIVED
    assert event.subject == "c-42"
    assert event.data["name"] == "signup"
    assert event.data["contact"]["name"] == "佐藤 花子"
    assert event.data["properties"] == {"plan": "trial", "price_yen": 1500}
    assert event.data["occurred_at"] == "2025-04-01T09:00:00+09:00"


async def test_idempotency_key_and_event_id_dedupe(ingest: Ingest):
    first = await ingest.post("/v1/events", _event(), **{"Idempotency-Key": "k-1"})
    again = await ingest.post("/v1/events", _event(), **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == {"id": first.json()["id"], "status": "accepted", "replayed": True}
    assert again.headers["Idempotent-Replayed"] == "true"
    reused = await ingest.post("/v1/events", _event("c-other"), **{"Idempotency-Key": "k-1"})
    assert reused.status_code == 422
    assert reused.json()["errors"][0]["field"] == "k-1"
    by_id = [await ingest.post("/v1/events", _event(id="evt-7")) for _ in range(2)]
    assert by_id[0].json()["id"] == by_id[1].json()["id"]
    events = await ingest.events_until_sentinel()
    assert sorted(e.id for e in events) == sorted([first.json()["id"], by_id[0].json()["id"]])


async def test_batch_is_one_request_with_per_event_results(ingest: Ingest):
    events = [_event(f"c-{i}", id=f"b-{i}") for i in range(3)] + [_event("c-0", id="b-0")]
    counted = {"type": event_types.EVENT_RECEIVED}
    before = REGISTRY.get_sample_value("stepmail_ingest_events_accepted_total", counted) or 0
    response = await ingest.post("/v1/events:batch", {"events": events})
    after = REGISTRY.get_sample_value("stepmail_ingest_events_accepted_total", counted)
    assert after == before + 3
    assert response.status_code == 202, response.text
    body = response.json()
    assert BatchAccepted.model_validate(body).model_dump() == body
    assert (body["accepted"], body["replayed"]) == (3, 1)
    assert [r["replayed"] for r in body["results"]] == [False, False, False, True]
    assert body["results"][3]["id"] == body["results"][0]["id"]
    published = await ingest.events_until_sentinel()
    assert sorted(e.subject for e in published) == ["c-0", "c-1", "c-2"]


async def test_invalid_batch_produces_nothing_and_names_the_field(ingest: Ingest):
    events = [_event("c-ok"), _event("c-bad"), _event("c-ok2")]
    events[1]["contact"]["email"] = "not-an-address"
    response = await ingest.post("/v1/events:batch", {"events": events})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == ["events.1.contact.email"]
    too_many = await ingest.post("/v1/events:batch", {"events": [_event()] * 1001})
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["field"] == "events"
    assert await ingest.events_until_sentinel() == []


async def test_unknown_fields_rejected_but_properties_free(ingest: Ingest):
    typo = _event()
    typo["contact"]["emial"] = "x@example.com"
    response = await ingest.post("/v1/events", typo)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "contact.emial"
    free = _event()
    free["properties"] = {"anything": {"nested": [1, "二"]}}
    free["contact"]["attributes"] = {"会員ランク": "ゴールド"}
    assert (await ingest.post("/v1/events", free)).status_code == 202


async def test_body_over_the_limit_is_413(ingest: Ingest):
    big = _event()
    big["properties"] = {"blob": "x" * (ingest.settings.ingest_max_body_bytes + 1)}
    response = await ingest.post("/v1/events", big)
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await ingest.events_until_sentinel() == []


async def test_keys_scopes_and_revocation(ingest: Ingest):
    assert (await ingest.client.post("/v1/events", json=_event())).status_code == 401
    unknown = await ingest.post("/v1/events", _event(), key="sm_nope")
    assert unknown.status_code == 401
    assert unknown.headers["content-type"].startswith("application/problem+json")
    contacts_only = await ingest.new_key("contacts:write")
    forbidden = await ingest.post("/v1/events", _event(), key=contacts_only)
    assert forbidden.status_code == 403
    writer = await ingest.new_key("events:write")
    assert (await ingest.post("/v1/events", _event(), key=writer)).status_code == 202
    assert (
        await ingest.post("/v1/admin/api-keys", {"name": "x", "scopes": ["admin"]}, key=writer)
    ).status_code == 403

    listed = (await ingest.client.get("/v1/admin/api-keys", headers=ingest.auth())).json()[
        "api_keys"
    ]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    writer_id = next(k["id"] for k in listed if k["scopes"] == ["events:write"])
    revoked = await ingest.client.delete(f"/v1/admin/api-keys/{writer_id}", headers=ingest.auth())
    assert revoked.status_code == 204
    assert (await ingest.post("/v1/events", _event(), key=writer)).status_code == 401
    missing = await ingest.client.delete(
        f"/v1/admin/api-keys/{uuid.uuid4()}", headers=ingest.auth()
    )
    assert missing.status_code == 404


async def test_rate_limit_answers_429_with_retry_after(ingest: Ingest):
    slow = await ingest.new_key("events:write", rate=0.5)
    answers = [(await ingest.post("/v1/events", _event(), key=slow)) for _ in range(3)]
    assert [a.status_code for a in answers[:1]] == [202]
    limited = answers[-1]
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["type"] == "urn:stepmail:problem:rate-limited"


async def _raw(ingest: Ingest, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    response = await ingest.client.post("/v1/events", content=body, headers=headers)
    return response.status_code, response.json()


def _fields(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["field"], e["detail"]) for e in doc.get("errors", [])]


async def test_event_routes_answer_in_fastapis_order(ingest: Ingest):
    """The event routes read their request by hand; the answers are FastAPI's own:
    the body is decoded before the key is checked, the key before fields are validated,
    and the header's and the body's wrong fields come in one answer."""
    json_type = {"Content-Type": "application/json"}
    authed = {**ingest.auth(), **json_type}
    valid = json.dumps(_event()).encode()

    status, doc = await _raw(ingest, b'{"type": ', json_type)
    assert (status, _fields(doc)) == (422, [("9", "JSON decode error")])
    assert (await _raw(ingest, valid, json_type))[0] == 401
    assert (await _raw(ingest, valid, {**json_type, "Authorization": "Basic abc"}))[0] == 401
    assert (await _raw(ingest, b'{"type": "\xff"}', authed))[0] == 400

    status, doc = await _raw(ingest, b"", authed)
    assert (status, _fields(doc)) == (422, [("body", "Field required")])
    status, doc = await _raw(ingest, valid, {**ingest.auth(), "Content-Type": "text/plain"})
    assert status == 422
    assert [field for field, _ in _fields(doc)] == ["body"]
    assert (await _raw(ingest, valid, ingest.auth()))[0] == 422

    bad = _event()
    bad["contact"]["email"] = "not-an-address"
    status, doc = await _raw(
        ingest, json.dumps(bad).encode(), {**authed, "Idempotency-Key": "k" * 201}
    )
    assert status == 422
    assert [field for field, _ in _fields(doc)] == ["header.idempotency-key", "contact.email"]
    status, doc = await _raw(ingest, valid, {**authed, "Idempotency-Key": "k" * 201})
    assert status == 422
    assert [field for field, _ in _fields(doc)] == ["header.idempotency-key"]

    cloud = await _raw(
        ingest, valid, {**ingest.auth(), "Content-Type": "application/cloudevents+json"}
    )
    assert cloud[0] == 202
    # Not strict JSON, but Python's parser takes it, as FastAPI's does.
    assert (
        await _raw(
            ingest, b'{"type": "t", "contact": {"id": "c"}, "properties": {"ratio": NaN}}', authed
        )
    )[0] == 202
