# ruff: noqa: RUF001 - full-width punctuation is what Japanese mail is written with
"""Sender throughput: mails/s accepted by a local SMTP sink, against ``smtp-source``'s maximum.

Starts its own Postgres and broker (or uses ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS``)
and a sink: Postfix's ``smtp-sink`` when installed (``make debian-tools``), else a minimal
aiosmtpd sink in its own process. For each run a fresh topic and database are filled
with ``BENCH_SENDER_MAILS`` (default 20,000) realistic Japanese mails of about 10 KB
(multipart/alternative, base64 UTF-8 text and HTML, List-Unsubscribe headers), then the
sender processes start and drain them. Throughput comes from the ledger's own
timestamps: ``sustained`` is the rate between the 10th and 90th percentile of
``finished_at`` (start-up and the group's first rebalance left out), ``overall`` is all
mails over first claim to last outcome. ``smtp-source`` (Postfix) drives the same sink at
its maximum (32 sessions, persistent connections) in the same run, for the ratio.

The machine is shared, so each run also reports the sender processes' CPU seconds per
1,000 mails (``/proc/<pid>/stat``, sampled every 0.25 s and read off at the same 10th and
90th percentile instants) and the load average at its start and end. ``BENCH_SENDER_PYSPY=<path>``
records each sender with py-spy (speedscope) during its run; ``BENCH_SENDER_PROFILE=<path>``
runs each under cProfile, written when it stops. ``BENCH_SENDER_WINDOW`` and
``BENCH_SENDER_POOL`` (default 128 and 16) set ``SENDER_WINDOW`` and ``SMTP_POOL_SIZE``.
"""

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from contextlib import ExitStack
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench import backends
from stepmail_common.topics import Topics
from stepmail_devstack.postgres import dsn_with_database, ensure_database
from stepmail_devstack.processes import ManagedProcess, free_port
from stepmail_devstack.rendered import publish, rendered_mails
from stepmail_devstack.services import ServiceProcess

PARTITIONS = 8
WINDOW = int(os.environ.get("BENCH_SENDER_WINDOW", "128"))
POOL = int(os.environ.get("BENCH_SENDER_POOL", "16"))
GOALS = {"one": 3000, "two": 5000, "dkim": 1000, "untraced": 3000}
LABELS = {
    "one": "1 process",
    "two": "2 processes",
    "dkim": "1 process, DKIM RSA-2048",
    "untraced": "1 process, OTEL_SDK_DISABLED",
}

AIOSMTPD_SINK = textwrap.dedent(
    """
    import asyncio, sys
    from aiosmtpd.smtp import SMTP

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            return "250 2.0.0 Ok: queued"

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Sink(), hostname="sink", data_size_limit=0), "127.0.0.1", int(sys.argv[1])
        )
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())
    """
)


def _postfix_tool(name: str) -> str | None:
    return shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )


def _mime_template() -> str:
    """A realistic Japanese marketing mail, about 10 KB, with placeholders in ASCII headers."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "ステップメール デモ株式会社 <news@example.com>"
    msg["To"] = "{rcpt}"
    msg["Subject"] = "【ご案内】春の新生活応援キャンペーン：全品 10%OFF（3月31日まで）"
    msg["Date"] = "Mon, 23 Mar 2026 10:00:00 +0900"
    msg["Message-ID"] = "<{mid}@example.com>"
    msg["X-Stepmail-Message-Id"] = "{mid}"
    msg["List-Unsubscribe"] = "<https://t.example.com/u/{mid}>, <mailto:unsub@example.com>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    paragraph = (
        "山田 太郎 様\n\nいつもステップメール デモストアをご利用いただき、"
        "誠にありがとうございます。"
        "新生活を迎える皆さまを応援するため、3月31日（火）まで全品 10%OFF のキャンペーンを"
        "実施しております。合計 ¥5,000 以上のご注文で送料無料、ポイントも 2 倍です。\n"
    )
    text = paragraph * 8 + "\n配信停止はこちら: https://t.example.com/u/{mid}\n"
    rows = "".join(f"<tr><td>商品 {i}</td><td>¥{1980 + i * 100:,}</td></tr>" for i in range(30))
    html = (
        '<!doctype html><html lang="ja"><body><div style="display:none">春の新生活応援</div>'
        f"<p>{paragraph * 7}</p><table>{rows}</table>"
        '<p><a href="https://t.example.com/u/{mid}">配信停止</a></p></body></html>'
    )
    msg.set_content(text, cte="base64")
    msg.add_alternative(html, subtype="html", cte="base64")
    return msg.as_string()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _cpu_at(samples: list[tuple[float, float]], at: float) -> float:
    """The senders' CPU seconds at ``at`` (epoch seconds), interpolated between samples."""
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= at <= t1:
            return c0 + (c1 - c0) * (at - t0) / max(t1 - t0, 1e-9)
    return samples[-1][1] if samples and at > samples[-1][0] else 0.0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def _count_sent(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('sender.deliveries') IS NOT NULL"):
            return 0
        sent: int = await conn.fetchval(
            "SELECT count(*) FROM sender.deliveries WHERE state = 'sent'"
        )
        return sent
    finally:
        await conn.close()


async def _ledger(database_url: str) -> tuple[int, list[float], float | None]:
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('sender.deliveries') IS NOT NULL"):
            return 0, [], None
        done = await conn.fetch(
            "SELECT extract(epoch FROM finished_at)::float8 AS t FROM sender.deliveries"
            " WHERE state = 'sent' ORDER BY finished_at"
        )
        first = await conn.fetchval(
            "SELECT extract(epoch FROM min(claimed_at))::float8 FROM sender.deliveries"
        )
        return len(done), [r["t"] for r in done], first
    finally:
        await conn.close()


def _run_sender(
    name: str,
    processes: int,
    count: int,
    database_url: str,
    bootstrap: str,
    smtp_url: str,
    workdir: Path,
    extra: dict[str, str],
) -> dict[str, Any]:
    prefix = f"bs{uuid.uuid4().hex[:6]}."
    db_name = f"bench_sender_{name}_{uuid.uuid4().hex[:6]}"
    ensure_database(database_url, db_name)
    db_url = dsn_with_database(database_url, db_name)
    print(f"[{name}] producing {count:,} mails ...", flush=True)
    run = prefix.rstrip(".")
    items = rendered_mails(
        Topics(prefix).mail_rendered, _mime_template(), count, contacts=count // 4, run=run
    )
    size = sum(len(i.event.data["mime"]) for i in items) / len(items)
    asyncio.run(publish(bootstrap, items, PARTITIONS))
    del items
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)},
        "DATABASE_URL": db_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "STEPMAIL_ENV": "development",
        "LOG_LEVEL": "WARNING",
        "SMTP_URL": smtp_url,
        "SMTP_POOL_SIZE": str(POOL),
        "SENDER_WINDOW": str(WINDOW),
        "SENDER_BATCH_MAX": "1000",
        "SENDER_DKIM_SIGN": "false",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    senders = []
    load_before = _load()
    samples: list[tuple[float, float]] = []
    with ExitStack() as stack:
        print(f"[{name}] {processes} sender process(es) draining ...", flush=True)
        for n in range(processes):
            port = free_port()
            argv = None
            if os.environ.get("BENCH_SENDER_PROFILE"):
                # cProfile of the event loop's thread, written when the process stops.
                out = f"{os.environ['BENCH_SENDER_PROFILE']}.{name}{n}"
                argv = [sys.executable, "-m", "cProfile", "-o", out, "-m", "stepmail_sender"]
            sender = ServiceProcess(
                "sender",
                port,
                {**env, "HTTP_PORT": str(port)},
                argv=argv,
                log_path=workdir / f"{name}{n}.log",
            )
            sender.start()
            stack.callback(sender.terminate, 15)
            senders.append(sender)
            if os.environ.get("BENCH_SENDER_PYSPY"):
                out = f"{os.environ['BENCH_SENDER_PYSPY']}.{name}{n}.json"
                spy = subprocess.Popen(  # noqa: S603 - own argv
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        *("record", "--format", "speedscope", "--nonblocking", "-o", out),
                        *("--pid", str(sender.pid)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                # py-spy writes its profile when interrupted, before the sender stops.
                stack.callback(spy.wait, 60)
                stack.callback(spy.send_signal, signal.SIGINT)
        deadline = time.monotonic() + max(120.0, count / 100)
        # The senders' CPU is sampled often and cheaply; the ledger is counted once a
        # second only, since counting scans it and would load Postgres beside them.
        next_count = 0.0
        while True:
            samples.append((time.time(), sum(_cpu_seconds(s.pid) for s in senders)))
            if time.monotonic() >= next_count:
                next_count = time.monotonic() + 1.0
                sent = asyncio.run(_count_sent(db_url))
                if sent >= count:
                    break
            for sender in senders:
                sender.ensure_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"[{name}] only {sent} of {count} sent before the deadline")
            time.sleep(0.25)
        sent, times, first = asyncio.run(_ledger(db_url))
    load_after = _load()
    lo, hi = times[int(0.1 * count)], times[int(0.9 * count) - 1]
    sustained = 0.8 * count / max(hi - lo, 1e-6)
    overall = count / max(times[-1] - (first or times[0]), 1e-6)
    spent = _cpu_at(samples, hi) - _cpu_at(samples, lo)
    cpu_per_1000 = 1000 * spent / (0.8 * count) if spent > 0 else None
    cpu_text = f"{cpu_per_1000:.2f}" if cpu_per_1000 is not None else "n/a"
    print(
        f"[{name}] sustained {sustained:,.0f}/s, overall {overall:,.0f}/s,"
        f" sender CPU {cpu_text} s per 1,000 mails, load {load_before} -> {load_after}",
        flush=True,
    )
    return {
        "processes": processes,
        "mails": count,
        "mean_mime_bytes": round(size),
        "sustained_per_second": round(sustained),
        "overall_per_second": round(overall),
        "sender_cpu_seconds_per_1000": round(cpu_per_1000, 3) if cpu_per_1000 else None,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


def _smtp_source(tool: str, port: int, count: int) -> dict[str, Any]:
    argv = [
        tool,
        "-s", "32",
        "-m", str(count),
        "-l", "10240",
        "-d",
        "-f", "bounce@example.com",
        "-t", "u@example.jp",
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)  # noqa: S603 - own argv
    elapsed = time.perf_counter() - started
    return {"mails": count, "per_second": round(count / elapsed)}


def main() -> dict[str, Any]:
    count = int(os.environ.get("BENCH_SENDER_MAILS", "20000"))
    sink_tool = _postfix_tool("smtp-sink")
    source_tool = _postfix_tool("smtp-source")
    figures: dict[str, Any] = {
        "machine": (
            f"{os.cpu_count()} cores shared by Postgres, broker, sink, sender(s) and the"
            " producer, and by other work running on the machine at the same time"
        ),
        "settings": {"SENDER_WINDOW": WINDOW, "SMTP_POOL_SIZE": POOL, "partitions": PARTITIONS},
        "goals_per_second": GOALS,
    }
    with tempfile.TemporaryDirectory(prefix="bench-sender-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        database_url, _ = backends.postgres(stack, workdir)
        bootstrap, _ = backends.kafka(stack)

        sink_port = free_port()
        if sink_tool:
            argv = [sink_tool, "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"]
            figures["sink"] = "postfix smtp-sink"
        else:
            script = workdir / "sink.py"
            script.write_text(AIOSMTPD_SINK)
            argv = [sys.executable, str(script), str(sink_port)]
            figures["sink"] = "aiosmtpd (postfix not installed: run `make debian-tools` as root)"
        sink = ManagedProcess("sink", argv, log_path=workdir / "sink.log")
        sink.start()
        stack.callback(sink.terminate, 5)
        sink.wait_until(lambda: _port_open(sink_port), 15, "the sink to listen")
        print(f"sink: {figures['sink']} on 127.0.0.1:{sink_port}", flush=True)

        if source_tool:
            print("smtp-source at its maximum against the same sink ...", flush=True)
            figures["smtp_source"] = _smtp_source(source_tool, sink_port, 40000)
            print(f"smtp-source: {figures['smtp_source']['per_second']:,}/s", flush=True)
        else:
            figures["smtp_source"] = "skipped: postfix's smtp-source is not installed"

        smtp_url = f"smtp://127.0.0.1:{sink_port}"
        key_path = workdir / "dkim.pem"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        runs = {
            "one": (1, {}),
            "two": (2, {}),
            "dkim": (
                1,
                {"SENDER_DKIM_SIGN": "true", "SENDER_DKIM_KEYS": f"example.com:bench:{key_path}"},
            ),
            # What the tracing spans (one per published event) cost when nobody collects them.
            "untraced": (1, {"OTEL_SDK_DISABLED": "true"}),
        }
        chosen = os.environ.get("BENCH_SENDER_RUNS", "one two dkim untraced").split()
        for name in chosen:
            processes, extra = runs[name]
            figures[name] = _run_sender(
                name, processes, count, database_url, bootstrap, smtp_url, workdir, extra
            )

    source = figures["smtp_source"]
    print()
    print(
        f"{'run':30} {'sustained/s':>12} {'overall/s':>10} {'goal/s':>8} {'vs smtp-source':>15}"
        f" {'CPU s/1k':>9}  load before -> after"
    )
    for name in chosen:
        run = figures[name]
        ratio = (
            f"{run['sustained_per_second'] / source['per_second']:.1%}"
            if isinstance(source, dict)
            else "n/a"
        )
        run["ratio_to_smtp_source"] = ratio
        print(
            f"{LABELS[name]:30} {run['sustained_per_second']:>12,} {run['overall_per_second']:>10,}"
            f" {GOALS[name]:>8,} {ratio:>15} {run['sender_cpu_seconds_per_1000'] or 0:>9.2f}"
            f"  {run['load_average_before']} -> {run['load_average_after']}"
        )
    if isinstance(source, dict):
        print(f"{'smtp-source (postfix)':30} {source['per_second']:>12,}")
    print(f"sink: {figures['sink']}")
    return figures


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
