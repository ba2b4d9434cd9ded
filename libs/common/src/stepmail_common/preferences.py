"""Preference-centre topics: the kinds of marketing mail a contact may keep or drop.

One list, ``TRACKER_TOPICS``, serves two services: the tracker offers its topics on the
preference page, and the orchestrator accepts only those topics in a scenario, so a
mail can never carry a topic that nobody is able to opt out of.
"""

import re
from typing import Self

from pydantic import model_validator

from stepmail_common.settings import CommonSettings

DEFAULT_TOPICS = "news=お知らせ/News,campaign=キャンペーン/Campaigns"
# A topic key as events carry it (the event schemas hold the same pattern).
TOPIC_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")


def parse_topics(spec: str) -> dict[str, tuple[str, str]]:
    """``key=日本語/English,...`` → key → (Japanese label, English label), in order.

    A missing label falls back to the other one, then to the key; an empty ``spec``
    has no topics. ``ValueError`` says what the setting must look like.
    """
    topics: dict[str, tuple[str, str]] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, labels = item.partition("=")
        ja, _, en = labels.partition("/")
        key = key.strip()
        if not sep or not TOPIC_KEY.match(key):
            raise ValueError(
                "TRACKER_TOPICS must be 'key=日本語/English,...' with keys of ASCII letters,"
                " digits, '-' and '_'"
            )
        topics[key] = (ja.strip() or key, en.strip() or ja.strip() or key)
    return topics


class TopicSettings(CommonSettings):
    """The settings of a service that reads ``TRACKER_TOPICS``; refused at start-up when
    malformed."""

    # ``key=日本語/English,...``; empty: no topic choice and no topic in a scenario.
    tracker_topics: str = DEFAULT_TOPICS

    @model_validator(mode="after")
    def _valid_topics(self) -> Self:
        self.topics()
        return self

    def topics(self) -> dict[str, tuple[str, str]]:
        """Topic key → (Japanese label, English label), in the configured order."""
        return parse_topics(self.tracker_topics)
