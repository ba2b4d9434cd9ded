"""Trigger events into ingest's batch endpoint, from a process of its own.

``python -m bench.loadgen CONFIG.json``. Contacts ``<prefix><n>`` for ``n`` in
``[first, first + count)`` are sent in batches of ``batch`` over ``connections``
keep-alive HTTP/1.1 connections (raw asyncio streams, so the generator costs little CPU):

- ``rate > 0``: batch *k* is due at ``start + k * batch / rate`` (an open loop: a slow
  platform does not slow the generator down, its latency grows instead);
- ``rate == 0``: as fast as the platform takes them, but never more than ``backlog``
  triggers ahead of what the sink (``sink_records``) has accepted, so every stage runs
  at once at its sustained rate instead of ingest racing ahead alone.

Each batch is retried with the same ``Idempotency-Key`` until it is answered 202 (the
broker acknowledged it), as an at-least-once client does when ingest is killed. One line
per batch goes to ``out``: ``<first send> <202 received> <first n> <count> <attempts>``;
``<out>.count`` holds the events acknowledged so far. The trigger time of a mail is its
batch's first send.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.sink import accepted_count


def contact_id(prefix: str, n: int) -> str:
    return f"{prefix}{n:07d}"


def contact_number(prefix: str, address_or_id: str) -> int | None:
    """``n`` of a contact id or of its address ``<contact id>@bench.example.jp``."""
    local = address_or_id.partition("@")[0]
    if not local.startswith(prefix):
        return None
    digits = local[len(prefix) :]
    return int(digits) if digits.isdigit() else None


def event(config: dict[str, Any], n: int) -> dict[str, Any]:
    cid = contact_id(config["prefix"], n)
    if config.get("profile"):
        contact = {
            "id": cid,
            "email": f"{cid}@bench.example.jp",
            "name": f"顧客 {n}",
            "consent": {
                "status": "granted",
                "kinds": ["marketing"],
                "source": "signup-form",
                "evidence": {"form": "https://shop.example.com/signup"},
            },
        }
    else:
        contact = {"id": cid}
    return {"type": config["event_type"], "contact": contact, "properties": {"n": n}}


class _BatchLog:
    """One line per acknowledged batch; ``<path>.count`` holds the events so far."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)
        self._count = Path(f"{path}.count")

    def add(self, sent_at: float, first: int, count: int, attempts: int, acked: int) -> None:
        self._file.write(f"{sent_at:.6f} {time.time():.6f} {first} {count} {attempts}\n")
        self._count.write_text(str(acked))

    def close(self) -> None:
        self._file.close()


@dataclass
class _State:
    next: int = 0
    fired: int = 0
    acked: int = 0
    retries: int = 0
    stopped: bool = False
    errors: dict[str, int] = field(default_factory=dict)

    def stopping(self) -> bool:
        return self.stopped


class Client:
    """One keep-alive connection; reconnects after any failure."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes, idempotency_key: str) -> int:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nIdempotency-Key: {idempotency_key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            response = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in response.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            return int(response.split(b" ", 2)[1])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def run(config: dict[str, Any]) -> dict[str, Any]:
    first, count, size = config["first"], config["count"], config["batch"]
    rate = float(config.get("rate") or 0)
    backlog = int(config.get("backlog") or 0)
    sink_records = Path(config["sink_records"]) if config.get("sink_records") else None
    sink_base = accepted_count(sink_records) if sink_records else 0
    out = _BatchLog(Path(config["out"]))
    batches = [(first + k, min(size, first + count - (first + k))) for k in range(0, count, size)]
    state = _State()
    started = time.time()

    def stop() -> None:
        state.stopped = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)

    async def worker() -> None:
        client = Client(config["host"], config["port"], config["key"])
        while state.next < len(batches) and not state.stopped:
            index = state.next
            state.next += 1
            lo, n = batches[index]
            if rate > 0:
                due = started + index * size / rate
                if (delay := due - time.time()) > 0:
                    await asyncio.sleep(delay)
            elif backlog and sink_records is not None:
                while state.fired - (accepted_count(sink_records) - sink_base) > backlog:  # noqa: ASYNC110 - the sink is another process
                    await asyncio.sleep(0.05)
            if state.stopping():
                break
            state.fired += n
            body = json.dumps({"events": [event(config, i) for i in range(lo, lo + n)]}).encode()
            key = f"{config['prefix']}{config['event_type']}-{lo}"
            sent_at, attempts = time.time(), 0
            status: int | str = 0
            while True:
                attempts += 1
                try:
                    status = await client.post("/v1/events:batch", body, key)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    status = type(exc).__name__
                if status == 202 or state.stopping():
                    break
                state.errors[str(status)] = state.errors.get(str(status), 0) + 1
                state.retries += 1
                await asyncio.sleep(0.2)
            if status != 202:
                break
            state.acked += n
            out.add(sent_at, lo, n, attempts, state.acked)
        client.close()

    await asyncio.gather(*(worker() for _ in range(int(config.get("connections", 4)))))
    out.close()
    elapsed = time.time() - started
    return {
        "events": state.acked,
        "seconds": round(elapsed, 2),
        "events_per_second": round(state.acked / max(elapsed, 1e-6)),
        "retries": state.retries,
        "errors": state.errors,
    }


def main(argv: list[str]) -> int:
    import uvloop

    config = json.loads(Path(argv[0]).read_text())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        summary = runner.run(run(config))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
