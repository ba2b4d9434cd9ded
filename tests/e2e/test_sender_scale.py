"""Three sender processes share 10,000 mails while one of them is SIGKILLed and restarted.

Every mail must be accounted for: delivered exactly once to the real SMTP server process
(counted by ``X-Stepmail-Message-Id``), except those the ledger lists as ``ambiguous`` —
no more than the killed process had in flight (one window) — and none missing.
"""

import asyncio
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stepmail_common.kafka import Outgoing
from stepmail_common.topics import Topics
from stepmail_devstack.catcher import CatcherProcess
from stepmail_devstack.processes import free_port
from stepmail_devstack.rendered import publish, rendered_mails
from stepmail_devstack.services import ServiceProcess, platform_env

pytestmark = pytest.mark.e2e

MAILS = 10_000
PARTITIONS = 6
CONTACTS = 2_500
WINDOW = 16
POOL = 4


def mime_template() -> str:
    """A small Japanese mail with placeholders in its ASCII-only headers."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "ステップメール <news@example.com>"
    msg["To"] = "{rcpt}"
    msg["Subject"] = "ご登録ありがとうございます"
    msg["Message-ID"] = "<{mid}@example.com>"
    msg["X-Stepmail-Message-Id"] = "{mid}"
    msg.set_content("山田 太郎 様\n\nご登録ありがとうございます。\n", cte="base64")
    return msg.as_string()


def rendered_events(prefix: str, run: str, count: int = MAILS) -> list[Outgoing]:
    return rendered_mails(
        Topics(prefix).mail_rendered, mime_template(), count, contacts=CONTACTS, run=run
    )


async def ledger_rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('sender.deliveries') IS NOT NULL")
        if not exists:
            return []
        return await conn.fetch("SELECT message_id, state, owner FROM sender.deliveries")
    finally:
        await conn.close()


def received_total(catcher: CatcherProcess) -> int:
    response = httpx.get(f"{catcher.http_url}/healthz", timeout=5, trust_env=False)
    response.raise_for_status()
    total: int = response.json()["received_total"]
    return total


def sent_total(sender: ServiceProcess) -> float:
    response = httpx.get(f"{sender.base_url}/metrics", timeout=5, trust_env=False)
    found = re.search(r"^stepmail_sender_mails_sent_total (\S+)$", response.text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(check: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(every)


def sender_process(
    n: int,
    database_url: str,
    bootstrap: str,
    smtp_url: str,
    prefix: str,
    repo_root: Path,
    logs: Path,
) -> ServiceProcess:
    port = free_port()
    env = platform_env(
        database_url,
        bootstrap,
        smtp_url,
        {"sender": port},
        repo_root,
        {
            "KAFKA_TOPIC_PREFIX": prefix,
            "KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
            "LOG_LEVEL": "INFO",
            "SENDER_WINDOW": str(WINDOW),
            "SMTP_POOL_SIZE": str(POOL),
            "SENDER_AMBIGUOUS_POLICY": "hold",
            "SENDER_RECOVERY_INTERVAL_SECONDS": "1",
        },
    )["sender"]
    return ServiceProcess("sender", port, env, cwd=repo_root, log_path=logs / f"s{n}.log")


@pytest.fixture
def catcher() -> Iterator[CatcherProcess]:
    with CatcherProcess(free_port(), free_port()) as running:
        yield running


def test_three_senders_deliver_10000_mails_through_a_sigkill(
    fresh_database: Any, kafka_bootstrap: str, repo_root: Path, tmp_path: Path, catcher: Any
) -> None:
    database_url = fresh_database("scale")
    run = uuid.uuid4().hex[:8]
    prefix = f"scale{run}."
    items = rendered_events(prefix, run)
    expected = {item.event.data["message_id"] for item in items}
    assert len(expected) == MAILS

    senders = [
        sender_process(
            n, database_url, kafka_bootstrap, catcher.smtp_url, prefix, repo_root, tmp_path
        )
        for n in range(3)
    ]
    try:
        asyncio.run(publish(kafka_bootstrap, items, PARTITIONS))
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.wait_ready(60)

        # Kill one while the run is in full swing and it is sending its share.
        victim = senders[1]
        wait_for(lambda: received_total(catcher) >= MAILS // 4, 180, "a quarter delivered")
        wait_for(lambda: sent_total(victim) > 0, 30, "the victim to be sending")
        victim.kill()
        at_kill = received_total(catcher)
        assert at_kill < MAILS * 0.9, "the kill came after the run, not in it"
        victim.start()
        victim.wait_ready(60)

        def settled() -> list[asyncpg.Record] | None:
            rows = asyncio.run(ledger_rows(database_url))
            final = [r for r in rows if r["state"] in ("sent", "ambiguous")]
            return rows if len(final) == MAILS else None

        rows = wait_for(settled, 300, "every mail to be settled in the ledger", every=0.5)
        for sender in senders:
            sender.ensure_alive()
    finally:
        for sender in senders:
            sender.terminate(15)

    states = {r["message_id"]: r["state"] for r in rows}
    assert set(states) == expected, "the ledger holds exactly the produced mails"
    ambiguous = {m for m, s in states.items() if s == "ambiguous"}
    # Only the killed process's window can be in doubt, and all of it belongs to one owner.
    assert len(ambiguous) <= WINDOW, ambiguous
    assert len({r["owner"] for r in rows if r["state"] == "ambiguous"}) <= 1

    # The ledger is settled; the server's count is final once it no longer grows.
    delivered_total = wait_for(
        lambda: (n := received_total(catcher)) >= MAILS - len(ambiguous) and n, 30, "deliveries"
    )
    response = httpx.get(f"{catcher.http_url}/api/messages", timeout=120, trust_env=False)
    response.raise_for_status()
    counts = Counter(m["stepmail_message_id"] for m in response.json()["messages"])
    assert sum(counts.values()) >= delivered_total
    assert set(counts) <= expected, "nothing but the produced mails arrived"
    twice = {m: n for m, n in counts.items() if n > 1}
    assert not twice, f"{len(twice)} mails delivered more than once"
    missing = {m for m in expected - ambiguous if counts[m] != 1}
    assert not missing, f"{len(missing)} sent mails never arrived"


async def committed_total(bootstrap: str, topic: str, group: str) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        total = 0
        for partition in range(PARTITIONS):
            total += await consumer.committed(TopicPartition(topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


def test_sigterm_mid_run_finishes_the_batch_commits_and_leaves_nothing_in_doubt(
    fresh_database: Any, kafka_bootstrap: str, repo_root: Path, tmp_path: Path, catcher: Any
) -> None:
    database_url = fresh_database("graceful")
    run = uuid.uuid4().hex[:8]
    prefix = f"graceful{run}."
    items = rendered_events(prefix, run, count=4000)
    sender = sender_process(
        0, database_url, kafka_bootstrap, catcher.smtp_url, prefix, repo_root, tmp_path
    )
    try:
        asyncio.run(publish(kafka_bootstrap, items, PARTITIONS))
        sender.start()
        sender.wait_ready(60)
        wait_for(lambda: received_total(catcher) >= 500, 120, "the run to be under way")
        sender.send_signal(signal.SIGTERM)
        code = sender.wait(40)
    finally:
        sender.terminate(5)
    # uvicorn re-raises the signal it handled once shutdown is complete: exit by SIGTERM
    # after a clean shutdown is what Kubernetes and systemd expect.
    assert code in (0, -signal.SIGTERM), sender.log_tail()
    assert "Application shutdown complete" in sender.log_tail(80)

    rows = asyncio.run(ledger_rows(database_url))
    states = Counter(r["state"] for r in rows)
    assert set(states) == {"sent"}, states
    assert len(rows) < len(items), "stopped mid-run, not after it"
    # Every mail handed over has its offset committed, and no offset was committed ahead.
    group = f"{prefix.rstrip('.')}-sender"
    committed = asyncio.run(committed_total(kafka_bootstrap, items[0].topic, group))
    assert committed == len(rows) == received_total(catcher)
