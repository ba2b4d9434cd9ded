"""Ingest's request and response bodies.

Rule for unknown fields: stepmail's own envelopes (event, contact, consent, batch, admin
bodies) reject them, so a typo such as ``emial`` is an error rather than silently lost;
``properties`` and ``attributes`` are free-form and take anything JSON. Partner formats
(Segment, Shopify) are accepted as those partners send them: fields stepmail does not use
are ignored, because the partner, not the user, decides what is in them.
"""

import ipaddress
import zoneinfo
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from stepmail_common.events import EMAIL_PATTERN

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Email = Annotated[
    str, StringConstraints(max_length=254, strip_whitespace=True, pattern=EMAIL_PATTERN)
]
Locale = Annotated[
    str, StringConstraints(max_length=35, pattern=r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$")
]
TimeZone = Annotated[str, StringConstraints(min_length=1, max_length=64)]


_INT_MIN, _INT_END = -(2**63), 2**64
_MAX_DEPTH = 64


def _json_safe(container: dict[str, Any] | list[Any], depth: int = 0) -> None:
    """Refuse integers beyond 64 bits and values nested more than 64 levels deep.

    Only containers are visited and leaves are told apart by exact type: a batch of
    1,000 events walks every property, so a call per leaf was a twentieth of its time.
    """
    if depth >= _MAX_DEPTH and container:
        raise ValueError(f"nested more than {_MAX_DEPTH} levels deep")
    for item in container.values() if isinstance(container, dict) else container:
        kind = type(item)
        if kind is int:
            if not _INT_MIN <= item < _INT_END:
                raise ValueError("integers must fit in 64 bits; send larger ones as strings")
        elif kind is dict or kind is list:
            _json_safe(item, depth + 1)


def _checked_object(value: dict[str, Any]) -> dict[str, Any]:
    _json_safe(value)
    return value


# Free-form JSON objects: anything JSON, within what every consumer can read back.
JsonObject = Annotated[dict[str, Any], AfterValidator(_checked_object)]
Scope = Literal["events:write", "contacts:write", "admin"]


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_time_zone(value: str | None) -> str | None:
    if value is not None and value not in _zones():
        raise ValueError("not an IANA time zone such as Asia/Tokyo")
    return value


class ContactIn(BaseModel):
    """The contact an event is about; more than the id creates or refreshes its profile."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier
    email: Email | None = None
    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    locale: Locale | None = None
    time_zone: TimeZone | None = Field(default=None, description="IANA name, e.g. Asia/Tokyo")
    attributes: JsonObject = Field(default_factory=dict)

    _zone = field_validator("time_zone")(check_time_zone)


class EventIn(BaseModel):
    """A customer event: what happened (``type``, e.g. ``signup``), to whom, with what."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier | None = Field(
        default=None, description="the caller's event id; deduplicates like Idempotency-Key"
    )
    type: Annotated[
        str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    ]
    contact: "EventContactIn"
    properties: JsonObject = Field(default_factory=dict)
    occurred_at: AwareDatetime | None = Field(
        default=None, description="RFC 3339 with an offset; defaults to receipt"
    )


class EventBatchIn(BaseModel):
    """Up to 1,000 events, validated all together: one invalid event rejects the request."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventAccepted(BaseModel):
    id: str = Field(description="the CloudEvent id published on contact-events")
    status: Literal["accepted"] = "accepted"
    replayed: bool = False


class EventResult(BaseModel):
    index: int = Field(description="position in the request")
    id: str = Field(description="the CloudEvent id")
    replayed: bool = Field(description="already accepted earlier under the same key")


class BatchAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    accepted: int = Field(description="events published by this request")
    replayed: int = Field(description="events already accepted earlier")
    results: list[EventResult]


class ConsentEvidence(BaseModel):
    """What proves the consent: the form (id, URL or the consent text), the subscriber's
    IP address and user agent as the caller's form saw them."""

    model_config = ConfigDict(extra="forbid")

    form: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    ip: str | None = Field(
        default=None, description="the subscriber's IP address (not the posting server's)"
    )
    user_agent: Annotated[str, StringConstraints(max_length=500)] | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ValueError("an address with a zone index (%...) is not a subscriber's address")
        return str(address)


class ConsentIn(BaseModel):
    """Opt-in or opt-out, recorded so that it can be proven later."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["granted", "withdrawn"]
    kinds: list[Literal["marketing", "transactional"]] = Field(min_length=1, max_length=2)
    source: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="how it was collected: form, import, api, event booth, ..."
    )
    at: AwareDatetime | None = Field(default=None, description="when; defaults to receipt")
    evidence: ConsentEvidence | None = None

    @field_validator("kinds")
    @classmethod
    def _unique(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError("each kind at most once")
        return kinds

    @model_validator(mode="after")
    def _provable(self) -> "ConsentIn":
        if self.status == "granted" and (
            self.evidence is None or not (self.evidence.form or self.evidence.ip)
        ):
            raise ValueError("granted consent needs evidence: the form and/or the subscriber's IP")
        return self


class ContactUpsertIn(ContactIn):
    """Create or update a contact's profile, and optionally record consent."""

    consent: ConsentIn | None = None


class ContactAccepted(BaseModel):
    id: str = Field(description="the CloudEvent id published on contact-events")
    contact_id: str
    status: Literal["accepted"] = "accepted"
    replayed: bool = False


class ApiKeyCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    rate_limit_per_second: float | None = Field(
        default=None, gt=0, le=1_000_000, description="default: INGEST_RATE_LIMIT_PER_SECOND"
    )


class ApiKeyOut(BaseModel):
    id: UUID
    name: str
    scopes: list[str]
    rate_limit_per_second: float | None
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the key itself; shown this once, only its hash is stored")


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyOut]


class WebhookSourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["standard", "shopify"] = Field(
        description="standard: Standard Webhooks (name = your source); shopify: name = the"
        " shop domain, secret = the app's client secret"
    )
    secret: Annotated[str, StringConstraints(min_length=16, max_length=200)] | None = Field(
        default=None, description="standard: omit to have one generated (whsec_...)"
    )


class WebhookSourceOut(BaseModel):
    name: str
    kind: str
    created_at: datetime
    updated_at: datetime


class WebhookSourceSaved(WebhookSourceOut):
    secret: str | None = Field(default=None, description="the generated secret; shown this once")


class WebhookSourceList(BaseModel):
    webhook_sources: list[WebhookSourceOut]


class WebhookAccepted(BaseModel):
    status: Literal["accepted", "ignored"]
    results: list[EventResult] = Field(default_factory=list)
    reason: str | None = None


# Segment's HTTP Tracking API, as Segment sends it.


class SegmentContext(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ip: str | None = None
    locale: str | None = None
    timezone: str | None = None


class _SegmentCall(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    userId: Annotated[str, StringConstraints(min_length=1, max_length=180)] | None = None  # noqa: N815
    anonymousId: Annotated[str, StringConstraints(min_length=1, max_length=180)] | None = None  # noqa: N815
    messageId: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None  # noqa: N815
    timestamp: AwareDatetime | None = None
    context: SegmentContext | None = None

    @model_validator(mode="after")
    def _someone(self) -> "_SegmentCall":
        if self.userId is None and self.anonymousId is None:
            raise ValueError("userId or anonymousId is required")
        return self


class SegmentTrack(_SegmentCall):
    type: Literal["track"] = "track"
    event: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    properties: JsonObject = Field(default_factory=dict)


class SegmentIdentify(_SegmentCall):
    type: Literal["identify"] = "identify"
    traits: JsonObject = Field(default_factory=dict)


class SegmentOther(BaseModel):
    """Calls stepmail does not use (page, screen, group, alias): acknowledged, ignored."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["page", "screen", "group", "alias"]


SegmentCall = Annotated[SegmentTrack | SegmentIdentify | SegmentOther, Field(discriminator="type")]


class SegmentBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    batch: list[SegmentCall] = Field(min_length=1, max_length=1000)
    context: SegmentContext | None = None


class SegmentAccepted(BaseModel):
    success: Literal[True] = True
    results: list[EventResult] = Field(default_factory=list)


class ProblemDoc(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, str]] | None = Field(
        default=None, description="each with the 'field' that is wrong and a 'detail'"
    )


class EventContactIn(ContactIn):
    """The contact of an event; ``consent`` records an opt-in given with it (a sign-up
    form's checkbox), with the same proof rules as ``POST /v1/contacts``."""

    consent: ConsentIn | None = None


EventIn.model_rebuild()
EventBatchIn.model_rebuild()
