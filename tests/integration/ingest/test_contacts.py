"""Contact updates with provable consent, and erasure tombstones."""

import pytest

from stepmail_common import event_types
from tests.integration.ingest.conftest import Ingest

pytestmark = pytest.mark.integration

CONTACT = {
    "id": "c-77",
    "email": "taro@example.jp",
    "name": "山田 太郎",
    "locale": "ja-JP",
    "time_zone": "Asia/Tokyo",
    "attributes": {"会員ランク": "ゴールド"},
}


async def test_contact_with_consent_records_source_time_and_evidence(ingest: Ingest):
    writer = await ingest.new_key("contacts:write")
    consent = {
        "status": "granted",
        "kinds": ["marketing"],
        "source": "form",
        "at": "2025-04-01T10:00:00+09:00",
        "evidence": {
            "form": "https://shop.example.jp/newsletter (メールマガジンを受け取る)",
            "ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0",
        },
    }
    response = await ingest.post("/v1/contacts", {**CONTACT, "consent": consent}, key=writer)
    assert response.status_code == 202, response.text
    assert response.json()["contact_id"] == "c-77"
    (event,) = await ingest.events(1)
    assert event.type == event_types.CONTACT_UPDATED
    assert event.subject == "c-77"
    assert event.data["contact"] == CONTACT
    assert event.data["consent"] == consent


async def test_consent_without_evidence_or_bad_zone_is_refused(ingest: Ingest):
    unprovable = {"status": "granted", "kinds": ["marketing"], "source": "form"}
    response = await ingest.post("/v1/contacts", {"id": "c-1", "consent": unprovable})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "consent"
    zone = await ingest.post("/v1/contacts", {"id": "c-1", "time_zone": "Tokyo/Japan"})
    assert zone.json()["errors"][0]["field"] == "time_zone"
    ip = await ingest.post(
        "/v1/contacts",
        {"id": "c-1", "consent": {**unprovable, "evidence": {"ip": "999.1.1.1"}}},
    )
    assert ip.json()["errors"][0]["field"] == "consent.evidence.ip"
    withdrawn = {"status": "withdrawn", "kinds": ["marketing"], "source": "call centre"}
    ok = await ingest.post("/v1/contacts", {"id": "c-1", "consent": withdrawn})
    assert ok.status_code == 202
    events = await ingest.events_until_sentinel()
    assert [e.data["consent"]["status"] for e in events] == ["withdrawn"]
    assert events[0].data["consent"]["at"]


async def test_erasure_publishes_a_tombstone(ingest: Ingest):
    events_only = await ingest.new_key("events:write")
    assert (
        await ingest.client.delete("/v1/contacts/c-9", headers=ingest.auth(events_only))
    ).status_code == 403
    response = await ingest.client.delete("/v1/contacts/c-9", headers=ingest.auth())
    assert response.status_code == 202
    (event,) = await ingest.events(1)
    assert event.type == event_types.CONTACT_ERASED
    assert event.subject == "c-9"
    assert event.data["contact_id"] == "c-9"
    assert event.id == response.json()["id"]
