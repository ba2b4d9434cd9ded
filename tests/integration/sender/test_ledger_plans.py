"""The sender's pool plans its set-based ledger statements once (``generic_plans``).

Left to choose, Postgres plans the claim of a few mails again at every call, which cost
about 0.3 ms of its CPU per window at end-to-end load.
"""

from datetime import UTC, datetime

import pytest

from stepmail_common.db import create_pool, migrate
from stepmail_sender.ledger import Ledger
from tests.integration.sender.conftest import EVENTS_TOPIC, SCHEMA, rendered

pytestmark = pytest.mark.integration

AT = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)


async def claim_plans(database_url: str, *, generic_plans: bool, tag: str) -> tuple[int, int]:
    """Generic and custom plans made for the claim over ten windows of three mails."""
    pool = await create_pool(database_url, SCHEMA, max_size=1, generic_plans=generic_plans)
    try:
        await migrate(pool, SCHEMA, "stepmail_sender")
        ledger = Ledger(pool, EVENTS_TOPIC)
        # A ledger with some history, as Postgres's statistics see it.
        await pool.execute(
            "INSERT INTO deliveries (message_id, contact_id, enrollment_id, scenario_id,"
            " scenario_version, step_id, step_index, mail_kind, state, attempt)"
            " SELECT 'old-' || n, 'c-' || n % 5000, 'e-' || n, 'welcome', 1, 's1', 1,"
            " 'marketing', 'sent', 1"
            " FROM generate_series(1, 20000) AS n"
        )
        await pool.execute("ANALYZE deliveries")
        for window in range(10):
            mails = [rendered(f"m-{tag}-{window}-{n}", contact_id=f"c-{n}") for n in range(3)]
            assert len(await ledger.claim_new(mails, 7, AT)) == 3
        row = await pool.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE 'WITH m AS (SELECT * FROM unnest(%'"
        )
        assert row is not None, "the claim ran as a prepared statement"
        return row["generic_plans"], row["custom_plans"]
    finally:
        await pool.close()


async def test_the_sender_pool_plans_its_claim_once(database_url):
    generic, custom = await claim_plans(database_url, generic_plans=True, tag="g")
    assert (generic, custom) == (10, 0)


async def test_left_to_choose_postgres_plans_the_claim_at_every_call(database_url):
    """Why the setting exists: without it the same windows take a custom plan each."""
    generic, custom = await claim_plans(database_url, generic_plans=False, tag="c")
    assert custom >= 5, (generic, custom)
