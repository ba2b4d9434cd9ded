"""Preference-centre topics in scenarios: declared, checked against the offer, honoured."""

from datetime import UTC, datetime
from typing import Any

import pytest

from stepmail_orchestrator.engine import ContactRules, topic_opted_out
from stepmail_orchestrator.scenarios import ScenarioError, Send, parse_scenario
from stepmail_orchestrator.settings import OrchestratorSettings
from stepmail_orchestrator.timeline import simulate

OFFERED = ("news", "campaign")
NEWSLETTER: dict[str, Any] = {
    "id": "newsletter",
    "topic": "news",
    "trigger": {"event": "signup"},
    "steps": [
        {"id": "issue", "send": {"template": "n1"}},
        {"id": "sale", "wait": "1d", "send": {"template": "s1", "topic": "campaign"}},
        {"id": "tag", "update": {"add_tags": ["reader"]}},
    ],
}
START = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def _topics(doc: dict[str, Any]) -> list[str | None]:
    scenario = parse_scenario(doc, "newsletter.yaml", OFFERED)
    return [s.action.topic for s in scenario.steps if isinstance(s.action, Send)]


def test_a_step_inherits_the_scenario_topic_unless_it_names_its_own():
    assert _topics(NEWSLETTER) == ["news", "campaign"]
    assert parse_scenario(NEWSLETTER).topic == "news"
    untopical = {k: v for k, v in NEWSLETTER.items() if k != "topic"}
    assert _topics(untopical) == [None, "campaign"]


@pytest.mark.parametrize(
    ("change", "field", "what"),
    [
        ({"topic": "weather"}, "topic", "'weather' is not a preference-centre topic"),
        (
            {"steps": [{"id": "a", "send": {"template": "t", "topic": "weather"}}]},
            "steps[0].send.topic",
            "(TRACKER_TOPICS: news, campaign)",
        ),
        ({"mail_kind": "transactional"}, "topic", "only marketing mail has"),
        ({"topic": "no spaces"}, "topic", "does not match"),
    ],
)
def test_a_topic_must_be_on_offer_and_marketing(change, field, what):
    with pytest.raises(ScenarioError) as err:
        parse_scenario({**NEWSLETTER, **change}, "newsletter.yaml", OFFERED)
    assert str(err.value).startswith(f"newsletter.yaml: {field}:")
    assert what in str(err.value)


def test_without_the_offer_only_the_form_is_checked():
    """Stored versions are parsed again without the offer: a topic since withdrawn from
    TRACKER_TOPICS must not make running enrollments fail."""
    assert parse_scenario({**NEWSLETTER, "topic": "weather"}).topic == "weather"


def test_settings_share_the_tracker_topics():
    settings = OrchestratorSettings(tracker_topics="tips=ヒント/Tips, deals=お得情報")
    assert list(settings.topics()) == ["tips", "deals"]
    assert settings.topics()["deals"] == ("お得情報", "お得情報")
    with pytest.raises(ValueError, match="TRACKER_TOPICS"):
        OrchestratorSettings(tracker_topics="no label")


def test_opted_out_topics_are_per_kind():
    contact = {"opted_out_topics": {"marketing": ["campaign"]}}
    assert topic_opted_out(contact, "marketing", "campaign")
    assert not topic_opted_out(contact, "marketing", "news")
    assert not topic_opted_out(contact, "transactional", "campaign")
    assert not topic_opted_out(contact, "marketing", None)
    assert not topic_opted_out({}, "marketing", "campaign")


def test_the_timeline_skips_a_dropped_topic():
    contact = {
        "id": "c-1",
        "email": "a@example.com",
        "consent": {"marketing": {"status": "granted"}},
        "opted_out_topics": {"marketing": ["campaign"]},
    }
    scenario = parse_scenario(NEWSLETTER)
    entries = simulate(scenario, contact, {"name": "signup"}, START, ContactRules())
    assert [(e["step"], e["action"], e.get("reason")) for e in entries[:2]] == [
        ("issue", "send", None),
        ("sale", "skipped", "topic_opted_out"),
    ]
