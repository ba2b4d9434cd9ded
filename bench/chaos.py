"""``make chaos``: mails under SIGKILLs and a Postgres restart, every one accounted for.

Starts the platform as the end-to-end benchmark does (:mod:`bench.stack`: embedded
Postgres and broker unless ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS``, the sink, the
five services), creates ``CHAOS_MAILS`` contacts (default 20,000) and fires one trigger
per contact at ``CHAOS_RATE`` per second (default 400; the generator retries each batch
with its idempotency key until it is acknowledged, as a webhook sender does). While the
mails flow, each service in turn is killed with SIGKILL and started again at once
(ingest, orchestrator, renderer and sender at 8 %, 16 %, 28 % and 40 % of the mails
accepted, the sender at a moment it has mails in flight), Postgres is restarted on the same
data directory and port (at 52 %), and the tracker is killed (at 64 %). A service that dies
by itself is started again and reported as a crash.

When the pipeline has drained, every expected mail is accounted for from the sink's
records and the sender's ledger (:mod:`bench.accounting`): delivered exactly once,
ambiguous (the ledger says the sender was killed with it in flight), failed on record,
lost or duplicated. The ambiguous set is compared with the sender's in-flight rows at its
kill (at most ``SENDER_WINDOW``, ``CHAOS_SENDER_WINDOW``, default 8). Prints the counts,
writes ``bench-results/chaos.json`` (with the events dead-lettered on each ``.dlq`` topic)
and exits 1 if anything was lost or duplicated outside the ambiguous set (or a mail
arrived that nobody asked for). ``CHAOS_KEEP=1`` keeps the services' logs and the sink's
records.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.accounting import Accounting, LedgerRow, account
from bench.loadgen import contact_id
from bench.sink import accepted_count, read_records
from bench.stack import TRIGGER, Run, Stack, finish, open_stack, scenario, start_run
from stepmail_common.kafka import log_ends
from stepmail_common.topics import Topics

MAILS = int(os.environ.get("CHAOS_MAILS", "20000"))
RATE = float(os.environ.get("CHAOS_RATE", "400"))
WINDOW = int(os.environ.get("CHAOS_SENDER_WINDOW", "8"))
QUIET_SECONDS = float(os.environ.get("CHAOS_QUIET_SECONDS", "90"))
PLAN = [
    ("ingest", 0.08),
    ("orchestrator", 0.16),
    ("renderer", 0.28),
    ("sender", 0.40),
    ("postgres", 0.52),
    ("tracker", 0.64),
]
RESULTS = Path("bench-results")


async def _dead_lettered(bootstrap: str, prefix: str) -> dict[str, int]:
    """Records on each ``.dlq`` topic of the run (what could not be processed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        counts = {}
        topics = await consumer.topics()
        for topic in (Topics.dlq(t) for t in Topics(prefix).all()):
            if topic not in topics:
                continue
            parts = consumer.partitions_for_topic(topic) or set()
            ends = await log_ends(bootstrap, [TopicPartition(topic, p) for p in parts])
            counts[topic.removeprefix(prefix)] = sum(ends.values())
        return counts
    finally:
        await consumer.stop()


def _ledger(run: Run) -> list[LedgerRow]:
    out = run.sql("SELECT message_id, contact_id, state FROM sender.deliveries")
    return [LedgerRow(*line.split("|")) for line in out.splitlines() if line]


def _accepted(stack: Stack, run: Run) -> list[tuple[str, str]]:
    return [
        (record.rcpt.partition("@")[0], record.message_id)
        for record in read_records(stack.records)
        if record.rcpt.startswith(run.contact_prefix)
    ]


def _restart_crashed(run: Run, crashes: list[dict[str, Any]], started: float) -> None:
    for name, service in run.services.items():
        if not service.running:
            crashes.append(
                {"service": name, "at_seconds": round(time.time() - started, 1),
                 "exit_code": service.returncode, "log_tail": service.log_tail(15)}
            )  # fmt: skip
            print(f"  {name} died by itself (exit {service.returncode}); starting it again")
            service.start()
            service.wait_ready(120)


def _kill(stack: Stack, run: Run, target: str, started: float) -> dict[str, Any]:
    at = round(time.time() - started, 1)
    if target == "postgres":
        if stack.postgres is None:
            print("  postgres is external (DATABASE_URL): not restarted")
            return {"target": target, "at_seconds": at, "skipped": "external"}
        began = time.monotonic()
        stack.postgres.restart()
        down = round(time.monotonic() - began, 1)
        print(f"  postgres restarted on the same data directory and port ({down} s)")
        return {"target": target, "at_seconds": at, "restart_seconds": down}
    service = run.services[target]
    event: dict[str, Any] = {"target": target}
    if target == "sender":
        # The worst moment: while it has mails in flight (up to 10 s of looking for one).
        deadline = time.monotonic() + 10
        while not _sending(run) and time.monotonic() < deadline:
            time.sleep(0.01)
    service.kill()
    event["at_seconds"] = round(time.time() - started, 1)
    if target == "sender":
        # Claimed but not recorded when it died: at most its window in flight.
        event["in_flight_at_kill"] = _sending(run)
    time.sleep(1.0)
    service.start()
    print(f"  {target} killed (SIGKILL) and started again", flush=True)
    return event


def _ready_target(run: Run, target: str) -> bool:
    """A service is killed only once it is ready again after the last time."""
    service = run.services.get(target)
    if service is None:
        return True
    try:
        return httpx.get(f"{service.base_url}/readyz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def _sending(run: Run) -> int:
    return int(run.sql("SELECT count(*) FROM sender.deliveries WHERE state = 'sending'") or 0)


def _ready(run: Run, event: dict[str, Any], started: float) -> bool:
    """Whether the service of ``event`` answers ``/readyz``; notes when it first did."""
    if "back_after_seconds" in event or event["target"] not in run.services:
        return True
    service = run.services[event["target"]]
    if not service.running:
        return False  # died again by itself: ``_restart_crashed`` starts it and notes why
    try:
        ready = httpx.get(f"{service.base_url}/readyz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        ready = False
    if ready:
        event["back_after_seconds"] = round(time.time() - started - event["at_seconds"], 1)
        print(f"  {event['target']} ready again after {event['back_after_seconds']} s", flush=True)
    return ready


def _report(result: Accounting, bound: int, figures: dict[str, Any]) -> None:
    print()
    print(f"{'expected mails':28} {result.expected:>8,}")
    print(f"{'delivered exactly once':28} {result.delivered:>8,}")
    print(
        f"{'ambiguous (ledger)':28} {result.ambiguous:>8,}   of which arrived:"
        f" {result.ambiguous_delivered:,}; in flight at the sender's kill: {bound:,}"
    )
    print(f"{'failed (on record)':28} {result.failed:>8,}")
    print(f"{'lost':28} {result.lost:>8,}   {dict(result.lost_where) or ''}")
    print(f"{'duplicated':28} {result.duplicated:>8,}")
    print(f"{'unexpected':28} {result.unexpected:>8,}")
    crashes = figures["crashes"]
    print(f"{'crashes (not our kills)':28} {len(crashes):>8,}")
    print(f"{'dead-lettered events':28} {sum(figures['dead_lettered'].values()):>8,}")
    print("OK" if result.ok else "FAILED: mails lost or duplicated outside the ambiguous set")


def chaos(workdir: Path) -> dict[str, Any]:
    with open_stack(workdir) as stack:
        run = start_run(
            stack,
            "chaos",
            {
                "SENDER_WINDOW": str(WINDOW),
                "SENDER_RETRY_BASE_SECONDS": "1",
                "SENDER_RETRY_MAX_SECONDS": "5",
            },
        )
        events: list[dict[str, Any]] = []
        crashes: list[dict[str, Any]] = []
        try:
            run.put_scenario(scenario("bench-chaos"))
            print(f"creating {MAILS:,} contacts through ingest ...", flush=True)
            run.create_contacts(MAILS)
            base = accepted_count(stack.records)
            out = workdir / "chaos-triggers.txt"
            generator = run.loadgen(
                out, first=0, count=MAILS, batch=50, connections=4, event_type=TRIGGER,
                rate=RATE,
            )  # fmt: skip
            started = time.time()
            print(f"firing {MAILS:,} triggers at {RATE:,.0f}/s; kills as the mails flow:")
            plan = list(PLAN)
            last, since = -1, time.monotonic()
            while True:
                delivered = accepted_count(stack.records) - base
                ready = all([_ready(run, event, started) for event in events])
                if plan and _ready_target(run, plan[0][0]) and delivered >= plan[0][1] * MAILS:
                    target, _ = plan.pop(0)
                    print(f"  {delivered:,} mails accepted: {target}", flush=True)
                    events.append(_kill(stack, run, target, started))
                    since = time.monotonic()
                _restart_crashed(run, crashes, started)
                if delivered != last:
                    last, since = delivered, time.monotonic()
                if not plan and ready and generator.poll() is not None:
                    settled = _settled(stack, run)
                    if settled is not None and settled.accounted >= MAILS:
                        break
                if time.monotonic() - since > QUIET_SECONDS:
                    print(f"  no progress for {QUIET_SECONDS:.0f} s: accounting as it stands")
                    break
                time.sleep(1.0)
            summary = finish(generator, 60)
            dead_lettered = asyncio.run(_dead_lettered(stack.bootstrap, run.prefix))
            result = account(
                (contact_id(run.contact_prefix, n) for n in range(MAILS)),
                _accepted(stack, run),
                _ledger(run),
            )
        finally:
            run.stop()
    bound = sum(e.get("in_flight_at_kill", 0) for e in events)
    figures = {
        "mails": MAILS,
        "rate": RATE,
        "sender_window": WINDOW,
        "policy": os.environ.get("SENDER_AMBIGUOUS_POLICY", "hold"),
        "seconds": round(time.time() - started, 1),
        "accounting": result.as_dict(),
        "ambiguous_bound_in_flight_at_kills": bound,
        "ambiguous_within_bound": result.ambiguous <= bound,
        "faults": events,
        "dead_lettered": dead_lettered,
        "crashes": crashes,
        "generator": summary,
    }
    _report(result, bound, figures)
    return figures


def _settled(stack: Stack, run: Run) -> Accounting | None:
    """The accounting when no mail is waiting in the ledger any more, else ``None``."""
    pending = run.sql(
        "SELECT count(*) FROM sender.deliveries WHERE state IN ('accepted', 'sending', 'deferred')"
    )
    if int(pending or 0):
        return None
    return account(
        (contact_id(run.contact_prefix, n) for n in range(MAILS)),
        _accepted(stack, run),
        _ledger(run),
    )


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="stepmail-chaos-"))
    figures = chaos(workdir)
    if os.environ.get("CHAOS_KEEP") == "1":
        print(f"logs and records kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False))
    print(f"-> {RESULTS / 'chaos.json'}")
    return 0 if figures["accounting"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
