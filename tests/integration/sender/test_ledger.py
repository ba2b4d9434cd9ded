"""The ledger and the deliverer against a real Postgres and a real SMTP server."""

import asyncio
import time
from datetime import UTC, datetime

import asyncpg
import pytest

from stepmail_common.events import derived_id, validate
from stepmail_sender import metrics, repository
from stepmail_sender.delivery import RetryPolicy
from stepmail_sender.domain import Outcome
from stepmail_sender.ledger import Ledger
from stepmail_sender.repository import OWNER_LOCK_CLASS
from tests.integration.sender.conftest import EVENTS_TOPIC, SCHEMA, rendered

pytestmark = pytest.mark.integration

DEAD_OWNER = 424_242


async def outbox_events(pool, message_id: str) -> list[dict]:
    rows = await pool.fetch("SELECT key, event FROM outbox ORDER BY id")
    events = [r["event"] for r in rows if r["event"]["data"]["message_id"] == message_id]
    for row, event in zip(rows, events, strict=False):
        validate(event)
        assert row["key"] == event["subject"]
    return events


async def claim_as_another_process(database_url: str, pool, message_id: str, owner: int):
    """Take the owner lock on a connection of its own and claim the mail, like a sender."""
    await pool.execute(
        "INSERT INTO deliveries (message_id, contact_id, enrollment_id, scenario_id,"
        " scenario_version, step_id, step_index, mail_kind, mail)"
        " VALUES ($1, 'contact-1', 'enr-1', 'welcome', 1, 'day0', 0, 'marketing', $2)",
        message_id,
        rendered(message_id).parcel.to_json(),
    )
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    await conn.execute("SELECT pg_advisory_lock($1, $2)", OWNER_LOCK_CLASS, owner)
    claimed = await repository.claim(conn, message_id, owner, datetime.now(UTC))
    assert claimed is not None
    assert claimed.state == "sending"
    return conn, claimed


async def test_a_mail_is_delivered_once_and_recorded(make_deliverer, smtp_server, sender_pool):
    deliverer = await make_deliverer()
    done = await deliverer.handle(rendered("m-once"))
    assert done.state == "sent"
    assert done.attempt == 1
    assert done.smtp_code == 250
    assert "queued" in (done.smtp_response or "")
    assert smtp_server.count("m-once") == 1
    assert smtp_server.received[0].rcpt_to == ["someone@example.org"]
    assert await sender_pool.fetchval("SELECT mail FROM deliveries") is None
    events = await outbox_events(sender_pool, "m-once")
    assert [(e["type"], e["data"]["attempt"]) for e in events] == [
        ("stepmail.delivery.sending.v1", 1),
        ("stepmail.delivery.sent.v1", 1),
    ]
    assert events[1]["id"] == derived_id("m-once", "sent", "1")
    assert events[1]["source"] == "urn:stepmail:sender"
    assert "someone@example.org" not in str(events)


async def test_redelivery_sends_once(make_deliverer, smtp_server):
    deliverer = await make_deliverer()
    first = await deliverer.handle(rendered("m-redelivered"))
    second = await deliverer.handle(rendered("m-redelivered"))
    restarted = await (await make_deliverer()).handle(rendered("m-redelivered"))
    assert first.state == second.state == restarted.state == "sent"
    assert smtp_server.count("m-redelivered") == 1


async def test_two_processes_racing_send_once(make_deliverer, smtp_server):
    one, two = await make_deliverer(), await make_deliverer()
    for n in range(5):
        mail = rendered(f"m-race-{n}")
        results = await asyncio.gather(one.handle(mail), two.handle(mail))
        assert [r.state for r in results] == ["sent", "sent"]
        assert smtp_server.count(f"m-race-{n}") == 1


async def test_5xx_is_failed_with_code_and_text(make_deliverer, smtp_server, sender_pool):
    smtp_server.rcpt_script["gone@example.org"] = ["550 5.1.1 <gone@example.org>: no such user"]
    deliverer = await make_deliverer()
    done = await deliverer.handle(rendered("m-550", rcpt_to="gone@example.org"))
    assert done.state == "failed"
    assert done.smtp_code == 550
    assert done.smtp_response == "5.1.1 <redacted>: no such user"
    assert smtp_server.received == []
    events = await outbox_events(sender_pool, "m-550")
    assert events[-1]["type"] == "stepmail.delivery.failed.v1"
    assert events[-1]["data"]["smtp_code"] == 550


async def until_settled(deliverer, message_id: str, within: float = 10.0):
    """Run the retry pass until the mail leaves ``deferred``."""
    deadline = time.monotonic() + within
    while True:
        await deliverer.retry_due()
        row = await deliverer._ledger.get(message_id)
        if row.state != "deferred":
            return row
        assert time.monotonic() < deadline, row
        await asyncio.sleep(0.02)


async def test_451_then_250_is_one_delivery(make_deliverer, smtp_server):
    smtp_server.rcpt_script["grey@example.org"] = ["451 4.7.1 greylisted, try again"]
    deliverer = await make_deliverer()
    first = await deliverer.handle(rendered("m-451", rcpt_to="grey@example.org"))
    assert (first.state, first.smtp_code, first.dsn) == ("deferred", 451, "4.7.1")
    done = await until_settled(deliverer, "m-451")
    assert done.state == "sent"
    assert done.attempt == 2
    assert smtp_server.rcpt_seen.count("grey@example.org") == 2
    assert smtp_server.count("m-451") == 1
    # The connection was reused after the refusal: the next mail goes through it too.
    assert (await deliverer.handle(rendered("m-after-451"))).state == "sent"


async def test_4xx_until_the_max_age_is_failed(make_deliverer, smtp_server):
    smtp_server.rcpt_script["busy@example.org"] = ["452 4.3.1 insufficient storage"] * 50
    deliverer = await make_deliverer(retry=RetryPolicy(base=0.05, cap=0.1, max_age=0.5))
    await deliverer.handle(rendered("m-452", rcpt_to="busy@example.org"))
    done = await until_settled(deliverer, "m-452")
    assert (done.state, done.smtp_code, done.bounce) == ("failed", 452, "soft")
    assert smtp_server.received == []


async def test_connection_refused_is_deferred_as_connection(make_deliverer, smtp_server):
    smtp_server.url = "smtp://127.0.0.1:9"  # discard port: nothing listens
    before = metrics.DEFERRED.labels("connection")._value.get()
    deliverer = await make_deliverer()
    done = await deliverer.handle(rendered("m-noconn"))
    assert done.state == "deferred"
    assert done.smtp_code is None
    assert metrics.DEFERRED.labels("connection")._value.get() == before + 1


async def test_550_5_1_1_suppresses_the_address_for_later_mails(
    make_deliverer, smtp_server, sender_pool
):
    smtp_server.rcpt_script["gone@example.org"] = ["550 5.1.1 <gone@example.org>: no such user"]
    deliverer = await make_deliverer()
    done = await deliverer.handle(rendered("m-gone-1", rcpt_to="gone@example.org"))
    assert (done.state, done.bounce, done.dsn) == ("failed", "hard", "5.1.1")
    later = await deliverer.handle(rendered("m-gone-2", rcpt_to="GONE@example.org"))
    assert (later.state, later.reason) == ("suppressed", "bounced")
    assert smtp_server.rcpt_seen.count("GONE@example.org") == 0
    events = await outbox_events(sender_pool, "m-gone-2")
    assert events[-1]["type"] == "stepmail.delivery.suppressed.v1"
    assert events[-1]["data"]["reason"] == "bounced"
    stored = await sender_pool.fetch("SELECT key FROM suppressions")
    assert all("gone" not in r["key"] for r in stored), "only a keyed hash is stored"


@pytest.mark.parametrize(
    ("policy", "state", "copies"), [("hold", "ambiguous", 1), ("resend", "sent", 2)]
)
async def test_connection_broken_in_data_applies_the_policy(
    make_deliverer, smtp_server, policy, state, copies
):
    smtp_server.drop_in_data.add("flaky@example.org")
    deliverer = await make_deliverer(policy=policy, max_attempts=2)
    done = await deliverer.handle(rendered("m-data-drop", rcpt_to="flaky@example.org"))
    assert done.state == state
    assert smtp_server.count("m-data-drop") == copies
    assert done.attempt == copies
    if policy == "hold":
        assert done.policy == "hold"
    else:
        assert done.resend


async def test_dead_owner_under_hold_becomes_ambiguous_and_is_not_sent(
    database_url, make_deliverer, smtp_server, sender_pool
):
    conn, _ = await claim_as_another_process(database_url, sender_pool, "m-dead-hold", DEAD_OWNER)
    deliverer = await make_deliverer(policy="hold")
    assert await deliverer.recover() == 0, "a live owner's mail is left alone"
    await conn.close()  # the process dies: its lock goes with its connection
    before = metrics.AMBIGUOUS.labels("hold")._value.get()
    assert await deliverer.recover() == 1
    row = await deliverer._ledger.get("m-dead-hold")
    assert (row.state, row.policy, row.attempt) == ("ambiguous", "hold", 1)
    assert metrics.AMBIGUOUS.labels("hold")._value.get() == before + 1
    # The Kafka message comes again (its offset was never committed): still not sent.
    again = await deliverer.handle(rendered("m-dead-hold"))
    assert again.state == "ambiguous"
    assert smtp_server.count("m-dead-hold") == 0
    events = await outbox_events(sender_pool, "m-dead-hold")
    assert [(e["type"], e["data"].get("policy")) for e in events] == [
        ("stepmail.delivery.ambiguous.v1", "hold")
    ]


async def test_dead_owner_under_resend_is_sent_once_more(
    database_url, make_deliverer, smtp_server, sender_pool
):
    conn, _ = await claim_as_another_process(database_url, sender_pool, "m-dead-resend", DEAD_OWNER)
    await conn.close()
    deliverer = await make_deliverer(policy="resend")
    assert await deliverer.recover() == 1
    row = await deliverer._ledger.get("m-dead-resend")
    assert (row.state, row.attempt, row.resend) == ("sent", 2, True)
    assert smtp_server.count("m-dead-resend") == 1
    assert (await deliverer.handle(rendered("m-dead-resend"))).state == "sent"
    assert smtp_server.count("m-dead-resend") == 1
    events = await outbox_events(sender_pool, "m-dead-resend")
    assert [(e["type"], e["data"]["attempt"], e["data"].get("policy")) for e in events] == [
        ("stepmail.delivery.ambiguous.v1", 1, "resend"),
        ("stepmail.delivery.sending.v1", 2, None),
        ("stepmail.delivery.sent.v1", 2, None),
    ]


async def test_a_consumed_mail_leaves_no_parcel_in_the_ledger_unless_it_must_wait(
    make_deliverer, smtp_server, sender_pool
):
    smtp_server.rcpt_script["later@example.org"] = ["451 4.7.1 try again"]
    deliverer = await make_deliverer()
    await deliverer.handle_many(
        [rendered("m-now"), rendered("m-later", rcpt_to="later@example.org")]
    )
    stored = await sender_pool.fetch("SELECT message_id, state, mail FROM deliveries")
    by_id = {r["message_id"]: r for r in stored}
    assert (by_id["m-now"]["state"], by_id["m-now"]["mail"]) == ("sent", None)
    assert by_id["m-later"]["state"] == "deferred"
    assert by_id["m-later"]["mail"]["rcpt_to"] == "later@example.org"


async def test_a_dead_owners_first_attempt_under_resend_is_resent_from_its_record(
    database_url, make_deliverer, smtp_server, sender_pool
):
    conn, _ = await claim_as_another_process(database_url, sender_pool, "m-dead-rec", DEAD_OWNER)
    # As the ledger has it after a consumed mail's claim: no parcel stored.
    await sender_pool.execute("UPDATE deliveries SET mail = NULL WHERE message_id = 'm-dead-rec'")
    await conn.close()
    deliverer = await make_deliverer(policy="resend")
    assert await deliverer.recover() == 1
    row = await deliverer._ledger.get("m-dead-rec")
    assert (row.state, row.policy) == ("ambiguous", "resend")
    assert smtp_server.count("m-dead-rec") == 0
    await deliverer.handle_many([rendered("m-dead-rec")])
    row = await deliverer._ledger.get("m-dead-rec")
    assert (row.state, row.attempt, row.resend) == ("sent", 2, True)
    assert smtp_server.count("m-dead-rec") == 1


async def test_redelivered_mail_of_a_dead_owner_is_resolved_by_the_handler(
    database_url, make_deliverer, smtp_server, sender_pool
):
    conn, _ = await claim_as_another_process(database_url, sender_pool, "m-dead-redeliv", 31337)
    await conn.close()
    deliverer = await make_deliverer(policy="resend")
    done = await deliverer.handle(rendered("m-dead-redeliv"))
    assert (done.state, done.attempt, done.resend) == ("sent", 2, True)
    assert smtp_server.count("m-dead-redeliv") == 1


async def test_live_owner_is_waited_for_not_skipped(
    database_url, make_deliverer, smtp_server, sender_pool
):
    conn, claimed = await claim_as_another_process(database_url, sender_pool, "m-rebalanced", 777)
    try:
        deliverer = await make_deliverer(owner_wait=20)
        waits = metrics.OWNER_WAITS._value.get()
        task = asyncio.create_task(deliverer.handle(rendered("m-rebalanced")))
        deadline = time.monotonic() + 10
        while metrics.OWNER_WAITS._value.get() == waits:
            assert time.monotonic() < deadline, "the handler never started waiting"
            assert not task.done(), task
            await asyncio.sleep(0.02)
        assert not task.done()
        # The other process records its answer; only then does the handler return.
        await Ledger(sender_pool, EVENTS_TOPIC).finish(
            claimed, Outcome("sent", 250, "2.0.0 Ok"), datetime.now(UTC)
        )
        done = await asyncio.wait_for(task, timeout=10)
    finally:
        await conn.close()
    assert done.state == "sent"
    assert done.attempt == 1
    assert smtp_server.count("m-rebalanced") == 0
