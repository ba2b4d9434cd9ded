"""What keeps ingest's request path cheap: no thread hand-offs, ids made in bulk."""

import inspect
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from stepmail_ingest.app import create_app
from stepmail_ingest.decoding import HandReadRoute, parse_valid
from stepmail_ingest.schemas import ContactIn, EventContactIn, EventIn
from stepmail_ingest.service import contact_fields, customer_event, random_ids
from stepmail_ingest.settings import IngestSettings


def _calls(dependant: Dependant) -> list[object]:
    calls: list[object] = []
    for sub in dependant.dependencies:
        calls.append(sub.call)
        calls.extend(_calls(sub))
    return calls


def _runs_in_the_loop(call: object) -> bool:
    if inspect.iscoroutinefunction(call):
        return True
    # Security schemes are instances whose __call__ is async.
    return inspect.iscoroutinefunction(getattr(call, "__call__", None))  # noqa: B004


def test_every_dependency_and_endpoint_is_async():
    """FastAPI runs a plain ``def`` dependency or endpoint in a worker thread per request."""
    app = create_app(IngestSettings())
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert routes
    for route in routes:
        assert inspect.iscoroutinefunction(route.endpoint), route.path
        for call in _calls(route.dependant):
            assert _runs_in_the_loop(call), (route.path, call)


def test_random_ids_are_distinct_uuid4_strings():
    ids = list(random_ids(2000))
    assert len(ids) == len(set(ids)) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert list(random_ids(0)) == []


CONTACTS = [
    {"id": "c-1"},
    {"id": " c-2 ", "email": "hanako@example.jp", "name": "佐藤 花子", "locale": "ja-JP"},
    {"id": "c-3", "time_zone": "Asia/Tokyo", "attributes": {"rank": ["gold", 1, None]}},
    {
        "id": "c-4",
        "email": "a@b.jp",
        "consent": {
            "status": "granted",
            "kinds": ["marketing"],
            "source": "form",
            "evidence": {"ip": "192.0.2.1"},
        },
    },
]


def test_contact_fields_knows_every_field():
    """A field added to the contact must be added to ``contact_fields()`` too."""
    known = {"id", "email", "name", "locale", "time_zone", "attributes"}
    assert set(ContactIn.model_fields) == known
    assert set(EventContactIn.model_fields) == known | {"consent"}


@pytest.mark.parametrize("contact", CONTACTS)
def test_contact_fields_are_the_models_dump(contact: dict[str, Any]):
    model = EventContactIn.model_validate(contact)
    expected = model.model_dump(mode="json", exclude_none=True, exclude={"consent"})
    written = contact_fields(model)
    assert written == expected
    assert list(written) == list(expected)


BODIES = [
    b'{"type": "t", "contact": {"id": "c"}, "properties": {"n": 1e400}}',
    b'{"type": "signup", "contact": {"id": "c"}, "properties": {"n": 18446744073709551615}}',
    b'{"type": "t", "contact": {"id": "c", "name": "\\u4f50\\u85e4"}, "properties": '
    b'{"deep": {"a": [1, 2.5, true, null]}}, "occurred_at": "2025-04-01T09:00:00+09:00"}',
]


@pytest.mark.parametrize("raw", BODIES)
def test_one_pass_parse_is_the_two_pass_parse(raw: bytes):
    assert parse_valid(EventIn, raw, "application/json") == EventIn.model_validate(json.loads(raw))


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"type": "t", "contact": {"id": "c"}}', "text/plain"),
        (b'{"type": "t", "contact": {"id": "c"}}', None),
        (b"", "application/json"),
        (b'{"type": "t"', "application/json"),
        (b'{"type": "t", "contact": {"id": "c"}, "extra": 1}', "application/json"),
    ],
)
def test_one_pass_parse_leaves_anything_else_to_fastapis_rules(raw: bytes, content_type: str):
    assert parse_valid(EventIn, raw, content_type) is None


def test_the_event_routes_skip_fastapis_request_machinery():
    app = create_app(IngestSettings())
    hand_read = {r.path for r in app.routes if isinstance(r, HandReadRoute)}
    assert hand_read == {"/v1/events", "/v1/events:batch"}


def test_a_hand_read_route_refuses_an_endpoint_with_parameters():
    async def with_parameter(request: Request, key: str) -> Response:
        return Response()

    with pytest.raises(TypeError, match="only the Request"):
        HandReadRoute("/x", with_parameter, methods=["POST"])


def test_receipt_time_is_written_per_request_time():
    event = EventIn.model_validate({"type": "t", "contact": {"id": "c"}})
    first = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC)
    later = first + timedelta(microseconds=1)
    assert customer_event(event, first, None).data["occurred_at"] == first.isoformat()
    assert customer_event(event, later, None).data["occurred_at"] == later.isoformat()
    tokyo = datetime(2026, 1, 2, 12, tzinfo=timezone(timedelta(hours=9)))
    given = EventIn.model_validate({"type": "t", "contact": {"id": "c"}, "occurred_at": tokyo})
    assert customer_event(given, first, None).data["occurred_at"] == "2026-01-02T12:00:00+09:00"
