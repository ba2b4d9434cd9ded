"""Ingest's request and response bodies.

Rule for unknown fields: the envelope (event, contact) rejects them, so a typo such as
``emial`` is an error rather than silently lost; ``properties`` and ``attributes`` are
free-form and take anything JSON.
"""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Email = Annotated[
    str,
    StringConstraints(
        max_length=254,
        strip_whitespace=True,
        pattern=r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+\.[^@\s<>()\[\],;:\"]+$",
    ),
]


class ContactIn(BaseModel):
    """The contact an event is about; more than the id creates or refreshes its profile."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier
    email: Email | None = None
    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    locale: Annotated[str, StringConstraints(max_length=35)] | None = None
    time_zone: Annotated[str, StringConstraints(max_length=64)] | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class EventIn(BaseModel):
    """A customer event: what happened (``type``, e.g. ``signup``), to whom, with what."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier | None = Field(
        default=None, description="the caller's event id; deduplicates like Idempotency-Key"
    )
    type: Annotated[
        str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    ]
    contact: ContactIn
    properties: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime | None = Field(default=None, description="RFC 3339; defaults to receipt")


class EventAccepted(BaseModel):
    id: str = Field(description="the CloudEvent id published on contact-events")
    status: str = "accepted"
    replayed: bool = False
