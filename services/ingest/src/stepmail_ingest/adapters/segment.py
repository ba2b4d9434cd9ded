"""Segment's HTTP Tracking API (``track``, ``identify``, ``batch``) onto stepmail's events.

The contact id is ``userId``, or ``anonymous:<anonymousId>`` when only that is known;
``messageId`` is the idempotency key; of ``context`` only ``ip``, ``locale`` and
``timezone`` are read. Event names stay as Segment sends them ("Order Completed").
"""

from datetime import datetime
from typing import Any

from stepmail_common import event_types
from stepmail_ingest.adapters.names import full_name
from stepmail_ingest.schemas import (
    SegmentContext,
    SegmentIdentify,
    SegmentTrack,
    _SegmentCall,
    check_time_zone,
)
from stepmail_ingest.service import Pending, fingerprint

_PROFILE_TRAITS = {"email", "name", "firstName", "lastName", "first_name", "last_name"}


def contact_id(call: _SegmentCall) -> str:
    if call.userId is not None:
        return call.userId
    return f"anonymous:{call.anonymousId}"


def _context_fields(context: SegmentContext | None) -> dict[str, str]:
    """Locale and time zone when they are usable; context is advisory, so bad ones drop."""
    fields: dict[str, str] = {}
    if context is None:
        return fields
    if context.locale and len(context.locale) <= 35:
        fields["locale"] = context.locale
    if context.timezone:
        try:
            check_time_zone(context.timezone)
            fields["time_zone"] = context.timezone
        except ValueError:
            pass
    return fields


def _dedupe(call: _SegmentCall) -> tuple[str | None, bytes]:
    if call.messageId is None:
        return None, b""
    return f"segment:{call.messageId}", fingerprint(call.model_dump(mode="json"))


def track(
    call: SegmentTrack, now: datetime, batch_context: SegmentContext | None = None
) -> Pending:
    contact: dict[str, Any] = {
        "id": contact_id(call),
        **_context_fields(call.context or batch_context),
    }
    dedupe, print_ = _dedupe(call)
    data: dict[str, Any] = {
        "name": call.event,
        "contact": contact,
        "properties": call.properties,
        "occurred_at": (call.timestamp or now).isoformat(),
    }
    if dedupe is not None:
        data["idempotency_key"] = dedupe[:255]
    return Pending(event_types.EVENT_RECEIVED, contact["id"], data, dedupe, print_, "segment")


def identify_contact(call: SegmentIdentify, batch_context: SegmentContext | None) -> dict[str, Any]:
    """The contact as ``ContactIn`` takes it, for validation before it is published."""
    traits = call.traits
    contact: dict[str, Any] = {
        "id": contact_id(call),
        **_context_fields(call.context or batch_context),
    }
    if traits.get("email") is not None:
        contact["email"] = traits["email"]
    name = traits.get("name") or full_name(
        traits.get("firstName") or traits.get("first_name"),
        traits.get("lastName") or traits.get("last_name"),
    )
    if name:
        contact["name"] = name
    attributes = {k: v for k, v in traits.items() if k not in _PROFILE_TRAITS}
    if attributes:
        contact["attributes"] = attributes
    return contact


def identify(contact: dict[str, Any], call: SegmentIdentify, now: datetime) -> Pending:
    dedupe, print_ = _dedupe(call)
    data = {"contact": contact, "updated_at": (call.timestamp or now).isoformat()}
    return Pending(event_types.CONTACT_UPDATED, contact["id"], data, dedupe, print_, "segment")
