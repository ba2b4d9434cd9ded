from datetime import UTC, datetime
from importlib import resources

import orjson
import pytest

from stepmail_common import event_types
from stepmail_common.errors import InvalidEventError
from stepmail_common.events import CloudEvent, data_validator, derived_id, read_event


def _received(**data_changes):
    data = {
        "name": "signup",
        "contact": {"id": "c-1", "email": "a@example.com", "name": "山田 花子"},
        "properties": {},
        "occurred_at": "2026-11-23T10:00:00+09:00",
    }
    data.update(data_changes)
    return CloudEvent(
        type=event_types.EVENT_RECEIVED,
        source="urn:test",
        subject="c-1",
        data=data,
        time=datetime(2026, 11, 23, 1, 0, tzinfo=UTC),
    )


def test_event_round_trips_through_json():
    event = _received()
    assert CloudEvent.from_json(event.to_json()) == event


def test_structured_mode_attributes():
    doc = orjson.loads(_received().to_json())
    assert doc["specversion"] == "1.0"
    assert doc["time"] == "2026-11-23T01:00:00Z"
    assert doc["datacontenttype"] == "application/json"


def test_every_event_type_has_a_schema():
    names = {f.name for f in resources.files("stepmail_common").joinpath("schemas").iterdir()}
    for event_type in event_types.ALL:
        assert f"{event_type}.json" in names
        data_validator(event_type)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (orjson.dumps({"specversion": "1.0"}), "event"),
        (_received(contact={"email": "a@example.com"}).to_json(), "data.contact"),
        (_received(name="").to_json(), "data.name"),
    ],
)
def test_invalid_events_name_what_is_wrong(raw, message):
    with pytest.raises(InvalidEventError, match=message):
        CloudEvent.from_json(raw)


def test_unknown_type_is_invalid():
    doc = orjson.loads(_received().to_json())
    doc["type"] = "stepmail.nothing.v1"
    with pytest.raises(InvalidEventError, match="unknown event type"):
        CloudEvent.from_dict(doc)


def test_a_consumer_reads_the_types_it_acts_on_and_passes_over_the_others():
    event = _received()
    assert read_event(event.to_json(), frozenset({event_types.EVENT_RECEIVED})) == event
    assert read_event(event.to_json(), None) == event
    # Passed over before its schema is checked: it is another consumer's to check.
    invalid = _received(name="").to_json()
    assert read_event(invalid, frozenset({event_types.DELIVERY_SENT})) is None
    with pytest.raises(InvalidEventError, match=r"data\.name"):
        read_event(invalid, frozenset({event_types.EVENT_RECEIVED}))


@pytest.mark.parametrize("type_", ["stepmail.nothing.v1", ["stepmail.event.received.v1"], None])
def test_an_event_of_no_type_stepmail_knows_is_refused_by_every_consumer(type_):
    doc = orjson.loads(_received().to_json())
    doc["type"] = type_
    with pytest.raises(InvalidEventError):
        read_event(orjson.dumps(doc), frozenset({event_types.DELIVERY_SENT}))


def test_derived_ids_are_stable_and_distinct():
    assert derived_id("message", "e1", "0") == derived_id("message", "e1", "0")
    assert derived_id("message", "e1", "0") != derived_id("message", "e1", "1")
    assert derived_id("a", "bc") != derived_id("ab", "c")


def test_derived_ids_are_uuid5_in_the_stepmail_namespace():
    import uuid

    from stepmail_common.events import STEPMAIL_NAMESPACE

    for parts in [("message", "e1", "0"), ("step-due", "m"), ("日本語", "x")]:
        assert derived_id(*parts) == str(uuid.uuid5(STEPMAIL_NAMESPACE, "\x1f".join(parts)))


# Japanese carriers' older addresses break RFC 5322's dot rules, yet still receive mail.
LEGACY_ADDRESSES = ["taro..yamada@docomo.ne.jp", "taro.@ezweb.ne.jp", ".hanako@softbank.ne.jp"]
BREAKING_ADDRESSES = ["a b@example.com", "a\x19b@example.com", "a@example", "a<b>@x.jp"]


def _updated(address: str) -> CloudEvent:
    return CloudEvent(
        type=event_types.CONTACT_UPDATED,
        source="urn:test",
        subject="c-1",
        data={"contact": {"id": "c-1", "email": address}, "updated_at": "2026-11-23T09:00:00Z"},
    )


@pytest.mark.parametrize("address", [*LEGACY_ADDRESSES, "山田@例え.jp", "a+b@example.com"])
def test_events_carry_every_address_a_carrier_delivers_to(address: str) -> None:
    event = _updated(address)
    assert CloudEvent.from_json(event.to_json()) == event


@pytest.mark.parametrize("address", BREAKING_ADDRESSES)
def test_an_address_that_would_break_a_header_is_named(address: str) -> None:
    with pytest.raises(InvalidEventError, match=r"data\.contact\.email"):
        CloudEvent.from_json(_updated(address).to_json())
