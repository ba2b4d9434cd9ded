"""The ledger's batched writes on a real Postgres: outcomes and their events in one
statement, and nothing of a claim that was lost meanwhile."""

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from stepmail_sender.domain import Outcome
from stepmail_sender.ledger import Ledger
from tests.integration.sender.conftest import EVENTS_TOPIC, rendered

pytestmark = pytest.mark.integration

OWNER = 5150
AT = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


async def outbox(pool) -> list[tuple[str, str, str, dict | None]]:
    rows = await pool.fetch("SELECT key, event, trace FROM outbox ORDER BY id")
    return [
        (r["key"], r["event"]["data"]["message_id"], r["event"]["type"], r["trace"]) for r in rows
    ]


async def test_outcomes_and_their_events_are_written_in_order_and_a_lost_claim_records_nothing(
    sender_pool,
):
    ledger = Ledger(sender_pool, EVENTS_TOPIC)
    mails = [rendered(f"m-w-{n}", contact_id=f"c-{n}") for n in range(4)]
    assert await ledger.accept_many(mails, AT) == 4
    traces = {"m-w-1": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
    claimed = await ledger.claim_many([m.message_id for m in mails], OWNER, AT, traces)
    assert [c.state for c in claimed] == ["sending"] * 4
    # Another process found m-w-2 doubtful and took it from this claim.
    lost = next(c for c in claimed if c.message_id == "m-w-2")
    assert await ledger.mark_ambiguous(lost, "hold", None, AT) is not None
    await sender_pool.execute("DELETE FROM outbox")

    later = AT + timedelta(seconds=1)
    outcomes = [
        Outcome("sent", 250, "2.0.0 Ok"),
        Outcome("deferred", 451, "4.7.1 later", dsn="4.7.1", next_attempt_at=later),
        Outcome("sent", 250, "2.0.0 Ok"),
        Outcome("failed", 550, "5.1.1 no such user", bounce="hard", dsn="5.1.1"),
    ]
    parcels = {m.message_id: m.parcel for m in mails}
    recorded = await ledger.finish_many(
        list(zip(claimed, outcomes, strict=True)), later, traces, parcels
    )

    assert [(d.message_id, d.state) for d in recorded] == [
        ("m-w-0", "sent"),
        ("m-w-1", "deferred"),
        ("m-w-3", "failed"),
    ]
    assert await outbox(sender_pool) == [
        ("c-0", "m-w-0", "stepmail.delivery.sent.v1", None),
        ("c-1", "m-w-1", "stepmail.delivery.deferred.v1", traces["m-w-1"]),
        ("c-3", "m-w-3", "stepmail.delivery.failed.v1", None),
    ]
    rows = {r["message_id"]: r for r in await sender_pool.fetch("SELECT * FROM deliveries")}
    assert rows["m-w-2"]["state"] == "ambiguous", "the lost claim is not overwritten"
    assert rows["m-w-1"]["next_attempt_at"] == later
    assert rows["m-w-1"]["mail"] == mails[1].parcel.to_json(), "a deferred mail keeps its parcel"
    assert rows["m-w-0"]["mail"] is None
    assert (rows["m-w-3"]["bounce"], rows["m-w-3"]["dsn"]) == ("hard", "5.1.1")
    assert rows["m-w-3"]["finished_at"] == later
    assert rows["m-w-1"]["finished_at"] is None
    # The hard bounce suppresses the address in the same statement.
    suppressed = await sender_pool.fetch("SELECT scope, key, reason FROM suppressions")
    assert [(s["scope"], s["key"], s["reason"]) for s in suppressed] == [
        ("address", ledger.address_hash(mails[3].parcel.envelope.rcpt_to), "bounced")
    ]


async def test_a_window_of_claims_writes_one_event_each_in_order(sender_pool):
    ledger = Ledger(sender_pool, EVENTS_TOPIC)
    mails = [rendered(f"m-c-{n}", contact_id=f"c-{n % 2}") for n in range(6)]
    await ledger.accept_many(mails, AT)
    await ledger.suppress_contact("c-1", "*", "unsubscribed")
    claimed = await ledger.claim_many([m.message_id for m in mails], OWNER, AT)
    assert sorted((c.message_id, c.state) for c in claimed) == [
        (f"m-c-{n}", "sending" if n % 2 == 0 else "suppressed") for n in range(6)
    ]
    assert await outbox(sender_pool) == [
        (c.contact_id, c.message_id, f"stepmail.delivery.{c.state}.v1", None) for c in claimed
    ]


async def test_new_mails_are_recorded_claimed_and_known_ones_are_left_alone(sender_pool):
    ledger = Ledger(sender_pool, EVENTS_TOPIC)
    known = rendered("m-n-known", contact_id="c-known")
    assert await ledger.accept_many([known], AT) == 1
    await ledger.suppress_address("Gone@Example.org", "*", "bounced")
    await ledger.opt_out_topics("c-topic", "marketing", ["news"])
    topical = dataclasses.replace(rendered("m-n-topic", contact_id="c-topic"), topic="news")
    mails = [
        known,
        rendered("m-n-new", contact_id="c-new"),
        rendered("m-n-gone", rcpt_to="gone@example.org", contact_id="c-gone"),
        topical,
    ]
    traces = {"m-n-new": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
    claimed = await ledger.claim_new(mails, OWNER, AT, traces)
    assert sorted((c.message_id, c.state, c.reason, c.attempt, c.owner) for c in claimed) == [
        ("m-n-gone", "suppressed", "bounced", 1, OWNER),
        ("m-n-new", "sending", None, 1, OWNER),
        ("m-n-topic", "suppressed", "unsubscribed_topic", 1, OWNER),
    ]
    assert all(c.claimed_at == AT and c.created_at == AT for c in claimed)
    untouched = await ledger.get("m-n-known")
    assert untouched is not None
    assert untouched.state == "accepted", "a known mail is not taken"
    assert sorted(await outbox(sender_pool)) == [
        ("c-gone", "m-n-gone", "stepmail.delivery.suppressed.v1", None),
        ("c-new", "m-n-new", "stepmail.delivery.sending.v1", traces["m-n-new"]),
        ("c-topic", "m-n-topic", "stepmail.delivery.suppressed.v1", None),
    ]
    # What the claim returns is the row as stored.
    assert [c for c in claimed if c.message_id == "m-n-new"] == [await ledger.get("m-n-new")]
    rows = await sender_pool.fetch("SELECT message_id, rcpt_hash, finished_at FROM deliveries")
    by_id = {r["message_id"]: r for r in rows}
    assert by_id["m-n-new"]["rcpt_hash"] == ledger.address_hash("someone@example.org")
    assert by_id["m-n-new"]["finished_at"] is None
    assert by_id["m-n-gone"]["finished_at"] == AT, "a suppressed mail is settled"


async def test_processes_recording_the_same_new_mails_claim_each_once(sender_pool):
    one, two = Ledger(sender_pool, EVENTS_TOPIC), Ledger(sender_pool, EVENTS_TOPIC)
    mails = [rendered(f"m-r-{n}", contact_id=f"c-{n}") for n in range(20)]
    first, second = await asyncio.gather(
        one.claim_new(mails, OWNER, AT), two.claim_new(mails[::-1], OWNER + 1, AT)
    )
    owners = {c.message_id: c.owner for c in first + second}
    assert len(first) + len(second) == len(owners) == 20
    rows = await sender_pool.fetch("SELECT message_id, owner, attempt FROM deliveries")
    assert {r["message_id"]: r["owner"] for r in rows} == owners
    assert {r["attempt"] for r in rows} == {1}
    assert len(await outbox(sender_pool)) == 20
