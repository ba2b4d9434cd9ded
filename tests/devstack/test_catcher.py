import asyncio
import shutil
import smtplib
import tempfile
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepmail_devstack.catcher import CatcherProcess
from stepmail_devstack.processes import free_port

pytestmark = pytest.mark.integration

SUBJECT = "ようこそ、山田 花子さん <はじめまして>"


def _japanese_mail(recipient: str, stepmail_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "stepmail デモ <hello@example.com>"
    msg["To"] = recipient
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = f"<{stepmail_id}@stepmail.example>"
    msg["X-Stepmail-Message-Id"] = stepmail_id
    msg.set_content("山田 花子 様\n\nご登録ありがとうございます。\nhttps://example.com/a\n")
    msg.add_alternative(
        '<p>山田 花子 様</p><p><a href="https://example.com/a">はじめる</a></p>',
        subtype="html",
    )
    return msg


def _send(smtp_port: int, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
        client.send_message(msg)


async def _wait_for(client: httpx.AsyncClient, stepmail_id: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        listing = (await client.get("/api/messages")).json()
        found = [m for m in listing["messages"] if m["stepmail_message_id"] == stepmail_id]
        if found:
            assert listing["total"] == len(listing["messages"])
            first: dict[str, Any] = found[0]
            return first
        assert asyncio.get_running_loop().time() < deadline, "message never arrived"
        await asyncio.sleep(0.1)


async def test_japanese_multipart_message_is_kept_and_decoded(smtp_catcher):
    stepmail_id = f"msg-{uuid.uuid4().hex}"
    recipient = f"{uuid.uuid4().hex[:8]}@example.com"
    raw_mail = _japanese_mail(recipient, stepmail_id)
    await asyncio.to_thread(_send, smtp_catcher.smtp_port, raw_mail)

    async with httpx.AsyncClient(base_url=smtp_catcher.http_url, trust_env=False) as client:
        summary = await _wait_for(client, stepmail_id)
        assert summary["subject"] == SUBJECT
        assert summary["mail_from"] == "hello@example.com"
        assert summary["rcpt_to"] == [recipient]
        assert summary["message_id"] == f"<{stepmail_id}@stepmail.example>"
        assert summary["size"] > 0
        assert summary["received_at"].endswith("Z")

        detail = (await client.get(f"/api/messages/{summary['id']}")).json()
        assert detail["subject"] == SUBJECT
        assert "ご登録ありがとうございます。\nhttps://example.com/a" in detail["text"]
        assert '<a href="https://example.com/a">はじめる</a>' in detail["html"]
        assert "=?utf-8?" in detail["raw"]
        assert "X-Stepmail-Message-Id: " + stepmail_id in detail["raw"]
        assert ["Subject", SUBJECT] in detail["headers"]

        missing = await client.get("/api/messages/999999")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"

        index = await client.get("/")
        assert '<meta charset="utf-8">' in index.text
        assert "ようこそ、山田 花子さん &lt;はじめまして&gt;" in index.text
        page = await client.get(f"/messages/{summary['id']}")
        assert "<iframe sandbox=" in page.text
        assert "&lt;a href=&quot;https://example.com/a&quot;&gt;" in page.text
        assert (await client.get("/healthz")).json()["received_total"] >= 1


def test_store_dir_keeps_messages_across_restart_and_delete_clears():
    store = Path(tempfile.mkdtemp(prefix="stepmail-mail-"))
    catcher = CatcherProcess(free_port(), free_port(), store)
    try:
        catcher.start()
        _send(catcher.smtp_port, _japanese_mail("a@example.com", "msg-a"))
        assert [m["subject"] for m in catcher.messages()] == [SUBJECT]
        assert (store / "1.eml").is_file()
        catcher.restart()
        assert [m["id"] for m in catcher.messages()] == [1]
        _send(catcher.smtp_port, _japanese_mail("b@example.com", "msg-b"))
        assert [m["id"] for m in catcher.messages()] == [1, 2]
        catcher.clear()
        assert catcher.messages() == []
        assert not list(store.glob("*.eml"))
    finally:
        catcher.stop()
        catcher.stop()
        shutil.rmtree(store, ignore_errors=True)
    assert catcher.process.returncode == 0
