"""SIGKILL of the sender in the middle of a burst: every mail is accounted for."""

import functools
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stepmail_common.events import derived_id
from stepmail_devstack.services import signup_event
from tests.e2e import harness

pytestmark = pytest.mark.e2e

BURST = 200
# The catcher answers each mail this late, so the burst takes seconds at the receiving
# end however fast the sender is, and the kill finds mail in flight.
ACCEPT_DELAY = 0.1


@pytest.fixture(scope="module")
def platform(
    fresh_database, kafka_bootstrap: str, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[harness.Platform]:
    with harness.running(
        fresh_database, kafka_bootstrap, repo_root, tmp_path_factory, accept_delay=ACCEPT_DELAY
    ) as running:
        yield running


def test_sigkill_of_the_sender_mid_burst_loses_and_duplicates_nothing(platform: harness.Platform):
    run = uuid.uuid4().hex[:6]
    contacts = {f"c-{run}-{i:03d}": f"burst{i:03d}.{run}@example.com" for i in range(BURST)}

    def post(item: tuple[str, str]) -> int:
        contact_id, address = item
        return platform.post_event(
            signup_event(contact_id, address, f"顧客 {contact_id}")
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(post, contacts.items()))
    assert statuses == [202] * BURST

    def ours() -> list[dict]:
        return [m for m in platform.catcher.messages() if run in m["rcpt_to"][0]]

    harness.wait_for(lambda: len(ours()) >= 10, 30, "the burst to start arriving", every=0.01)
    sender = platform.services["sender"]
    sender.kill()
    arrived_at_kill = len(ours())
    assert arrived_at_kill < BURST, "the sender was killed after the burst, not in it"
    sender.start()
    sender.wait_ready(60)

    message_ids = {}
    for contact_id in contacts:
        enrollments = harness.wait_for(
            functools.partial(platform.enrollments, contact_id), 30, f"enrollment of {contact_id}"
        )
        assert len(enrollments) == 1
        message_ids[derived_id("message", enrollments[0]["id"], "0")] = contact_id

    final_states = {"sent", "ambiguous"}

    def settled() -> dict[str, str] | None:
        states = {}
        for message_id in message_ids:
            delivery = platform.delivery(message_id)
            if delivery is None or delivery["state"] not in final_states:
                return None
            states[message_id] = delivery["state"]
        return states

    states = harness.wait_for(settled, 240, "every mail to reach a final state", every=0.5)
    copies = Counter(m["stepmail_message_id"] for m in ours())
    assert set(copies) <= set(message_ids), "a mail nobody asked for"
    for message_id, state in states.items():
        if state == "sent":
            assert copies[message_id] == 1, f"{message_id} sent but received {copies[message_id]}x"
        else:
            assert copies[message_id] <= 1, f"ambiguous {message_id} received {copies[message_id]}x"
    ambiguous = [m for m, s in states.items() if s == "ambiguous"]
    # With policy 'hold' only mails the killed process had in flight can be ambiguous.
    assert len(ambiguous) <= 10, f"{len(ambiguous)} ambiguous mails"
    delivered = sum(1 for m in message_ids if copies[m] == 1)
    assert delivered + sum(1 for m in ambiguous if copies[m] == 0) == BURST
