"""Observability of the running platform: one webhook is one trace through all five
services, and every service's ``/metrics`` passes ``promtool check metrics``.

The services export spans over OTLP/HTTP to a collector the test runs itself (an HTTP
server decoding ``ExportTraceServiceRequest`` protobufs), as they would to an
OpenTelemetry Collector in production.
"""

from __future__ import annotations

import gzip
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from stepmail_devstack.processes import free_port
from stepmail_devstack.services import SERVICE_NAMES, signup_event
from tests import promtool
from tests.e2e import harness

pytestmark = pytest.mark.e2e

NAME = "山田 花子"


@dataclass(frozen=True)
class Exported:
    """One span as a collector received it, with its resource's ``service.name``."""

    service: str
    span: Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def attributes(self) -> dict[str, Any]:
        return {
            kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in self.span.attributes
        }


class Collector:
    """A minimal OTLP/HTTP trace receiver: ``POST /v1/traces`` with a protobuf body."""

    def __init__(self) -> None:
        self._spans: list[Exported] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                collector.receive(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        received: list[Exported] = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    kv.value.string_value
                    for kv in resource_spans.resource.attributes
                    if kv.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                received.extend(Exported(service, span) for span in scope_spans.spans)
        with self._lock:
            self._spans.extend(received)

    def spans(self) -> list[Exported]:
        with self._lock:
            return list(self._spans)


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    running = Collector()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def platform(
    fresh_database,
    kafka_bootstrap: str,
    repo_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
    collector: Collector,
) -> Iterator[harness.Platform]:
    """The five services exporting their spans to ``collector``, every 100 ms."""
    with harness.running(
        fresh_database,
        kafka_bootstrap,
        repo_root,
        tmp_path_factory,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
    ) as running:
        yield running


@dataclass(frozen=True)
class Signup:
    contact_id: str
    address: str
    click_token: str


@pytest.fixture(scope="module")
def signup(platform: harness.Platform) -> Signup:
    """One sign-up webhook, its welcome mail, and a click on the mail's tracked link."""
    contact_id = f"c-{uuid.uuid4().hex[:8]}"
    address = f"obs.{uuid.uuid4().hex[:6]}@example.com"
    response = platform.post_event(
        signup_event(contact_id, address, NAME), **{"Idempotency-Key": f"obs-{contact_id}"}
    )
    assert response.status_code == 202, response.text
    mail = harness.wait_for(lambda: platform.mails_to(address), 30, "the welcome mail")[0]
    html = platform.catcher.message(mail["id"])["html"]
    link = re.search(rf'href="({re.escape(platform.url("tracker"))}/c/[^"]+)"', html)
    assert link, "the welcome mail has a tracked link"
    url = link.group(1).replace("&amp;", "&")
    assert httpx.get(url, follow_redirects=False, timeout=5).status_code == 302
    return Signup(contact_id, address, url.rsplit("/", 1)[-1].split("?")[0])


def _trace_of(collector: Collector, platform: harness.Platform, contact_id: str) -> str | None:
    """The trace id of the ingest span that published ``contact_id``'s event."""
    topic = platform.topic("contact-events")
    for exported in collector.spans():
        if (
            exported.service == "ingest"
            and exported.span.name == f"send {topic}"
            and exported.attributes.get("messaging.kafka.message.key") == contact_id
        ):
            return exported.trace_id
    return None


def _path_to_root(spans: dict[str, Exported], leaf: Exported) -> list[tuple[str, str]]:
    path = [(leaf.service, leaf.span.name)]
    node = leaf
    while node.parent_id and node.parent_id != "0" * 16:
        parent = spans.get(node.parent_id)
        if parent is None:
            path.append(("?", f"missing parent {node.parent_id}"))
            break
        path.append((parent.service, parent.span.name))
        node = parent
    return path


def test_one_webhook_is_one_trace_from_ingest_through_every_service(
    platform: harness.Platform, collector: Collector, signup: Signup
):
    topic = platform.topic
    trace_id = harness.wait_for(
        lambda: _trace_of(collector, platform, signup.contact_id), 20, "ingest's send span"
    )

    def tracker_spans(spans: list[Exported]) -> list[Exported]:
        """The tracker's records of the delivery whose every ancestor is exported too: each
        process exports its spans on its own schedule, so a parent may come later."""
        by_id = {s.span_id: s for s in spans}
        return [
            s
            for s in spans
            if s.service == "tracker"
            and s.span.name == f"process {topic('delivery-events')}"
            and all(service != "?" for service, _ in _path_to_root(by_id, s))
        ]

    def complete() -> list[Exported] | None:
        spans = [s for s in collector.spans() if s.trace_id == trace_id]
        tracker_done = bool(tracker_spans(spans))
        return spans if tracker_done and {s.service for s in spans} >= set(SERVICE_NAMES) else None

    spans = harness.wait_for(complete, 20, "spans of all five services in the webhook's trace")
    by_id = {s.span_id: s for s in spans}

    # The root is the webhook request itself.
    roots = [s for s in spans if not s.parent_id or s.parent_id == "0" * 16]
    assert [(r.service, r.span.name) for r in roots] == [("ingest", "POST /v1/events")]
    assert roots[0].span.kind == Span.SPAN_KIND_SERVER
    assert roots[0].attributes["http.route"] == "/v1/events"
    assert roots[0].attributes["http.response.status_code"] == 202

    # From the tracker's record of the delivery back to the webhook, hop by hop.
    tracker = tracker_spans(spans)[0]
    assert _path_to_root(by_id, tracker) == [
        ("tracker", f"process {topic('delivery-events')}"),
        ("sender", f"send {topic('delivery-events')}"),
        ("sender", f"process {topic('mail-rendered')}"),
        ("renderer", f"send {topic('mail-rendered')}"),
        ("renderer", f"process {topic('steps-due')}"),
        ("orchestrator", f"send {topic('steps-due')}"),
        ("orchestrator", f"process {topic('contact-events')}"),
        ("ingest", f"send {topic('contact-events')}"),
        ("ingest", "POST /v1/events"),
    ]
    # The SMTP handover is in the same trace, under the sender's processing of the mail.
    handover = next(s for s in spans if s.service == "sender" and s.span.name == "handover")
    assert handover.span.kind == Span.SPAN_KIND_CLIENT
    assert by_id[handover.parent_id].span.name == f"process {topic('mail-rendered')}"
    assert handover.attributes["stepmail.handover.outcome"] == "sent"

    # One webhook, one trace: every message about this contact is in it, but the click,
    # which a person made later in a request of their own.
    keyed = [
        s
        for s in collector.spans()
        if s.attributes.get("messaging.kafka.message.key") == signup.contact_id
        and s.attributes.get("messaging.destination.name") != topic("engagement-events")
    ]
    assert {s.trace_id for s in keyed} == {trace_id}


def test_kafka_spans_follow_the_messaging_conventions_and_carry_no_personal_data(
    platform: harness.Platform, collector: Collector, signup: Signup
):
    trace_id = harness.wait_for(
        lambda: _trace_of(collector, platform, signup.contact_id), 20, "ingest's send span"
    )
    spans = [s for s in collector.spans() if s.trace_id == trace_id]
    producers = [s for s in spans if s.span.kind == Span.SPAN_KIND_PRODUCER]
    consumers = [s for s in spans if s.span.kind == Span.SPAN_KIND_CONSUMER]
    assert producers
    assert consumers
    for s in producers + consumers:
        attributes = s.attributes
        operation = "send" if s.span.kind == Span.SPAN_KIND_PRODUCER else "process"
        assert attributes["messaging.system"] == "kafka"
        assert attributes["messaging.operation.type"] == operation
        assert s.span.name == f"{operation} {attributes['messaging.destination.name']}"
        assert attributes["messaging.kafka.message.key"] == signup.contact_id
        if operation == "process":
            group = attributes["messaging.consumer.group.name"]
            assert group.startswith(platform.topic_prefix.rstrip("."))
    for s in spans:
        for key, value in s.attributes.items():
            text = str(value)
            assert signup.address not in text, f"{s.service} {s.span.name} {key}"
            assert NAME not in text, f"{s.service} {s.span.name} {key}"
            assert "@" not in text, f"{s.service} {s.span.name} {key}={text}"


def test_a_callers_traceparent_is_continued(platform: harness.Platform, collector: Collector):
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    contact_id = f"c-{uuid.uuid4().hex[:8]}"
    response = platform.post_event(
        {"type": "page.viewed", "contact": {"id": contact_id}},
        traceparent=f"00-{trace_id}-{parent_id}-01",
    )
    assert response.status_code == 202, response.text

    def server_span() -> Exported | None:
        return next(
            (
                s
                for s in collector.spans()
                if s.trace_id == trace_id and s.span.kind == Span.SPAN_KIND_SERVER
            ),
            None,
        )

    span = harness.wait_for(server_span, 20, "ingest's server span in the caller's trace")
    assert span.service == "ingest"
    assert span.parent_id == parent_id


GOLDEN_SIGNALS = {
    "ingest": {"stepmail_ingest_events_accepted_total", "stepmail_http_requests_total"},
    "orchestrator": {
        "stepmail_orchestrator_steps_due_total",
        "stepmail_orchestrator_timer_lag_seconds",
        "stepmail_orchestrator_send_latency_seconds",
        "stepmail_kafka_consumer_lag",
    },
    "renderer": {"stepmail_renderer_mails_rendered_total", "stepmail_kafka_consumer_lag"},
    "sender": {
        "stepmail_sender_mails_sent_total",
        "stepmail_sender_mails_failed_total",
        "stepmail_sender_delivery_seconds",
        "stepmail_kafka_consumer_lag",
    },
    "tracker": {
        "stepmail_tracker_opens_total",
        "stepmail_tracker_clicks_total",
        "stepmail_tracker_complaint_ratio",
        "stepmail_tracker_unsubscribe_ratio",
        "stepmail_kafka_consumer_lag",
    },
}
# Label names that would put a person or an unbounded id into a series.
FORBIDDEN_LABELS = {"contact", "contact_id", "message_id", "email", "address", "name", "token"}


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_metrics_pass_promtool_and_hold_nothing_personal(
    platform: harness.Platform, signup: Signup, service: str
):
    def scrape() -> str | None:
        text = httpx.get(f"{platform.url(service)}/metrics", timeout=5).text
        # The orchestrator observes the welcome mail's latency once its ``sent`` came back.
        done = (
            service != "orchestrator" or "stepmail_orchestrator_send_latency_seconds_count" in text
        )
        return text if done else None

    text = harness.wait_for(scrape, 20, f"{service}'s metrics", every=0.2)
    checked = promtool.run("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (checked.stdout + checked.stderr).strip()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus_client's parser names counters without their ``_total``.
    names = {f"{name}_total" if f.type == "counter" else name for name, f in families.items()}
    missing = GOLDEN_SIGNALS[service] - names
    assert not missing, f"{service} lacks {sorted(missing)}"
    assert not any(name.endswith("_created") for name in names)
    for family in families.values():
        for sample in family.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), sample
            for value in sample.labels.values():
                assert signup.contact_id not in value, sample
                assert "@" not in value, sample
                assert signup.click_token not in value, sample
    if service == "orchestrator":
        latency = families["stepmail_orchestrator_send_latency_seconds"].samples
        counts = [s for s in latency if s.name.endswith("_count")]
        assert [(s.labels, s.value) for s in counts] == [({"mail_kind": "marketing"}, 1.0)]
    if service != "ingest":
        lag = families["stepmail_kafka_consumer_lag"].samples
        assert lag, f"{service} reports no consumer lag"
        assert all(s.labels["group"].startswith(platform.topic_prefix.rstrip(".")) for s in lag)
