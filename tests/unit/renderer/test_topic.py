"""The step's preference-centre topic reaches mail.rendered, where the sender reads it."""

import pytest

from stepmail_common.clock import ManualClock
from stepmail_common.events import CloudEvent
from stepmail_renderer.handlers import rendered_event
from tests.unit.renderer.helpers import NOW, render, step


@pytest.mark.parametrize("topic", ["campaign", None])
def test_the_topic_is_passed_on_only_when_the_step_has_one(topic):
    due = step(**({"topic": topic} if topic else {}))
    assert due.topic == topic
    event = rendered_event(due, render(due=due), ManualClock(NOW))
    # Through JSON and the published schema, as the sender receives it.
    received = CloudEvent.from_json(event.to_json())
    assert received.data.get("topic") == topic
    assert ("topic" in received.data) is (topic is not None)
