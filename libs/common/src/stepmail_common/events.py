"""The CloudEvents 1.0 envelope (structured JSON mode) and its validation.

Every message on every topic is one of these. ``subject`` carries the contact id,
which is also the Kafka key, so one contact's events stay in order.
"""

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import fastjsonschema
import jsonschema
import orjson

from stepmail_common import event_types
from stepmail_common.errors import InvalidEventError

CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"
SPECVERSION = "1.0"
# Deterministic ids (uuid5) for everything stepmail derives: message ids, event ids.
STEPMAIL_NAMESPACE = uuid.UUID("6f1d3c9e-2b7a-5e0c-9a41-3d2f8e6b7c10")


_NAMESPACE_BYTES = STEPMAIL_NAMESPACE.bytes

# What every schema's ``"format": "email"`` means on stepmail's topics, and what ingest
# accepts: one @, a dot in the domain, no spaces, control characters or the specials
# that would break a header. Dots may stand anywhere, since Japanese carriers' older
# addresses (taro..yamada.@docomo.ne.jp) have them where RFC 5322 does not allow, and
# their owners still receive mail; common validators' "email" formats refuse them.
_ADDRESS_PART = r'[^@\s<>()\[\],;:"\x00-\x1f\x7f]+'
EMAIL_PATTERN = rf"^{_ADDRESS_PART}@{_ADDRESS_PART}\.{_ADDRESS_PART}$"
_EMAIL = re.compile(EMAIL_PATTERN)


def _email_format(value: object) -> bool:
    """The ``email`` format; like every format, it says nothing of non-strings."""
    return not isinstance(value, str) or _EMAIL.fullmatch(value) is not None


_FORMATS = jsonschema.FormatChecker(jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers)
_FORMATS.checks("email")(_email_format)
_FAST_FORMATS = {"email": _email_format}


def derived_id(*parts: str) -> str:
    """A stable id from its parts: the same inputs always give the same id.

    The UUIDv5 of the joined parts in stepmail's namespace (RFC 9562), computed directly:
    it is on the hot path of every step and mail.
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "\x1f".join(parts).encode()).digest()[:16])  # noqa: S324 - UUIDv5 is defined with SHA-1
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One CloudEvent: the required attributes, ``time``, ``subject`` and JSON ``data``."""

    type: str
    source: str
    subject: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        return envelope(self.type, self.source, self.subject, self.data, self.id, self.time)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes) -> "CloudEvent":
        """Parse and validate a structured-mode event; raises ``InvalidEventError``."""
        return cls.from_dict(_loads(raw))

    @classmethod
    def from_dict(cls, doc: Any) -> "CloudEvent":
        """Validate a decoded event document and build the event from it."""
        validate(doc)
        return cls(
            type=doc["type"],
            source=doc["source"],
            subject=doc["subject"],
            data=doc["data"],
            id=doc["id"],
            time=datetime.fromisoformat(doc["time"]),
        )


_KNOWN_TYPES = frozenset(event_types.ALL)


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"not JSON: {exc}") from exc


def read_event(raw: bytes, acts_on: frozenset[str] | None) -> CloudEvent | None:
    """The structured-mode event in ``raw``, validated; raises ``InvalidEventError``.

    With ``acts_on``, an event of another of stepmail's types is ``None``, without its
    schema check: a consumer checks only what it acts on, and most of a topic's events are
    for another (the tracker passes over every trigger). An event of a type stepmail does
    not know is checked, so it is refused as before.
    """
    doc = _loads(raw)
    if acts_on is not None and isinstance(doc, dict):
        type_ = doc.get("type")
        if isinstance(type_, str) and type_ not in acts_on and type_ in _KNOWN_TYPES:
            return None
    return CloudEvent.from_dict(doc)


def envelope(
    type_: str, source: str, subject: str, data: dict[str, Any], id_: str, time: datetime
) -> dict[str, Any]:
    """A CloudEvent's document, as ``CloudEvent.to_dict`` writes it, without the object:
    for a caller that makes a thousand at once."""
    return {
        "specversion": SPECVERSION,
        "id": id_,
        "source": source,
        "type": type_,
        "subject": subject,
        "time": _instant(time),
        "datacontenttype": "application/json",
        "dataschema": _DATASCHEMA_PREFIX + type_,
        "data": data,
    }


_DATASCHEMA_PREFIX = "urn:stepmail:schema:"


@lru_cache(maxsize=1024)
def _instant(time: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; many events of a batch share their time."""
    return time.isoformat().replace("+00:00", "Z")


def _schema_text(name: str) -> bytes:
    return resources.files("stepmail_common").joinpath("schemas", name).read_bytes()


@cache
def _envelope_validator() -> jsonschema.protocols.Validator:
    schema = orjson.loads(_schema_text("cloudevent.json"))
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


@cache
def data_validator(event_type: str) -> jsonschema.protocols.Validator:
    """The validator of one event type's ``data``; ``InvalidEventError`` if unknown."""
    try:
        schema = orjson.loads(_schema_text(f"{event_type}.json"))
    except FileNotFoundError:
        raise InvalidEventError(f"unknown event type {event_type!r}") from None
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


def _first_error(validator: jsonschema.protocols.Validator, doc: Any, prefix: str) -> None:
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        path = f"{prefix}.{where}" if where else prefix
        raise InvalidEventError(f"{path}: {error.message}")


@cache
def _fast_envelope() -> Any:
    return fastjsonschema.compile(
        orjson.loads(_schema_text("cloudevent.json")), formats=_FAST_FORMATS
    )


@cache
def _fast_data(event_type: str) -> Any:
    data_validator(event_type)  # raises InvalidEventError for an unknown type
    return fastjsonschema.compile(
        orjson.loads(_schema_text(f"{event_type}.json")), formats=_FAST_FORMATS
    )


def validate(doc: object) -> None:
    """Check an event document against the envelope and its type's data schema.

    The compiled (fastjsonschema) check runs on every event, on the hot path; only when it
    fails does ``jsonschema`` run again to name the field and what is wrong.
    """
    try:
        _fast_envelope()(doc)
        assert isinstance(doc, dict)
        _fast_data(doc["type"])(doc["data"])
    except fastjsonschema.JsonSchemaException:
        _first_error(_envelope_validator(), doc, "event")
        assert isinstance(doc, dict)
        _first_error(data_validator(doc["type"]), doc["data"], "data")
        raise InvalidEventError("event: does not match its schema") from None
