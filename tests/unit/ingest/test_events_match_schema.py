"""Every event ingest builds from a request its models accept matches the event schema.

Ingest publishes such events without checking them against the schema again, so the
request models' rules must be at least as strict as the schemas': generated requests,
Japanese text, edge lengths and nested properties included, hold them to it.
"""

import json
import zoneinfo
from datetime import UTC, datetime
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from stepmail_common.events import CloudEvent, validate
from stepmail_ingest.schemas import ContactUpsertIn, EventIn
from stepmail_ingest.service import Pending, contact_erasure, contact_update, customer_event

M = TypeVar("M", bound=BaseModel)
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=210)
short = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Zs", "Cc"]), min_size=1),
    st.text("あいう　 漢字ｶﾅ・〜", min_size=1, max_size=210),
    text,
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    short,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(short, inner, max_size=4)),
    max_leaves=20,
)
moment = st.datetimes(timezones=st.sampled_from([UTC, zoneinfo.ZoneInfo("Asia/Tokyo")]))
address = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["fe80::1%eth0", "fe80::1%" + "zone" * 12, "::ffff:192.0.2.1"]),
    text,
)
consent = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["granted", "withdrawn"]),
        "kinds": st.lists(
            st.sampled_from(["marketing", "transactional"]), min_size=1, max_size=2, unique=True
        ),
        "source": short,
    },
    optional={
        "at": moment.map(datetime.isoformat),
        "evidence": st.fixed_dictionaries(
            {}, optional={"form": short, "ip": address, "user_agent": short}
        ),
    },
)
contact = st.fixed_dictionaries(
    {"id": short},
    optional={
        "email": st.one_of(
            st.emails(),
            st.from_regex(r"[^@\s<>()\[\],;:\"]{1,64}@[a-z0-9.-]{1,40}\.(jp|com)", fullmatch=True),
            short.map(lambda local: f"{local}@例え.jp"),
        ),
        "name": short,
        "locale": st.one_of(
            st.sampled_from(["ja-JP", "en", "ja_JP"]),
            st.from_regex(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8}){0,4}", fullmatch=True),
        ),
        "time_zone": st.sampled_from(["Asia/Tokyo", "UTC", "America/Argentina/ComodRivadavia"]),
        "attributes": st.dictionaries(short, json_value, max_size=4),
        "consent": consent,
    },
)
event = st.fixed_dictionaries(
    {"type": st.from_regex(r"[A-Za-z0-9_.:-]{1,100}", fullmatch=True), "contact": contact},
    optional={
        "id": short,
        "properties": st.dictionaries(short, json_value, max_size=6),
        "occurred_at": moment.map(datetime.isoformat),
    },
)


def _accepted(model: type[M], body: dict[str, Any]) -> M | None:
    try:
        return model.model_validate_json(json.dumps(body, ensure_ascii=False))
    except ValidationError:
        return None


def _assert_matches(pending: Pending) -> None:
    validate(
        CloudEvent(
            type=pending.type,
            source="urn:stepmail:ingest",
            subject=pending.contact_id,
            data=pending.data,
            time=NOW,
        ).to_dict()
    )


settings_ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings_
@given(body=event, key=st.one_of(st.none(), short))
def test_accepted_customer_events_match_the_schema(body: dict[str, Any], key: str | None) -> None:
    accepted = _accepted(EventIn, body)
    if accepted is not None:
        _assert_matches(customer_event(accepted, NOW, key))


@settings_
@given(body=contact)
def test_accepted_contact_updates_and_erasures_match_the_schema(body: dict[str, Any]) -> None:
    accepted = _accepted(ContactUpsertIn, body)
    if accepted is not None:
        _assert_matches(contact_update(accepted, NOW, "key"))
        _assert_matches(contact_erasure(accepted.id, NOW, None))
