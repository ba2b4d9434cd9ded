"""Due steps in batches: templates resolved once per batch, one publish, failures by index."""

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from stepmail_common import event_types
from stepmail_common.clock import ManualClock
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import Outgoing
from stepmail_common.topics import Topics
from stepmail_renderer.handlers import (
    DueStep,
    MalformedStepError,
    StepDueHandler,
    UnexpectedEventError,
    due_step,
)
from stepmail_renderer.resolver import ArchivedTemplateError, TemplateResolver, UnknownTemplateError
from stepmail_renderer.sandbox import TemplateRenderError
from stepmail_renderer.templates import StoredTemplate, TemplateSource
from tests.unit.renderer.helpers import NOW, renderer, step


def _source(template_id: str, subject: str, html: str = "<p>本文</p>") -> TemplateSource:
    return TemplateSource(template_id, "marketing", subject, None, html, None)


class FakeRepo:
    """The renderer's template store in memory, counting the queries made of it."""

    def __init__(self) -> None:
        self.templates: dict[str, list[TemplateSource]] = {}
        self.archived: set[str] = set()
        self.layout_store: dict[str, list[str]] = {}
        self.calls: list[str] = []
        self.failures: list[tuple[str, int, str]] = []

    def publish(self, source: TemplateSource) -> int:
        self.templates.setdefault(source.id, []).append(source)
        return len(self.templates[source.id])

    async def latest_versions(self, template_ids: Sequence[str]) -> dict[str, tuple[int, bool]]:
        self.calls.append("latest_versions")
        return {
            i: (len(self.templates[i]), i in self.archived)
            for i in template_ids
            if i in self.templates
        }

    async def template(self, template_id: str, version: int | None = None) -> StoredTemplate | None:
        self.calls.append("template")
        versions = self.templates.get(template_id, [])
        version = version or len(versions)
        if not 1 <= version <= len(versions):
            return None
        return StoredTemplate(versions[version - 1], version, template_id in self.archived)

    async def layout_versions(self) -> dict[str, int]:
        self.calls.append("layout_versions")
        return {name: len(v) for name, v in self.layout_store.items()}

    async def layouts(self) -> dict[str, tuple[int, str]]:
        self.calls.append("layouts")
        return {name: (len(v), v[-1]) for name, v in self.layout_store.items()}

    async def record_failure(self, template_id: str, version: int, error: str, at: Any) -> None:
        self.failures.append((template_id, version, error))


class FakeProducer:
    def __init__(self) -> None:
        self.batches: list[list[Outgoing]] = []

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        self.batches.append(list(items))


def _resolver(repo: FakeRepo) -> TemplateResolver:
    return TemplateResolver(repo, renderer())  # type: ignore[arg-type]


async def test_one_query_per_batch_and_each_version_is_read_once():
    repo = FakeRepo()
    repo.publish(_source("a", "A1"))
    repo.publish(_source("b", "B1"))
    resolver = _resolver(repo)
    found = await resolver.resolve([("a", None), ("b", None), ("a", None), ("a", 1)])
    assert {k: v.version for k, v in found.items()} == {  # type: ignore[union-attr]
        ("a", None): 1,
        ("b", None): 1,
        ("a", 1): 1,
    }
    assert repo.calls.count("latest_versions") == 1
    assert repo.calls.count("template") == 2
    repo.calls.clear()
    again = await resolver.resolve([("a", None), ("b", None)])
    assert repo.calls == ["latest_versions"]
    assert again[("a", None)] is found[("a", None)]


async def test_a_published_version_or_an_archive_takes_effect_in_the_next_batch():
    repo = FakeRepo()
    repo.publish(_source("a", "A1"))
    resolver = _resolver(repo)
    first = await resolver.resolve([("a", None)])
    assert first[("a", None)].version == 1  # type: ignore[union-attr]
    repo.publish(_source("a", "A2"))
    second = await resolver.resolve([("a", None), ("a", 1)])
    assert second[("a", None)].version == 2  # type: ignore[union-attr]
    assert second[("a", None)].source.subject == "A2"  # type: ignore[union-attr]
    assert second[("a", 1)].version == 1  # type: ignore[union-attr]
    repo.archived.add("a")
    third = await resolver.resolve([("a", None), ("a", 2)])
    assert all(isinstance(v, ArchivedTemplateError) for v in third.values())


async def test_unknown_templates_and_versions_are_refused_with_the_reason():
    repo = FakeRepo()
    repo.publish(_source("a", "A1"))
    found = await _resolver(repo).resolve([("nope", None), ("a", 7)])
    assert isinstance(found[("nope", None)], UnknownTemplateError)
    assert "'nope'" in str(found[("nope", None)])
    assert isinstance(found[("a", 7)], UnknownTemplateError)
    assert "v7" in str(found[("a", 7)])


async def test_layouts_are_asked_for_only_when_used_and_a_new_one_recompiles():
    repo = FakeRepo()
    repo.layout_store["base.html.j2"] = ["<html><body>{% block body %}{% endblock %}旧</body>"]
    repo.publish(_source("plain", "P"))
    repo.publish(
        _source("framed", "F", '{% extends "base.html.j2" %}{% block body %}中身{% endblock %}')
    )
    resolver = _resolver(repo)
    await resolver.resolve([("plain", None)])
    assert "layout_versions" not in repo.calls
    first = await resolver.resolve([("framed", None)])
    assert repo.calls.count("layout_versions") == 1
    repo.calls.clear()
    assert (await resolver.resolve([("framed", None)]))[("framed", None)] is first[("framed", None)]
    assert "layouts" not in repo.calls  # the same versions: sources already read
    repo.layout_store["base.html.j2"].append("<html><body>{% block body %}{% endblock %}新</body>")
    latest = (await resolver.resolve([("framed", None)]))[("framed", None)]
    html = latest.html.render({})  # type: ignore[union-attr]
    assert "新" in html
    assert "旧" not in html


def _handler(repo: FakeRepo, producer: FakeProducer) -> StepDueHandler:
    return StepDueHandler(
        repo,  # type: ignore[arg-type]
        renderer(),
        producer,  # type: ignore[arg-type]
        Topics("t."),
        ManualClock(NOW),
    )


async def test_a_batch_is_published_at_once_and_failures_are_returned_by_index():
    repo = FakeRepo()
    repo.publish(_source("welcome", "ようこそ {{ contact.name }} 様"))
    repo.publish(_source("broken", "{{ event.properties.missing }}"))
    producer = FakeProducer()
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    items = [
        DueStep(step(message_id="m-1"), carrier),
        DueStep(step(message_id="m-2", template="nope"), None),
        DueStep(step(message_id="m-3", template="broken"), None),
        DueStep(step(message_id="m-4", contact={"id": "c-4"}), None),
    ]
    failures = await _handler(repo, producer)(items)
    assert set(failures) == {1, 2}
    assert isinstance(failures[1], UnknownTemplateError)
    assert isinstance(failures[2], TemplateRenderError)
    assert repo.failures == [("broken", 1, "TemplateRenderError")]
    assert repo.calls.count("latest_versions") == 1
    assert len(producer.batches) == 1
    published = producer.batches[0]
    assert [o.event.data["message_id"] for o in published] == ["m-1", "m-4"]
    assert [o.key for o in published] == ["c-1", "c-4"]
    assert {o.topic for o in published} == {Topics("t.").mail_rendered}
    assert published[0].trace_context == carrier
    assert published[1].trace_context is None
    assert published[0].event.id == derived_id("renderer", event_types.MAIL_RENDERED, "m-1")


async def test_a_batch_with_nothing_to_publish_publishes_nothing():
    repo = FakeRepo()
    producer = FakeProducer()
    failures = await _handler(repo, producer)([DueStep(step(), None)])
    assert isinstance(failures[0], UnknownTemplateError)
    assert producer.batches == []


def _event(event_type: str, data: dict[str, Any]) -> CloudEvent:
    return CloudEvent(type=event_type, source="urn:test", subject="c-1", data=data)


def test_due_step_keeps_the_trace_it_runs_in():
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    due = step(message_id="m-1")
    data = {
        "message_id": due.message_id,
        "enrollment_id": due.enrollment_id,
        "scenario": {"id": due.scenario_id, "version": due.scenario_version},
        "step": {"id": due.step_id, "index": due.step_index},
        "template": due.template_id,
        "mail_kind": due.mail_kind,
        "contact": due.contact,
        "event": {"name": due.event_name, "properties": due.event_properties},
    }
    with tracer.start_as_current_span("process") as span:
        prepared = due_step(_event(event_types.STEP_DUE, data))
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert prepared.step == due
    assert prepared.trace_context is not None
    assert trace_id in prepared.trace_context["traceparent"]
    assert due_step(_event(event_types.STEP_DUE, data)).trace_context is None


def test_due_step_refuses_other_events_and_malformed_steps():
    with pytest.raises(UnexpectedEventError):
        due_step(_event(event_types.MAIL_RENDERED, {}))
    with pytest.raises(MalformedStepError, match="message_id"):
        due_step(_event(event_types.STEP_DUE, {"template": "welcome"}))


async def test_a_step_that_breaks_rendering_unexpectedly_fails_alone():
    repo = FakeRepo()
    repo.publish(_source("welcome", "ようこそ"))
    producer = FakeProducer()
    broken = step(message_id="m-2")
    del broken.contact["email"]
    items = [DueStep(step(message_id="m-1"), None), DueStep(broken, None)]
    failures = await _handler(repo, producer)(items)
    assert list(failures) == [1]
    assert isinstance(failures[1], KeyError)
    assert [o.event.data["message_id"] for o in producer.batches[0]] == ["m-1"]


async def test_each_failure_is_counted_once_by_its_error_class():
    repo = FakeRepo()
    repo.publish(_source("broken", "{{ event.properties.missing }}"))

    def count(error: str) -> float:
        value = REGISTRY.get_sample_value("stepmail_renderer_failures_total", {"error": error})
        return value or 0.0

    before = count("UnknownTemplateError"), count("TemplateRenderError")
    items = [
        DueStep(step(template="nope"), None),
        DueStep(step(template="nope"), None),
        DueStep(step(template="broken"), None),
    ]
    await _handler(repo, FakeProducer())(items)
    assert count("UnknownTemplateError") - before[0] == 2
    assert count("TemplateRenderError") - before[1] == 1
