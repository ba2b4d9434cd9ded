"""The trace context a published event carries when no spans are recorded."""

from opentelemetry import context as otel_context
from opentelemetry import propagate

from stepmail_common.kafka import _trace_headers

STORED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CURRENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_stored_carrier_travels_on_as_it_was():
    carrier = {"traceparent": STORED, "tracestate": "vendor=1", "baggage": "user=jane"}
    assert _trace_headers(carrier) == [
        ("traceparent", STORED.encode()),
        ("tracestate", b"vendor=1"),
    ]


def test_without_a_stored_carrier_the_current_context_travels_on():
    assert _trace_headers(None) == []
    token = otel_context.attach(propagate.extract({"traceparent": CURRENT}))
    try:
        assert _trace_headers({}) == [("traceparent", CURRENT.encode())]
    finally:
        otel_context.detach(token)
