"""A local SMTP catcher: accepts every message, keeps it, and shows it over HTTP.

Run it as ``python -m stepmail_devstack.catcher --smtp-port 1025 --http-port 8025``.
The JSON API under ``/api`` is what tests and tools read; ``/`` is for people.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.message
import email.policy
import html
import json
import signal
import sys
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from stepmail_devstack.processes import DevstackError, ManagedProcess, port_is_open

STEPMAIL_ID_HEADER = "X-Stepmail-Message-Id"
_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
_HEADER_ERRORS = (ValueError, TypeError, LookupError, AttributeError, IndexError)

JsonDict = dict[str, Any]


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header(msg: email.message.EmailMessage, name: str) -> str:
    try:
        value = msg.get(name)
        return "" if value is None else str(value)
    except _HEADER_ERRORS:
        return ""


def _part_text(msg: email.message.EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    if not isinstance(part, email.message.EmailMessage):
        return ""
    if part.get_content_subtype() != subtype:
        return ""
    try:
        content = part.get_content()
    except _HEADER_ERRORS:
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    # SMTP delivers CRLF line ends; readers want the text as written.
    return content.replace("\r\n", "\n") if isinstance(content, str) else ""


@dataclass
class CaughtMessage:
    """One message as the catcher received it, with the SMTP envelope."""

    id: int
    mail_from: str
    rcpt_to: list[str]
    raw: bytes
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @cached_property
    def parsed(self) -> email.message.EmailMessage:
        msg = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg

    @property
    def subject(self) -> str:
        return _header(self.parsed, "Subject")

    def headers(self) -> list[list[str]]:
        """Every header in order, as ``[name, decoded value]``."""
        pairs: list[list[str]] = []
        for name, raw_value in self.parsed.raw_items():
            try:
                value = str(self.parsed.policy.header_fetch_parse(name, raw_value))
            except _HEADER_ERRORS:
                value = str(raw_value)
            pairs.append([name, value])
        return pairs

    def summary(self) -> JsonDict:
        return {
            "id": self.id,
            "mail_from": self.mail_from,
            "rcpt_to": list(self.rcpt_to),
            "subject": self.subject,
            "message_id": _header(self.parsed, "Message-ID"),
            "stepmail_message_id": _header(self.parsed, STEPMAIL_ID_HEADER),
            "received_at": _rfc3339(self.received_at),
            "size": len(self.raw),
        }

    def detail(self) -> JsonDict:
        return {
            **self.summary(),
            "raw": self.raw.decode("utf-8", "replace"),
            "text": _part_text(self.parsed, "plain"),
            "html": _part_text(self.parsed, "html"),
            "headers": self.headers(),
        }


class MailStore:
    """Messages in arrival order; with a directory, also ``<n>.eml`` plus ``<n>.json``.

    Numbers keep growing after a clear so an id never names two messages.
    """

    def __init__(self, store_dir: Path | None = None) -> None:
        self.store_dir = store_dir
        self._messages: dict[int, CaughtMessage] = {}
        self._next_id = 1
        self.received_total = 0
        if store_dir is not None:
            store_dir.mkdir(parents=True, exist_ok=True)
            self._load(store_dir)

    def _load(self, store_dir: Path) -> None:
        for meta_path in sorted(store_dir.glob("*.json"), key=lambda p: int(p.stem)):
            eml_path = meta_path.with_suffix(".eml")
            if not eml_path.exists():
                continue
            meta = json.loads(meta_path.read_text("utf-8"))
            msg_id = int(meta_path.stem)
            self._messages[msg_id] = CaughtMessage(
                id=msg_id,
                mail_from=meta["mail_from"],
                rcpt_to=list(meta["rcpt_to"]),
                raw=eml_path.read_bytes(),
                received_at=datetime.fromisoformat(meta["received_at"]),
            )
            self._next_id = max(self._next_id, msg_id + 1)

    def add(self, mail_from: str, rcpt_to: Sequence[str], raw: bytes) -> CaughtMessage:
        message = CaughtMessage(self._next_id, mail_from, list(rcpt_to), raw)
        self._next_id += 1
        self.received_total += 1
        self._messages[message.id] = message
        if self.store_dir is not None:
            (self.store_dir / f"{message.id}.eml").write_bytes(raw)
            meta = {
                "mail_from": message.mail_from,
                "rcpt_to": message.rcpt_to,
                "received_at": message.received_at.isoformat(),
            }
            (self.store_dir / f"{message.id}.json").write_text(json.dumps(meta), "utf-8")
        return message

    def all(self) -> list[CaughtMessage]:
        return list(self._messages.values())

    def get(self, msg_id: int) -> CaughtMessage | None:
        return self._messages.get(msg_id)

    def clear(self) -> None:
        if self.store_dir is not None:
            for msg_id in self._messages:
                for suffix in (".eml", ".json"):
                    (self.store_dir / f"{msg_id}{suffix}").unlink(missing_ok=True)
        self._messages.clear()


class _SmtpHandler:
    """aiosmtpd handler that accepts every recipient and keeps the message.

    ``accept_delay`` makes it answer DATA that many seconds late, as a busy receiving
    server does; tests use it to catch a sender with mail in flight.
    """

    def __init__(self, store: MailStore, accept_delay: float = 0.0) -> None:
        self.store = store
        self.accept_delay = accept_delay

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        if self.accept_delay:
            await asyncio.sleep(self.accept_delay)
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        message = self.store.add(envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        print(
            f"received #{message.id} from {message.mail_from} to {', '.join(message.rcpt_to)}: "
            f"{message.subject}",
            flush=True,
        )
        return "250 2.0.0 Message accepted"


def _accept_any_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
) -> AuthResult:
    return AuthResult(success=True)


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


_PAGE_STYLE = """
body{font-family:system-ui,"Hiragino Sans","Noto Sans JP",sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;
text-align:left;vertical-align:top}pre{white-space:pre-wrap;background:#f6f6f6;padding:.8rem}
iframe{width:100%;height:32rem;border:1px solid #ccc}
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        '<!doctype html><html lang="ja"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_PAGE_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _index_page(store: MailStore) -> HTMLResponse:
    rows = []
    for message in reversed(store.all()):
        rows.append(
            "<tr>"
            f"<td>{message.id}</td>"
            f"<td>{html.escape(_rfc3339(message.received_at))}</td>"
            f"<td>{html.escape(_header(message.parsed, 'From') or message.mail_from)}</td>"
            f"<td>{html.escape(', '.join(message.rcpt_to))}</td>"
            f'<td><a href="/messages/{message.id}">{html.escape(message.subject or "(no subject)")}'
            "</a></td></tr>"
        )
    body = (
        f"<h1>stepmail catcher</h1><p>{len(rows)} message(s) kept, "
        f"{store.received_total} received since start.</p>"
        "<table><tr><th>#</th><th>Received</th><th>From</th><th>To</th><th>Subject</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return _page("stepmail catcher", body)


def _message_page(message: CaughtMessage) -> HTMLResponse:
    detail = message.detail()
    header_rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in detail["headers"]
    )
    parts = [
        '<p><a href="/">&larr; all messages</a></p>',
        f"<h1>{html.escape(message.subject or '(no subject)')}</h1>",
        f"<p>Envelope: {html.escape(message.mail_from)} &rarr; "
        f"{html.escape(', '.join(message.rcpt_to))}</p>",
        f"<table>{header_rows}</table>",
    ]
    if detail["html"]:
        # Links open outside the frame; the sandbox keeps the mail's scripts off.
        srcdoc = '<base target="_blank">' + detail["html"]
        parts.append(
            '<h2>HTML</h2><iframe sandbox="allow-popups allow-popups-to-escape-sandbox '
            f'allow-top-navigation-by-user-activation" srcdoc="{html.escape(srcdoc)}"></iframe>'
        )
    if detail["text"]:
        parts.append(f"<h2>Text</h2><pre>{html.escape(detail['text'])}</pre>")
    return _page(message.subject or f"message {message.id}", "".join(parts))


def create_app(store: MailStore) -> FastAPI:
    """The catcher's HTTP API and pages over ``store``."""
    app = FastAPI(title="stepmail SMTP catcher", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> JsonDict:
        return {"status": "ok", "received_total": store.received_total}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return (
            "# HELP stepmail_catcher_messages_received_total Messages accepted over SMTP.\n"
            "# TYPE stepmail_catcher_messages_received_total counter\n"
            f"stepmail_catcher_messages_received_total {store.received_total}\n"
        )

    @app.get("/api/messages")
    async def list_messages() -> JsonDict:
        messages = [m.summary() for m in store.all()]
        return {"total": len(messages), "messages": messages}

    @app.get("/api/messages/{msg_id}", response_model=None)
    async def get_message(msg_id: int) -> JsonDict | JSONResponse:
        message = store.get(msg_id)
        if message is None:
            return _problem(404, "Not Found", f"no message {msg_id}")
        return message.detail()

    @app.delete("/api/messages", status_code=204)
    async def clear_messages() -> Response:
        store.clear()
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return _index_page(store)

    @app.get("/messages/{msg_id}", response_class=HTMLResponse)
    async def show_message(msg_id: int) -> HTMLResponse:
        message = store.get(msg_id)
        if message is None:
            return _page("not found", f"<p>No message {msg_id}. <a href='/'>All messages</a></p>")
        return _message_page(message)

    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`serve` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(
    smtp_host: str,
    smtp_port: int,
    http_host: str,
    http_port: int,
    store_dir: Path | None,
    accept_delay: float = 0.0,
) -> None:
    """Run SMTP and HTTP on the current loop until SIGTERM or SIGINT."""
    store = MailStore(store_dir)
    handler = _SmtpHandler(store, accept_delay)
    loop = asyncio.get_running_loop()
    smtp_server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="stepmail-catcher",
            ident="stepmail SMTP catcher",
            enable_SMTPUTF8=True,
            data_size_limit=_MAX_MESSAGE_BYTES,
            authenticator=_accept_any_login,
            auth_require_tls=False,
        ),
        host=smtp_host,
        port=smtp_port,
    )
    config = uvicorn.Config(
        create_app(store), host=http_host, port=http_port, log_level="warning", lifespan="off"
    )
    http_server = _Server(config)

    def request_stop() -> None:
        http_server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    print(
        f"catcher: SMTP on {smtp_host}:{smtp_port}, HTTP on http://{http_host}:{http_port}",
        flush=True,
    )
    try:
        await http_server.serve()
    finally:
        smtp_server.close()
        await smtp_server.wait_closed()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    print(f"catcher: stopped after {store.received_total} message(s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepmail_devstack.catcher")
    parser.add_argument("--smtp-host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--store-dir", type=Path, default=None)
    parser.add_argument(
        "--accept-delay",
        type=float,
        default=0.0,
        help="seconds to wait before answering each message's DATA",
    )
    args = parser.parse_args(argv)
    asyncio.run(
        serve(
            args.smtp_host,
            args.smtp_port,
            args.http_host,
            args.http_port,
            args.store_dir,
            args.accept_delay,
        )
    )
    return 0


class CatcherProcess:
    """The catcher run as a child process, as ``make run`` and the tests use it."""

    def __init__(
        self,
        smtp_port: int,
        http_port: int,
        store_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        echo: bool = False,
        log_path: Path | None = None,
        start_timeout: float = 30.0,
        accept_delay: float = 0.0,
    ) -> None:
        self.smtp_port = smtp_port
        self.http_port = http_port
        self.store_dir = store_dir
        self.host = host
        self.start_timeout = start_timeout
        argv = [
            sys.executable,
            "-m",
            "stepmail_devstack.catcher",
            "--smtp-host",
            host,
            "--smtp-port",
            str(smtp_port),
            "--http-host",
            host,
            "--http-port",
            str(http_port),
        ]
        if store_dir is not None:
            argv += ["--store-dir", str(store_dir)]
        if accept_delay:
            argv += ["--accept-delay", str(accept_delay)]
        self.process = ManagedProcess("catcher", argv, echo=echo, log_path=log_path)
        self._lock = threading.Lock()

    def __enter__(self) -> CatcherProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def smtp_url(self) -> str:
        return f"smtp://{self.host}:{self.smtp_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> None:
        """Start the catcher and wait until ``/healthz`` answers."""
        with self._lock:
            if self.process.running:
                return
            for port in (self.smtp_port, self.http_port):
                if port_is_open(self.host, port):
                    raise DevstackError(f"port {self.host}:{port} is already in use")
            self.process.start()
            try:
                self.process.wait_http_ok(f"{self.http_url}/healthz", self.start_timeout)
            except BaseException:
                self.process.kill()
                raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; safe to call twice."""
        self.process.terminate(timeout)

    def restart(self) -> None:
        """Stop and start again; kept messages survive only with a store directory."""
        self.stop()
        self.start()

    def messages(self) -> list[JsonDict]:
        """The summaries from ``GET /api/messages``."""
        response = httpx.get(f"{self.http_url}/api/messages", timeout=5.0, trust_env=False)
        response.raise_for_status()
        messages: list[JsonDict] = response.json()["messages"]
        return messages

    def message(self, msg_id: int) -> JsonDict:
        """The detail from ``GET /api/messages/{id}``."""
        response = httpx.get(f"{self.http_url}/api/messages/{msg_id}", timeout=5.0, trust_env=False)
        response.raise_for_status()
        detail: JsonDict = response.json()
        return detail

    def clear(self) -> None:
        """``DELETE /api/messages``."""
        httpx.delete(
            f"{self.http_url}/api/messages", timeout=5.0, trust_env=False
        ).raise_for_status()


if __name__ == "__main__":
    sys.exit(main())
