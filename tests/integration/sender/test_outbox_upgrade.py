"""The outbox's event column became ``json`` (migration 0004): a sender of the previous
version, still running during a rolling upgrade, writes its events as ``jsonb``, and they
must still be stored and relayed."""

import orjson
import pytest

pytestmark = pytest.mark.integration


async def test_an_event_written_as_jsonb_by_the_previous_version_is_relayed_as_written(
    sender_pool,
):
    assert (
        await sender_pool.fetchval(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_schema = 'sender' AND table_name = 'outbox' AND column_name = 'event'"
        )
        == "json"
    )
    event = {"id": "e-1", "type": "stepmail.delivery.sent.v1", "data": {"message_id": "m-1"}}
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    # The previous version's statement (stepmail_common.outbox.add before 0004).
    await sender_pool.execute(
        "INSERT INTO outbox (topic, key, event, trace) SELECT topic, key, event, trace"
        " FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[])"
        " WITH ORDINALITY AS v(topic, key, event, trace, n) ORDER BY n",
        ["t"],
        ["c-1"],
        [event],
        [trace],
    )
    # What the relay takes.
    row = await sender_pool.fetchrow("SELECT event::text AS event, trace FROM outbox")
    assert orjson.loads(row["event"]) == event
    assert row["trace"] == trace
