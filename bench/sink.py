"""The SMTP receiving end of the end-to-end benchmark and the chaos run.

``python -m bench.sink PORT RECORDS`` accepts every mail (ESMTP with PIPELINING, any
number of connections) and appends one line per accepted mail to ``RECORDS``::

    <unix time of the 250 reply> <X-Stepmail-Message-Id or -> <first RCPT TO>

so trigger-to-accept latency is computed per mail, and duplicates are found by message id.
It keeps no message. ``RECORDS.count`` holds the number accepted so far (rewritten every
0.2 s), for progress and for the load generator's back-pressure. A minimal asyncio
protocol rather than aiosmtpd: at thousands of mails per second on two cores the sink must
cost little CPU itself (its CPU is measured and reported like every other process's).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

_ID_HEADER = b"\nx-stepmail-message-id:"
_END = b"\r\n.\r\n"
_HEAD_MAX = 16384
_EHLO = (
    b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250 SIZE 52428800\r\n"
)


def message_id_of(message: bytes | bytearray) -> str:
    """The ``X-Stepmail-Message-Id`` header's value (``-`` when absent), headers only."""
    head = b"\n" + bytes(message[:_HEAD_MAX])
    head_end = head.find(b"\r\n\r\n")
    head = head[: head_end if head_end >= 0 else len(head)]
    at = head.lower().find(_ID_HEADER)
    if at < 0:
        return "-"
    start = at + len(_ID_HEADER)
    end = head.find(b"\r\n", start)
    value = head[start : end if end >= 0 else len(head)].strip()
    return value.decode("ascii", "replace") or "-"


def address_of(argument: bytes) -> str:
    """``TO:<a@b> SIZE=1`` → ``a@b``."""
    text = argument.decode("utf-8", "replace")
    start, end = text.find("<"), text.find(">")
    if start >= 0 and end > start:
        return text[start + 1 : end]
    return text.partition(":")[2].strip().split(" ")[0]


class Recorder:
    """Accepted mails as lines in a file, flushed with the count every 0.2 s."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", buffering=1 << 20)
        self._count_path = Path(f"{path}.count")
        self.count = 0

    def add(self, message_id: str, rcpt: str) -> None:
        self._file.write(f"{time.time():.6f} {message_id} {rcpt}\n")
        self.count += 1

    def flush(self) -> None:
        self._file.flush()
        tmp = self._count_path.with_suffix(".tmp")
        tmp.write_text(str(self.count))
        tmp.replace(self._count_path)

    def close(self) -> None:
        self.flush()
        self._file.close()


class SinkProtocol(asyncio.Protocol):
    """One SMTP session; commands may arrive pipelined."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._buf = bytearray()
        self._in_data = False
        self._scan_from = 0
        self._rcpt: str | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self._buf += data
        out: list[bytes] = []
        while self._step(out):
            pass
        if out and self._transport is not None:
            self._transport.write(b"".join(out))

    def _step(self, out: list[bytes]) -> bool:
        buf = self._buf
        if self._in_data:
            if buf.startswith(b".\r\n"):
                end, skip = 0, 3
            else:
                found = buf.find(_END, self._scan_from)
                if found < 0:
                    self._scan_from = max(0, len(buf) - len(_END))
                    return False
                end, skip = found + 2, found + len(_END)
            self._recorder.add(message_id_of(buf[: min(end, _HEAD_MAX)]), self._rcpt or "-")
            del buf[:skip]
            self._in_data, self._scan_from, self._rcpt = False, 0, None
            out.append(b"250 2.0.0 Ok: queued\r\n")
            return True
        nl = buf.find(b"\r\n")
        if nl < 0:
            return False
        line = bytes(buf[:nl])
        del buf[: nl + 2]
        verb = line[:4].upper()
        if verb == b"EHLO":
            out.append(_EHLO)
        elif verb == b"HELO":
            out.append(b"250 bench-sink\r\n")
        elif verb == b"MAIL":
            self._rcpt = None
            out.append(b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT":
            if self._rcpt is None:
                self._rcpt = address_of(line[4:])
            out.append(b"250 2.1.5 Ok\r\n")
        elif verb == b"DATA":
            self._in_data = True
            out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb in (b"RSET", b"NOOP"):
            self._rcpt = None if verb == b"RSET" else self._rcpt
            out.append(b"250 2.0.0 Ok\r\n")
        elif verb == b"QUIT":
            out.append(b"221 2.0.0 Bye\r\n")
            if self._transport is not None:
                self._transport.write(b"".join(out))
                out.clear()
                self._transport.close()
            return False
        else:
            out.append(b"502 5.5.2 Command not recognized\r\n")
        return True


async def serve(port: int, records: Path) -> None:
    recorder = Recorder(records)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: SinkProtocol(recorder), "127.0.0.1", port)
    recorder.flush()
    print(f"sink: SMTP on 127.0.0.1:{port}", flush=True)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.2)
            recorder.flush()

    task = asyncio.create_task(flusher())
    await stop.wait()
    task.cancel()
    server.close()
    recorder.close()


@dataclass(frozen=True, slots=True)
class Accepted:
    """One line of the sink's records."""

    at: float
    message_id: str
    rcpt: str


def read_records(path: Path) -> list[Accepted]:
    """Every complete line written so far."""
    accepted = []
    with path.open() as lines:
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and line.endswith("\n"):
                accepted.append(Accepted(float(parts[0]), parts[1], parts[2]))
    return accepted


def accepted_count(path: Path) -> int:
    """The count the sink last wrote (0 before it did)."""
    try:
        return int(Path(f"{path}.count").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def main(argv: list[str]) -> int:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(int(argv[0]), Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
