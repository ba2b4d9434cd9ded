"""Handover spans: one per mail while spans are recorded, none otherwise."""

import contextlib

import pytest

from stepmail_common import telemetry
from stepmail_sender import delivery
from stepmail_sender.smtp import reply_of
from tests.unit.sender.fakes import FakeLedger, FakeTransport, a_mail
from tests.unit.sender.test_delivery_policy import deliverer


class CountingTracer:
    """Stands in for the module's tracer and counts the spans asked of it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    @contextlib.contextmanager
    def start_as_current_span(self, name, **kwargs):
        self.names.append(name)

        class Span:
            def set_attribute(self, key, value) -> None:
                pass

        yield Span()


@pytest.mark.parametrize(("recording", "spans"), [(True, ["handover"] * 3), (False, [])])
async def test_handover_spans_only_when_recorded(monkeypatch, recording, spans):
    tracer = CountingTracer()
    monkeypatch.setattr(delivery, "tracer", tracer)
    monkeypatch.setattr(telemetry, "recording", lambda: recording)
    ledger = FakeLedger()
    d = deliverer(ledger, FakeTransport(reply_of(250, "2.0.0 Ok")))
    await d.handle_many([a_mail(f"msg-{n}", f"contact-{n}") for n in range(3)])
    assert [r.state for r in ledger.rows.values()] == ["sent"] * 3
    assert tracer.names == spans
