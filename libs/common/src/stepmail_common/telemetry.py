"""Logs, traces and the metrics every service shares.

Logs are JSON lines on stdout. Nothing personal goes into a log line, a metric label
or a span attribute: ids of contacts and messages are fine in logs, addresses and
names never are.
"""

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# ``*_created`` series double the count of every counter and histogram and no query of
# ours reads them (Prometheus' text format has no use for them).
disable_created_metrics()  # type: ignore[no-untyped-call]

KAFKA_CONSUMED = Counter(
    "stepmail_kafka_messages_consumed_total",
    "Kafka messages handled, by topic and outcome (ok, dead_lettered, passed_over)",
    ["topic", "outcome"],
)
KAFKA_PRODUCED = Counter(
    "stepmail_kafka_messages_produced_total", "Kafka messages acknowledged by the broker", ["topic"]
)
KAFKA_RETRIES = Counter(
    "stepmail_kafka_handler_retries_total",
    "Retries of a message after a retriable error",
    ["topic"],
)
KAFKA_HANDLE_SECONDS = Histogram(
    "stepmail_kafka_handle_seconds",
    "Time to handle one consumed message",
    ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
KAFKA_CONSUMER_LAG = Gauge(
    "stepmail_kafka_consumer_lag",
    "Messages not yet consumed by this process, per consumer group, topic and assigned"
    " partition, as of the last fetch",
    ["group", "topic", "partition"],
)
KAFKA_OFFSET_GAPS = Counter(
    "stepmail_kafka_offset_gaps_total",
    "Holes in a partition's offsets that a consumer waited for: filled (a batch the broker"
    " showed late) or stepped over (still open after the wait)",
    ["topic", "outcome"],
)
HTTP_REQUESTS = Counter(
    "stepmail_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "stepmail_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the service, the trace and the record's extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            doc["trace_id"] = f"{span.trace_id:032x}"
            doc["span_id"] = f"{span.span_id:016x}"
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # uvicorn's access log would carry query strings (tokens); our middleware counts requests.
    logging.getLogger("uvicorn.access").disabled = True


def configure_tracing(
    service: str, otlp_endpoint: str | None, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install the SDK tracer provider when spans go somewhere: OTLP when configured, an
    explicit exporter for tests.

    Otherwise the API's no-op tracer stays: spans cost nothing on the hot paths, and an
    incoming ``traceparent`` is still passed on unchanged, so a trace started upstream
    continues through this service.
    """
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
    if exporter is None:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    global _recording
    _recording = True
    return provider


# Set once ``configure_tracing`` installed the SDK; asking the API instead reads the
# environment on each call, which the hot paths do per request and per publish.
_recording = False


def recording() -> bool:
    """Whether spans are recorded (``configure_tracing`` installed a provider). Without one,
    the hot paths skip making spans and only pass an incoming trace context on."""
    return _recording


def trace_carrier() -> dict[str, str]:
    """The current trace context as a small dict, to store beside work done later."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_carrier(carrier: Mapping[str, str] | None) -> otel_context.Context | None:
    return None if not carrier else propagate.extract(carrier)


TRACE_FIELDS = ("traceparent", "tracestate")
"""The W3C trace context's fields, as headers of requests and Kafka records."""


def inject_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers (``traceparent``, ``tracestate``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def carrier_headers(carrier: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """A stored trace context as Kafka headers, without making it current."""
    return [(k, v.encode()) for k, v in carrier.items() if k in TRACE_FIELDS]


def extract_context(headers: Iterable[tuple[str, bytes]] | None) -> otel_context.Context:
    carrier: Mapping[str, str] = {
        k: v.decode("latin-1") for k, v in (headers or ()) if k in TRACE_FIELDS
    }
    return propagate.extract(carrier)


@contextlib.contextmanager
def attached(context: otel_context.Context) -> Iterator[None]:
    """``context`` is current inside the block."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
