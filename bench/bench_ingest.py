"""Ingest throughput: single events (requests/s) and batches (events/s).

Starts its own Postgres and broker (or uses ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS``),
ingest as its own process, and a load generator in another process: a small asyncio
HTTP/1.1 keep-alive client (raw sockets, so the generator costs little CPU on 2 cores).
Every request must be answered 202, i.e. acknowledged by the broker.

Besides the rates it reports the CPU seconds per 1,000 requests / events of ingest, the
embedded broker (user + system, from ``/proc``) and the generator, so runs on a shared
machine compare and show where the two cores go, and the load average.
``BENCH_INGEST_PROFILE=<dir>`` records a py-spy profile (speedscope) of ingest in each
phase into that directory.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import backends
from bench.stack import tree_cpu_seconds
from stepmail_devstack.postgres import dsn_with_database, ensure_database
from stepmail_devstack.processes import free_port
from stepmail_devstack.services import ServiceProcess

KEY = "sm_bench_0123456789abcdefghijklmnop"

LOADGEN = textwrap.dedent(
    """
    import asyncio, json, sys, time
    host, port, path, body_file, connections, seconds, key = sys.argv[1:8]
    body = open(body_file, "rb").read()
    request = (
        f"POST {path} HTTP/1.1\\r\\nHost: {host}\\r\\nAuthorization: Bearer {key}\\r\\n"
        f"Content-Type: application/json\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n"
    ).encode() + body
    counts = {"ok": 0, "other": 0}
    latencies = []

    async def worker(stop):
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < stop:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            length = 0
            for line in head.split(b"\\r\\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            counts["ok" if head.startswith(b"HTTP/1.1 202") else "other"] += 1
        writer.close()

    async def main():
        started = time.perf_counter()
        stop = started + float(seconds)
        await asyncio.gather(*(worker(stop) for _ in range(int(connections))))
        elapsed = time.perf_counter() - started
        latencies.sort()
        n = len(latencies)
        p = lambda q: latencies[min(n - 1, int(q * n))] if n else 0
        print(json.dumps({
            **counts, "seconds": elapsed, "p50": p(0.5), "p99": p(0.99),
            "cpu_seconds": time.process_time(),
        }))

    asyncio.run(main())
    """
)


def _load(
    url_host: str,
    port: int,
    path: str,
    body: bytes,
    connections: int,
    seconds: float,
    workdir: Path,
) -> dict[str, Any]:
    body_file = workdir / f"body-{uuid.uuid4().hex[:6]}.json"
    body_file.write_bytes(body)
    script = workdir / "loadgen.py"
    script.write_text(LOADGEN)
    out = subprocess.run(  # noqa: S603 - our own script and arguments
        [
            sys.executable,
            str(script),
            url_host,
            str(port),
            path,
            str(body_file),
            str(connections),
            str(seconds),
            KEY,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _spy(pid: int | None, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy on ingest for ``seconds`` when ``BENCH_INGEST_PROFILE`` names a directory."""
    directory = os.environ.get("BENCH_INGEST_PROFILE")
    if not directory or pid is None:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(  # noqa: S603 - py-spy from the virtualenv, our own argv
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--format",
            "speedscope",
            "--nonblocking",
            "--output",
            str(Path(directory) / out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _phase(
    service: ServiceProcess,
    broker_pid: int | None,
    name: str,
    path: str,
    body: bytes,
    connections: int,
    seconds: float,
    workdir: Path,
) -> dict[str, Any]:
    """One load phase, with the CPU seconds of ingest, the broker and the generator over it
    (and a profile when asked)."""
    spy = _spy(service.pid, Path(f"ingest-{name}.json"), seconds)
    cpu_before = tree_cpu_seconds(service.pid), tree_cpu_seconds(broker_pid)
    result = _load("127.0.0.1", service.port, path, body, connections, seconds, workdir)
    result["generator_cpu_seconds"] = result.pop("cpu_seconds")
    result["cpu_seconds"] = tree_cpu_seconds(service.pid) - cpu_before[0]
    result["broker_cpu_seconds"] = tree_cpu_seconds(broker_pid) - cpu_before[1]
    if spy is not None:
        spy.wait(timeout=60)
    return result


def _cores_busy(phase: dict[str, Any]) -> dict[str, float]:
    """How many cores ingest, the broker and the generator kept busy during a phase."""
    return {
        who: round(phase[key] / phase["seconds"], 2)
        for who, key in (
            ("ingest", "cpu_seconds"),
            ("broker", "broker_cpu_seconds"),
            ("generator", "generator_cpu_seconds"),
        )
    }


def _event(i: int) -> dict[str, Any]:
    return {
        "type": "order.completed",
        "contact": {"id": f"c-{i}", "email": f"user{i}@example.jp", "name": "佐藤 花子"},
        "properties": {"order_id": str(i), "total_price_yen": 4380, "currency": "JPY"},
    }


def main() -> dict[str, Any]:
    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        database_url, _ = backends.postgres(stack, workdir)
        name = f"bench_ingest_{uuid.uuid4().hex[:8]}"
        ensure_database(database_url, name)
        bootstrap, broker = backends.kafka(stack)
        broker_pid = broker.pid if broker else None
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": dsn_with_database(database_url, name),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:6]}.",
            "KAFKA_TOPIC_PARTITIONS": "4",
            "HTTP_PORT": str(port),
            "INGEST_BOOTSTRAP_API_KEY": KEY,
            "INGEST_RATE_LIMIT_PER_SECOND": "1000000",
            "LOG_LEVEL": "WARNING",
        }
        service = ServiceProcess("ingest", port, env, log_path=workdir / "ingest.log")
        service.start()
        stack.callback(service.terminate, 10)
        service.wait_ready()

        print("warming up ...", flush=True)
        _load("127.0.0.1", port, "/v1/events", json.dumps(_event(0)).encode(), 16, 2, workdir)
        print(f"single events, {seconds:.0f} s, 64 connections ...", flush=True)
        single = _phase(
            service,
            broker_pid,
            "single",
            "/v1/events",
            json.dumps(_event(1)).encode(),
            64,
            seconds,
            workdir,
        )
        batch_body = json.dumps({"events": [_event(i) for i in range(1000)]}).encode()
        print(f"batches of 1,000, {seconds:.0f} s, 4 connections ...", flush=True)
        batch = _phase(
            service, broker_pid, "batch", "/v1/events:batch", batch_body, 4, seconds, workdir
        )
        load_average = os.getloadavg()

    single_rps = single["ok"] / single["seconds"]
    batch_eps = batch["ok"] * 1000 / batch["seconds"]
    figures = {
        "single_requests_per_second": round(single_rps),
        "single_p50_ms": round(single["p50"] * 1000, 1),
        "single_p99_ms": round(single["p99"] * 1000, 1),
        "single_non_202": single["other"],
        "batch_events_per_second": round(batch_eps),
        "batch_requests_per_second": round(batch["ok"] / batch["seconds"], 1),
        "batch_p50_ms": round(batch["p50"] * 1000, 1),
        "batch_non_202": batch["other"],
        "single_cpu_seconds_per_1000_requests": round(
            single["cpu_seconds"] / max(single["ok"], 1) * 1000, 3
        ),
        "batch_cpu_seconds_per_1000_events": round(
            batch["cpu_seconds"] / max(batch["ok"] * 1000, 1) * 1000, 3
        ),
        "cores_busy_single": _cores_busy(single),
        "cores_busy_batch": _cores_busy(batch),
        "load_average_1_5_15": [round(x, 2) for x in load_average],
        "goal_single_requests_per_second": 2000,
        "goal_batch_events_per_second": 20000,
        "machine": f"{os.cpu_count()} cores shared by load generator, broker, Postgres, ingest",
    }
    print()
    print(f"{'measure':32} {'value':>10} {'goal':>10}")
    print(
        f"{'single events, requests/s':32} {figures['single_requests_per_second']:>10} {2000:>10}"
    )
    print(
        f"{'single p50 / p99 (ms)':32} {figures['single_p50_ms']:>5}/{figures['single_p99_ms']:<5}"
    )
    print(f"{'batch (1,000), events/s':32} {figures['batch_events_per_second']:>10} {20000:>10}")
    print(f"{'non-202 answers':32} {single['other'] + batch['other']:>10}")
    per_request = figures["single_cpu_seconds_per_1000_requests"]
    print(f"{'ingest CPU s / 1,000 requests':32} {per_request:>10}")
    print(f"{'ingest CPU s / 1,000 events':32} {figures['batch_cpu_seconds_per_1000_events']:>10}")
    for phase in ("single", "batch"):
        busy = figures[f"cores_busy_{phase}"]
        print(f"{'cores busy, ' + phase:32} " + ", ".join(f"{k} {v}" for k, v in busy.items()))
    print(f"{'load average 1/5/15 min':32} {figures['load_average_1_5_15']}")
    return figures
