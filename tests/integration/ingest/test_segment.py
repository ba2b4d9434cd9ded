"""Segment's HTTP Tracking API calls, posted unchanged, authenticated with the write key."""

import base64
import copy
from typing import Any

import pytest

from stepmail_common import event_types
from tests.integration.ingest.conftest import Ingest

pytestmark = pytest.mark.integration

# Shaped as Segment's HTTP Tracking API documentation shows them.
TRACK: dict[str, Any] = {
    "userId": "019mr8mf4r",
    "event": "Item Purchased",
    "properties": {"name": "Leap to Conclusions Mat", "revenue": 14.99},
    "context": {"ip": "24.5.68.47"},
    "timestamp": "2012-12-02T00:30:12.984Z",
}
IDENTIFY: dict[str, Any] = {
    "userId": "019mr8mf4r",
    "traits": {
        "email": "pgibbons@example.com",
        "name": "Peter Gibbons",
        "industry": "Technology",
    },
    "context": {"ip": "24.5.68.47"},
    "timestamp": "2012-12-02T00:30:08.276Z",
}
BATCH: dict[str, Any] = {
    "batch": [
        {
            "type": "identify",
            "userId": "019mr8mf4r",
            "traits": {"email": "jake@yahoo.com", "name": "Jake Peterson", "age": 26},
            "timestamp": "2012-12-02T00:30:08.276Z",
        },
        {
            "type": "track",
            "userId": "019mr8mf4r",
            "event": "Song Played",
            "properties": {"name": "Fallin for You", "artist": "Dierks Bentley"},
            "timestamp": "2012-12-02T00:30:12.984Z",
        },
        {
            "type": "page",
            "userId": "019mr8mf4r",
            "name": "Home",
            "properties": {"path": "/"},
        },
    ],
    "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}, "locale": "ja-JP"},
}


def _basic(write_key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}


async def _post(ingest: Ingest, path: str, body: Any, write_key: str) -> Any:
    return await ingest.client.post(path, json=body, headers=_basic(write_key))


async def test_track_identify_and_batch(ingest: Ingest):
    key = await ingest.new_key("events:write")
    track = await _post(ingest, "/v1/segment/track", TRACK, key)
    assert track.status_code == 200, track.text
    assert track.json()["success"] is True
    assert (await _post(ingest, "/v1/segment/identify", IDENTIFY, key)).status_code == 200
    batch = await _post(ingest, "/v1/segment/batch", BATCH, key)
    assert batch.status_code == 200, batch.text
    assert len(batch.json()["results"]) == 2
    events = await ingest.events(4)
    assert [e.type for e in events] == [
        event_types.EVENT_RECEIVED,
        event_types.CONTACT_UPDATED,
        event_types.CONTACT_UPDATED,
        event_types.EVENT_RECEIVED,
    ]
    purchased, identified, batch_identified, played = events
    assert purchased.subject == "019mr8mf4r"
    assert purchased.data["name"] == "Item Purchased"
    assert purchased.data["properties"] == TRACK["properties"]
    assert purchased.data["occurred_at"].startswith("2012-12-02T00:30:12.984")
    assert identified.data["contact"] == {
        "id": "019mr8mf4r",
        "email": "pgibbons@example.com",
        "name": "Peter Gibbons",
        "attributes": {"industry": "Technology"},
    }
    assert batch_identified.data["contact"]["locale"] == "ja-JP"
    assert batch_identified.data["contact"]["attributes"] == {"age": 26}
    assert played.data["name"] == "Song Played"


async def test_message_id_dedupes_and_bad_input_is_refused(ingest: Ingest):
    key = await ingest.new_key("events:write")
    call = {**TRACK, "messageId": "msg-1", "anonymousId": "507f191e810c19729de860ea"}
    first = await _post(ingest, "/v1/segment/track", call, key)
    again = await _post(ingest, "/v1/segment/track", call, key)
    assert again.json()["results"][0] == {**first.json()["results"][0], "replayed": True}
    assert (await _post(ingest, "/v1/segment/track", TRACK, "sm_wrong")).status_code == 401
    bearer = await ingest.client.post("/v1/segment/track", json=TRACK, headers=ingest.auth(key))
    assert bearer.status_code == 401
    nobody = copy.deepcopy(TRACK)
    del nobody["userId"]
    assert (await _post(ingest, "/v1/segment/track", nobody, key)).status_code == 422
    bad = copy.deepcopy(BATCH)
    bad["batch"][0]["traits"]["email"] = "no-at-sign"
    refused = await _post(ingest, "/v1/segment/batch", bad, key)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "batch.0.traits.email"
    events = await ingest.events_until_sentinel()
    assert [e.data.get("name") for e in events] == ["Item Purchased"]
