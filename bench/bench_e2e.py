"""The whole platform end to end: trigger events in, mails accepted by SMTP out.

Each run starts Postgres and the broker (embedded, or ``DATABASE_URL`` /
``KAFKA_BOOTSTRAP_SERVERS``), the timestamping sink (:mod:`bench.sink`) and the five
services on a fresh database and topic prefix; puts a scenario (one marketing mail, the
example welcome template, due at once), creates the contacts with their opt-in through
ingest, then fires one trigger event per contact from a load generator in its own process
(:mod:`bench.loadgen`, batches on ``/v1/events:batch``). Everything is measured where the
mail arrives: the sink stamps each accepted mail and reads its ``X-Stepmail-Message-Id``
and recipient (the contact), so each mail's trigger-to-accept latency is known.

Runs (``BENCH_E2E_RUNS``, default ``max paced dkim``):

- ``max``: as fast as the platform goes (the generator stays at most
  ``BENCH_E2E_BACKLOG`` triggers ahead of the sink, so all stages run at once);
- ``paced``: one run at each of ``BENCH_E2E_RATES`` (or ``BENCH_E2E_RATE``) triggers/s
  (default ``1000 100``), for latency (a mail not accepted within
  ``BENCH_E2E_DRAIN_SECONDS``, default 90, after the window counts as slower than every
  accepted one);
- ``dkim``: ``max`` with the sender signing DKIM RSA-2048 (else left to the MTA).

Figures are taken over a window of ``BENCH_E2E_SECONDS`` (default 60) after
``BENCH_E2E_WARMUP`` seconds (default 10): mails accepted per second, latency percentiles
of the mails triggered in the window, and CPU seconds per 1,000 mails of each service,
the broker, Postgres, the sink and the generator (``/proc/<pid>/stat`` of each process
tree, before and after the window), and Postgres transactions per mail.
``BENCH_E2E_MAILS`` sets the contacts of the ``max`` runs (default 150,000, enough for
2,000/s over warm-up and window; a run that runs out says so, as its rate then counts
seconds in which nothing was left to send); ``BENCH_E2E_SENDER_WINDOW``
and ``BENCH_E2E_SMTP_POOL`` the sender's ``SENDER_WINDOW`` / ``SMTP_POOL_SIZE``;
``BENCH_E2E_PROFILE=1`` records a py-spy profile of each service during the window.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.loadgen import contact_number
from bench.sink import accepted_count, read_records
from bench.stack import (
    TRIGGER,
    Run,
    Stack,
    cpu_snapshot,
    finish,
    open_stack,
    scenario,
    start_run,
)

GOAL_RATE = 2000
GOAL_P99_SECONDS = 1.0
SECONDS = float(os.environ.get("BENCH_E2E_SECONDS", "60"))
WARMUP = float(os.environ.get("BENCH_E2E_WARMUP", "10"))
RATES = [
    float(r)
    for r in os.environ.get("BENCH_E2E_RATES", os.environ.get("BENCH_E2E_RATE", "1000 100")).split()
]
DRAIN_SECONDS = float(os.environ.get("BENCH_E2E_DRAIN_SECONDS", "90"))
BACKLOG = int(os.environ.get("BENCH_E2E_BACKLOG", "2000"))
MAX_MAILS = int(os.environ.get("BENCH_E2E_MAILS", "150000"))
SENDER_WINDOW = os.environ.get("BENCH_E2E_SENDER_WINDOW", "64")
SMTP_POOL = os.environ.get("BENCH_E2E_SMTP_POOL", "16")
PROFILE = os.environ.get("BENCH_E2E_PROFILE") == "1"
SLICE_SECONDS = 10
LABELS = {
    "max": "as fast as possible",
    "paced": "paced",
    "dkim": "as fast as possible, DKIM RSA-2048",
}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def _triggers(path: Path) -> tuple[dict[int, float], int]:
    """Trigger time of each contact number, and how many triggers were acknowledged."""
    at: dict[int, float] = {}
    acked = 0
    if not path.exists():
        return at, 0
    for line in path.read_text().splitlines():
        sent, _acked, first, count, _attempts = line.split()
        acked += int(count)
        for n in range(int(first), int(first) + int(count)):
            at[n] = float(sent)
    return at, acked


def _dkim_env(workdir: Path) -> dict[str, str]:
    key_path = workdir / "dkim.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {"SENDER_DKIM_SIGN": "true", "SENDER_DKIM_KEYS": f"example.com:bench:{key_path}"}


def _profile(run: Run, seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy on each service for the window (flame graphs beside the logs)."""
    spies = []
    for name in ("ingest", "orchestrator", "renderer", "sender", "tracker"):
        out = run.stack.workdir / f"profile-{run.name}-{name}.txt"
        spies.append(
            subprocess.Popen(  # noqa: S603 - py-spy from the virtualenv, our own argv
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(run.services[name].pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "50",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return spies


def _measure(stack: Stack, label: str, extra_env: dict[str, str], rate: float) -> dict[str, Any]:
    run = start_run(
        stack,
        label,
        {"SENDER_WINDOW": SENDER_WINDOW, "SMTP_POOL_SIZE": SMTP_POOL, **extra_env},
    )
    try:
        run.put_scenario(scenario("bench-e2e"))
        contacts = int(rate * (WARMUP + SECONDS)) if rate else MAX_MAILS
        print(f"[{label}] creating {contacts:,} contacts through ingest ...", flush=True)
        created_in = run.create_contacts(contacts)
        print(f"[{label}] {contacts:,} contacts in {created_in:.0f} s", flush=True)
        base = accepted_count(stack.records)
        out = stack.workdir / f"{label}-triggers.txt"
        generator = run.loadgen(
            out,
            first=0,
            count=contacts,
            batch=50 if rate else 200,
            connections=8 if rate else 4,
            event_type=TRIGGER,
            rate=rate,
            backlog=0 if rate else BACKLOG,
            sink_records=str(stack.records),
        )
        extra = {
            "broker": stack.broker.pid if stack.broker else None,
            "postgres": stack.postgres.pid if stack.postgres else None,
            "sink": stack.sink.pid,
            "generator": generator.pid,
        }
        started = time.time()
        window = (started + WARMUP, started + WARMUP + SECONDS)
        before: dict[str, float] | None = None
        xacts = 0
        spies: list[subprocess.Popen[bytes]] = []
        last = (started, 0)
        while (now := time.time()) < window[1]:
            if before is None and now >= window[0]:
                before = cpu_snapshot(run, extra)
                xacts = _transactions(run)
                if PROFILE:
                    spies = _profile(run, SECONDS)
            tick = min(window[0] if before is None else window[1], now + 5.0)
            time.sleep(max(0.0, tick - now))
            delivered = accepted_count(stack.records) - base
            _, fired = _triggers(out)
            now = time.time()
            recent = (delivered - last[1]) / max(now - last[0], 1e-6)
            last = (now, delivered)
            phase = "warm-up" if now < window[0] else "window"
            print(
                f"[{label}] {now - started:5.0f} s ({phase}): {fired:,} triggered,"
                f" {delivered:,} accepted, {recent:,.0f}/s now, backlog {fired - delivered:,}",
                flush=True,
            )
            for service in run.services.values():
                service.ensure_alive()
        after = cpu_snapshot(run, extra)
        xacts = _transactions(run) - xacts
        if rate:
            summary = finish(generator, 120)
        else:
            generator.terminate()
            summary = finish(generator, 60)
        for spy in spies:
            spy.wait(30)
        trigger_at, acked = _triggers(out)
        ran_out = not rate and acked >= contacts and max(trigger_at.values()) < window[1] - 1
        print(f"[{label}] draining {acked - (accepted_count(stack.records) - base):,} ...")
        drained = _drain(stack, base, acked, run)
        figures = _figures(
            stack, run, label, rate, trigger_at, acked, window, before or after, after, summary
        )
        in_window = max(1, figures["accepted_in_window"])
        return figures | {
            "drained": drained,
            "contacts_created_in_seconds": round(created_in, 1),
            "contacts_ran_out_before_the_window_ended": ran_out,
            "postgres_transactions_per_mail": round(xacts / in_window, 1),
        }
    finally:
        run.stop()


def _transactions(run: Run) -> int:
    return int(
        run.sql(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        or 0
    )


def _drain(stack: Stack, base: int, acked: int, run: Run, quiet_for: float = 30) -> bool:
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + DRAIN_SECONDS
    while (delivered := accepted_count(stack.records) - base) < acked:
        if delivered != last:
            last, since = delivered, time.monotonic()
        elif time.monotonic() - since > quiet_for:
            return False
        if time.monotonic() > deadline:
            return False
        for service in run.services.values():
            service.ensure_alive()
        time.sleep(0.5)
    return True


def _figures(
    stack: Stack,
    run: Run,
    label: str,
    rate: float,
    trigger_at: dict[int, float],
    acked: int,
    window: tuple[float, float],
    before: dict[str, float],
    after: dict[str, float],
    generator: dict[str, Any],
) -> dict[str, Any]:
    records = [r for r in read_records(stack.records) if r.rcpt.startswith(run.contact_prefix)]
    in_window = sum(1 for r in records if window[0] <= r.at < window[1])
    latencies = []
    by_slice: dict[int, list[float]] = {}
    for record in records:
        n = contact_number(run.contact_prefix, record.rcpt)
        sent = trigger_at.get(n) if n is not None else None
        if sent is not None and window[0] <= sent < window[1]:
            latencies.append(record.at - sent)
            by_slice.setdefault(int((sent - window[0]) // SLICE_SECONDS), []).append(
                record.at - sent
            )
    latencies.sort()
    triggered_in_window = sum(1 for t in trigger_at.values() if window[0] <= t < window[1])
    # Not accepted by the end of the drain: slower than any accepted mail.
    missing = max(0, triggered_in_window - len(latencies))
    ranked = latencies + [math.inf] * missing
    ids = [r.message_id for r in records]
    seconds = window[1] - window[0]
    cpu = {name: after[name] - before[name] for name in after}
    per_thousand = {
        name: round(used / max(in_window, 1) * 1000, 2) for name, used in sorted(cpu.items())
    }
    return {
        "mode": LABELS[label.partition("-")[0]] + (f" at {rate:,.0f} triggers/s" if rate else ""),
        "window_seconds": round(seconds, 1),
        "triggered": acked,
        "triggered_in_window": triggered_in_window,
        "accepted": len(records),
        "duplicate_message_ids": len(ids) - len(set(ids)),
        "accepted_in_window": in_window,
        "mails_per_second": round(in_window / seconds),
        "latency_seconds": {
            "mails": len(latencies),
            "not_accepted_by_the_end": missing,
            "p50": _round(_percentile(ranked, 0.50)),
            "p95": _round(_percentile(ranked, 0.95)),
            "p99": _round(_percentile(ranked, 0.99)),
            "max": _round(latencies[-1] if latencies else None),
            # Of the accepted mails, by when they were triggered: a stall or a slow drift.
            f"p99_by_{SLICE_SECONDS}_seconds_triggered": [
                _round(_percentile(sorted(by_slice.get(i, [])), 0.99))
                for i in range(math.ceil(seconds / SLICE_SECONDS))
            ],
        },
        "cpu_seconds_per_1000_mails": per_thousand,
        "cpu_seconds_in_window": {name: round(v, 1) for name, v in sorted(cpu.items())},
        "cores_busy": round(sum(cpu.values()) / seconds, 2),
        "generator": generator,
        "settings": {k: v for k, v in run.env.items() if k.startswith(("SENDER_", "SMTP_"))},
    }


def _round(value: float | None) -> float | str | None:
    """Seconds to the millisecond; a mail never accepted is ``not accepted``."""
    if value is None:
        return None
    return round(value, 3) if math.isfinite(value) else "not accepted"


def _table(figures: dict[str, Any], chosen: list[str]) -> None:
    print()
    print(
        f"{'run':44} {'mails/s':>8} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'cores':>6}"
        f" {'goal':>14}"
    )
    for name in chosen:
        run = figures[name]
        lat = run["latency_seconds"]
        goal = f"p99 <= {GOAL_P99_SECONDS:g} s" if name == "paced-1000" else ""
        goal = goal or (f">= {GOAL_RATE:,}/s" if name in ("max", "dkim") else "")
        print(
            f"{run['mode']:44} {run['mails_per_second']:>8,} {_fmt(lat['p50'])} "
            f"{_fmt(lat['p95'])} {_fmt(lat['p99'])} {run['cores_busy']:>6} {goal:>14}"
        )
        if run.get("contacts_ran_out_before_the_window_ended"):
            print(f"{'':4}its contacts ran out inside the window: the rate is understated")
    print()
    names = sorted({n for name in chosen for n in figures[name]["cpu_seconds_per_1000_mails"]})
    print(f"{'CPU seconds per 1,000 mails':28}" + "".join(f" {name:>10}" for name in chosen))
    for process in names:
        row = "".join(
            f" {figures[name]['cpu_seconds_per_1000_mails'].get(process, 0):>10.2f}"
            for name in chosen
        )
        print(f"{process:28}{row}")


def _fmt(value: float | str | None) -> str:
    if isinstance(value, float | int):
        return f"{value:>7.3f}"
    return f"{'never' if value else '-':>7}"


def main() -> dict[str, Any]:
    chosen = []
    for name in os.environ.get("BENCH_E2E_RUNS", "max paced dkim").split():
        chosen += [f"paced-{rate:g}" for rate in RATES] if name == "paced" else [name]
    figures: dict[str, Any] = {
        "machine": (
            f"{os.cpu_count()} cores shared by the five services, Postgres, the broker, the"
            " sink and the load generator"
        ),
        "goals": {"mails_per_second": GOAL_RATE, "p99_seconds_at_1000_per_second": 1.0},
        "postgres": "external" if os.environ.get("DATABASE_URL") else "embedded, fsync off",
        "broker": "external" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "embedded Tansu",
    }
    for name in chosen:
        # Each run on its own Postgres, broker and sink: the embedded broker keeps every
        # record in memory, and a run must not inherit the one before's gigabyte.
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            workdir = Path(tmp)
            extra = (
                _dkim_env(workdir)
                if name == "dkim" or os.environ.get("BENCH_E2E_DKIM") == "1"
                else {}
            )
            rate = float(name.removeprefix("paced-")) if name.startswith("paced-") else 0
            with open_stack(workdir) as platform:
                figures[name] = _measure(platform, name, extra, rate)
            if PROFILE:
                keep = Path("bench-results") / "profiles"
                keep.mkdir(parents=True, exist_ok=True)
                for path in workdir.glob(f"profile-{name}-*.txt"):
                    path.replace(keep / path.name)
    _table(figures, chosen)
    return figures
