"""The renderer on the real broker and Postgres: steps-due in, mail-rendered or DLQ out."""

import email
import email.policy
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stepmail_common import event_types
from stepmail_common.db import create_pool, migrate
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import DLQ_REASON, EventProducer, Outgoing
from stepmail_common.topics import Topics
from stepmail_renderer.app import create_app, sync_templates
from stepmail_renderer.repository import RendererRepository
from stepmail_renderer.settings import RendererSettings
from stepmail_renderer.templates import TemplateSource
from tests.integration.kafka_reader import parse_event, read_records

pytestmark = pytest.mark.integration

KEYS = "k1:integration-secret-0123456789"


@dataclass
class Renderer:
    settings: RendererSettings
    topics: Topics
    producer: EventProducer


def _templates(root: Path, repo_root: Path) -> Path:
    shutil.copytree(repo_root / "examples" / "templates" / "welcome", root / "welcome")
    broken = root / "broken"
    broken.mkdir()
    (broken / "template.yaml").write_text(
        "subject: 壊れたテンプレート\nevent_properties: [coupon_code]\n", encoding="utf-8"
    )
    # Valid when saved; fails on a step whose event lacks the coupon code.
    (broken / "body.html.j2").write_text(
        '<p>{{ event.properties.coupon_code }}</p><a href="{{ unsubscribe_url }}">停止</a>\n',
        encoding="utf-8",
    )
    return root


def _settings(database_url: str, bootstrap: str, templates: Path) -> RendererSettings:
    return RendererSettings(
        database_url=database_url,
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=f"r{uuid.uuid4().hex[:10]}.",
        kafka_topic_partitions=1,
        renderer_templates_dir=templates,
        signing_keys=KEYS,
        tracker_public_url="https://t.example.jp",
        mail_from="stepmail デモ <hello@example.com>",
        sender_legal_name="ステップメール デモ株式会社",
        sender_postal_address="〒100-0005 東京都千代田区丸の内1-1-1",
        sender_contact="support@example.com",
    )


@pytest.fixture
async def renderer(
    database_url: str, kafka_bootstrap: str, tmp_path: Path, repo_root: Path
) -> AsyncIterator[Renderer]:
    settings = _settings(database_url, kafka_bootstrap, _templates(tmp_path, repo_root))
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        EventProducer(kafka_bootstrap, "test", enable_idempotence=False) as producer,
    ):
        yield Renderer(settings, Topics(settings.kafka_topic_prefix), producer)


def _step_due(
    template: str, message_id: str, contact_id: str = "c-100", mail_kind: str = "marketing"
) -> CloudEvent:
    return CloudEvent(
        type=event_types.STEP_DUE,
        source="urn:test",
        subject=contact_id,
        data={
            "message_id": message_id,
            "enrollment_id": "enr-1",
            "scenario": {"id": "welcome", "version": 1},
            "step": {"id": "welcome", "index": 0},
            "template": template,
            "mail_kind": mail_kind,
            "contact": {"id": contact_id, "email": "hanako@example.jp", "name": "佐藤 花子"},
            "event": {"name": "signup", "properties": {}},
            "due_at": datetime.now(UTC).isoformat(),
        },
    )


async def test_a_due_step_becomes_a_rendered_mail(renderer: Renderer):
    message_id = str(uuid.uuid4())
    for _ in range(2):  # a redelivered step renders to the same event id
        await renderer.producer.publish(
            renderer.topics.steps_due, _step_due("welcome", message_id), key="c-100"
        )
    records = await read_records(
        renderer.settings.kafka_bootstrap_servers, renderer.topics.mail_rendered, 2
    )
    assert len(records) == 2
    events = [parse_event(r) for r in records]
    assert all(r.key == b"c-100" for r in records)
    assert {e.id for e in events} == {derived_id("renderer", event_types.MAIL_RENDERED, message_id)}
    event = events[0]
    assert event.type == event_types.MAIL_RENDERED
    assert event.subject == "c-100"
    assert event.data["envelope"] == {
        "mail_from": "hello@example.com",
        "rcpt_to": "hanako@example.jp",
    }
    raw = event.data["mime"].encode("ascii")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "佐藤 花子 様、ご登録ありがとうございます"
    assert msg["To"].addresses[0].display_name == "佐藤 花子"
    assert msg["X-Stepmail-Message-Id"] == message_id
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "https://t.example.jp/u/" in msg["List-Unsubscribe"]


async def test_a_template_error_dead_letters_with_the_reason(renderer: Renderer):
    await renderer.producer.publish(
        renderer.topics.steps_due,
        _step_due("broken", str(uuid.uuid4())),
        key="c-100",
    )
    dlq = Topics.dlq(renderer.topics.steps_due)
    records = await read_records(renderer.settings.kafka_bootstrap_servers, dlq, 1)
    assert len(records) == 1
    headers = dict(records[0].headers)
    reason = headers[DLQ_REASON].decode()
    assert "TemplateRenderError" in reason
    assert "coupon_code" in reason
    assert records[0].key == b"c-100"


async def test_a_changed_template_file_becomes_a_new_version(
    database_url: str, kafka_bootstrap: str, tmp_path: Path, repo_root: Path
):
    settings = _settings(database_url, kafka_bootstrap, _templates(tmp_path, repo_root))
    pool = await create_pool(database_url, settings.db_schema)
    try:
        await migrate(pool, settings.db_schema, "stepmail_renderer")
        repo = RendererRepository(pool)
        await sync_templates(settings, repo)
        await sync_templates(settings, repo)
        first = await repo.latest_template("welcome")
        assert first is not None
        assert first.version == 1
        body = tmp_path / "welcome" / "body.html.j2"
        body.write_text(body.read_text(encoding="utf-8") + "<!-- v2 -->\n", encoding="utf-8")
        await sync_templates(settings, repo)
        second = await repo.latest_template("welcome")
        assert second is not None
        assert second.version == 2
        assert second.source.html.endswith("<!-- v2 -->\n")
    finally:
        await pool.close()


async def test_a_batch_dead_letters_only_its_bad_steps_and_sees_archives_at_once(
    renderer: Renderer, database_url: str
):
    template_id = f"batch-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(database_url, renderer.settings.db_schema)
    try:
        repo = RendererRepository(pool)
        await repo.save_template(
            TemplateSource(
                template_id,
                "marketing",
                "{{ contact.name }} 様へのお知らせ",
                None,
                '<p>本文</p><a href="https://example.jp/a">詳しく</a>',
                None,
            )
        )
        good = [str(uuid.uuid4()) for _ in range(3)]
        steps = [
            _step_due(template_id, good[0]),
            _step_due(f"missing-{template_id}", str(uuid.uuid4())),
            _step_due(template_id, good[1]),
            _step_due(template_id, good[2]),
        ]
        await renderer.producer.publish_many(
            [Outgoing(renderer.topics.steps_due, e, "c-100") for e in steps]
        )
        bootstrap = renderer.settings.kafka_bootstrap_servers
        rendered = [
            parse_event(r) for r in await read_records(bootstrap, renderer.topics.mail_rendered, 3)
        ]
        assert sorted(e.data["message_id"] for e in rendered) == sorted(good)
        dlq = Topics.dlq(renderer.topics.steps_due)
        records = await read_records(bootstrap, dlq, 1)
        assert len(records) == 1
        assert "UnknownTemplateError" in dict(records[0].headers)[DLQ_REASON].decode()

        assert await repo.archive(template_id)
        await renderer.producer.publish(
            renderer.topics.steps_due, _step_due(template_id, str(uuid.uuid4())), key="c-100"
        )
        records = await read_records(bootstrap, dlq, 2)
        assert len(records) == 2
        assert "ArchivedTemplateError" in dict(records[1].headers)[DLQ_REASON].decode()
    finally:
        await pool.close()
