"""The shared list of preference-centre topics, and the topic field of mail events."""

import json
from importlib import resources

import pytest

from stepmail_common import event_types
from stepmail_common.events import data_validator
from stepmail_common.preferences import DEFAULT_TOPICS, TOPIC_KEY, parse_topics


def test_topics_keep_their_order_and_fall_back_on_labels():
    assert parse_topics(DEFAULT_TOPICS) == {
        "news": ("お知らせ", "News"),
        "campaign": ("キャンペーン", "Campaigns"),
    }
    assert parse_topics(" b=Bee , a=エー ,, c=/C") == {
        "b": ("Bee", "Bee"),
        "a": ("エー", "エー"),
        "c": ("c", "C"),
    }
    assert parse_topics("") == {}


@pytest.mark.parametrize("spec", ["news", "=News", "お知らせ=News", "two words=x", "-x=y"])
def test_bad_topic_lists_say_the_expected_form(spec):
    with pytest.raises(ValueError, match="TRACKER_TOPICS must be"):
        parse_topics(spec)


@pytest.mark.parametrize(
    "event_type",
    [event_types.STEP_DUE, event_types.MAIL_RENDERED],
)
def test_mail_events_carry_the_same_topic_pattern(event_type):
    raw = resources.files("stepmail_common").joinpath("schemas", f"{event_type}.json")
    schema = json.loads(raw.read_text(encoding="utf-8"))
    assert schema["properties"]["topic"]["pattern"] == TOPIC_KEY.pattern
    assert "topic" not in schema["required"], "optional: older events stay valid"


def test_a_malformed_topic_is_refused():
    validator = data_validator(event_types.MAIL_RENDERED)
    paths = [list(e.absolute_path) for e in validator.iter_errors({"topic": "no spaces"})]
    assert ["topic"] in paths
