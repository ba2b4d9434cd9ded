"""The trace context a published event carries when no spans are recorded."""

from opentelemetry import context as otel_context
from opentelemetry import propagate

from stepmail_common.kafka import Serialised, _current_headers, _record

STORED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CURRENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CONTENT_TYPE = ("content-type", b"application/cloudevents+json; charset=UTF-8")


def _headers(carrier: dict[str, str] | None) -> list[tuple[str, bytes]]:
    item = Serialised("topic", b'{"id": "e-1"}', "c-1", trace_context=carrier)
    return _record(item, _current_headers()).headers


def test_a_stored_carrier_travels_on_as_it_was():
    carrier = {"traceparent": STORED, "tracestate": "vendor=1", "baggage": "user=jane"}
    token = otel_context.attach(propagate.extract({"traceparent": CURRENT}))
    try:
        assert _headers(carrier) == [
            CONTENT_TYPE,
            ("traceparent", STORED.encode()),
            ("tracestate", b"vendor=1"),
        ]
    finally:
        otel_context.detach(token)


def test_without_a_stored_carrier_the_current_context_travels_on():
    assert _headers(None) == [CONTENT_TYPE]
    token = otel_context.attach(propagate.extract({"traceparent": CURRENT}))
    try:
        assert _headers({}) == [CONTENT_TYPE, ("traceparent", CURRENT.encode())]
    finally:
        otel_context.detach(token)
