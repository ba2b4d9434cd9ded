"""The SES v2 transport against a local stand-in that speaks the documented ``SendEmail`` shape.

The stand-in (FastAPI under uvicorn on a free port) checks the request the way SES does:
``POST /v2/email/outbound-emails`` with a JSON body whose ``Content.Raw.Data`` is the
base64 MIME, and an ``Authorization`` header it recomputes with Signature Version 4 from
the request it received (an implementation of its own, checked against the signing-key
example of the AWS documentation). Answers are scripted per recipient; the ledger on a
real Postgres shows what each becomes.
"""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from stepmail_common.clock import SystemClock
from stepmail_devstack.processes import free_port
from stepmail_sender.delivery import Deliverer, RetryPolicy
from stepmail_sender.ledger import Ledger
from stepmail_sender.owners import OwnerLease
from stepmail_sender.ses import SesTransport
from tests.integration.sender.conftest import EVENTS_TOPIC, SCHEMA, rendered

pytestmark = pytest.mark.integration

REGION = "ap-northeast-1"
ACCESS_KEY = "AKIDEXAMPLESTEPMAIL"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SES_MESSAGE_ID = "0106018f4d2c9a3b-5e1f7c2a-1b4d-4e8f-9a0b-3c2d1e0f9a8b-000000"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<scope>[^,]+), ?"
    r"SignedHeaders=(?P<signed>[^,]+), ?Signature=(?P<signature>[0-9a-f]{64})$"
)


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def test_the_verifier_derives_the_documented_signing_key():
    # The worked example of the AWS Signature Version 4 documentation.
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def verify_sigv4(method: str, path: str, query: str, headers: Any, body: bytes) -> str | None:
    """Why the request's signature is wrong, or ``None`` when it is right."""
    found = _AUTH.match(headers.get("authorization", ""))
    if found is None:
        return "malformed Authorization"
    if found["key"] != ACCESS_KEY:
        return "unknown access key"
    day, region, service, terminal = found["scope"].split("/")
    amz_date = headers.get("x-amz-date", "")
    if (region, service, terminal) != (REGION, "ses", "aws4_request") or amz_date[:8] != day:
        return "wrong credential scope"
    sent_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if abs((datetime.now(UTC) - sent_at).total_seconds()) > 300:
        return "request time too skewed"
    signed = found["signed"].split(";")
    if not {"host", "x-amz-date"} <= set(signed) or signed != sorted(signed):
        return "host and x-amz-date must be signed, names sorted"
    payload_hash = hashlib.sha256(body).hexdigest()
    if headers.get("x-amz-content-sha256", payload_hash) != payload_hash:
        return "payload hash mismatch"
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed
    )
    canonical = "\n".join([method, path, query, canonical_headers, ";".join(signed), payload_hash])
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            found["scope"],
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    expected = hmac.new(
        signing_key(SECRET_KEY, day, region, service), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, found["signature"]):
        return "signature does not match"
    return None


@dataclass
class StandIn:
    """What the stand-in saw: accepted raw messages and the refusals it gave."""

    url: str = ""
    raw: dict[str, bytes] = field(default_factory=dict)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)


def _error(status: int, kind: str, message: str) -> Response:
    return Response(
        json.dumps({"message": message}),
        status_code=status,
        media_type="application/json",
        headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/"},
    )


def stand_in_app(seen: StandIn) -> FastAPI:
    app = FastAPI()

    @app.post("/v2/email/outbound-emails")
    async def send_email(request: Request) -> Response:
        body = await request.body()
        problem = verify_sigv4(
            request.method, request.url.path, request.url.query, request.headers, body
        )
        if problem is not None:
            seen.refusals.append(problem)
            return _error(403, "InvalidSignatureException", problem)
        if not request.headers.get("content-type", "").startswith("application/json"):
            return _error(400, "BadRequestException", "JSON expected")
        doc = json.loads(body)
        seen.bodies.append(doc)
        raw = base64.b64decode(doc["Content"]["Raw"]["Data"], validate=True)
        rcpt = doc["Destination"]["ToAddresses"][0]
        local = rcpt.split("@")[0]
        if local == "slow":
            await asyncio.sleep(1.5)
        if local == "throttled":
            return _error(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
        if local == "busy":
            return _error(503, "ServiceUnavailable", "Service unavailable")
        if local == "paused":
            return _error(400, "SendingPausedException", "Sending is paused for this account.")
        if local == "rejected":
            return _error(400, "MessageRejected", f"Email address is not verified: {rcpt}")
        seen.raw[rcpt] = raw
        return Response(json.dumps({"MessageId": SES_MESSAGE_ID}), media_type="application/json")

    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@pytest.fixture
async def ses_stand_in() -> AsyncIterator[StandIn]:
    seen = StandIn()
    port = free_port()
    server = _Server(
        uvicorn.Config(
            stand_in_app(seen),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=3,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the stand-in did not start"
        await asyncio.sleep(0.01)
    seen.url = f"http://127.0.0.1:{port}"
    try:
        yield seen
    finally:
        server.should_exit = True
        await task


async def deliver_all(
    database_url: str, pool: Any, url: str, secret: str, mails: dict[str, str]
) -> dict[str, Any]:
    lease = OwnerLease(database_url, SCHEMA)
    await lease.start()
    transport = SesTransport(
        endpoint=url,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=secret,
        configuration_set="stepmail-marketing",
        timeout=0.5,
    )
    ledger = Ledger(pool, EVENTS_TOPIC)
    try:
        deliverer = Deliverer(
            ledger,
            transport,
            SystemClock(),
            owner=lease.owner,
            policy="hold",
            retry=RetryPolicy(base=600, cap=3600, max_age=86400),
        )
        await deliverer.handle_many(
            [rendered(mid, rcpt_to=rcpt, contact_id=f"c-{mid}") for mid, rcpt in mails.items()]
        )
        rows = {mid: await ledger.get(mid) for mid in mails}
    finally:
        await transport.close()
        await lease.close()
    return rows


async def test_ses_answers_map_onto_the_ledger(database_url, sender_pool, ses_stand_in):
    mails = {
        "ses-ok": "taro@example.jp",
        "ses-429": "throttled@example.jp",
        "ses-503": "busy@example.jp",
        "ses-paused": "paused@example.jp",
        "ses-rejected": "rejected@example.jp",
        "ses-timeout": "slow@example.jp",
    }
    rows = await deliver_all(database_url, sender_pool, ses_stand_in.url, SECRET_KEY, mails)

    assert ses_stand_in.refusals == []
    assert len(ses_stand_in.bodies) == len(mails)
    for body in ses_stand_in.bodies:
        assert set(body) == {"FromEmailAddress", "Destination", "Content", "ConfigurationSetName"}
        assert body["FromEmailAddress"] == "news@example.com"
        assert body["ConfigurationSetName"] == "stepmail-marketing"
        assert list(body["Content"]) == ["Raw"]
    # The whole MIME arrives byte for byte, CRLF and all.
    raw = ses_stand_in.raw["taro@example.jp"]
    assert b"X-Stepmail-Message-Id: ses-ok\r\n" in raw
    assert b"\r\n.leading dot survives\r\n" in raw

    ok = rows["ses-ok"]
    assert ok.state == "sent"
    assert ok.smtp_response == f"SES 200 MessageId {SES_MESSAGE_ID}"
    for retried in ("ses-429", "ses-503", "ses-paused"):
        assert rows[retried].state == "deferred", retried
        assert rows[retried].next_attempt_at is not None
    assert rows["ses-429"].smtp_response.startswith("SES 429 TooManyRequestsException")
    rejected = rows["ses-rejected"]
    assert rejected.state == "failed"
    assert rejected.smtp_response.startswith("SES 400 MessageRejected")
    assert "rejected@example.jp" not in rejected.smtp_response, "addresses are redacted"
    # The request reached SES but its answer never came back: nobody knows; held.
    timeout = rows["ses-timeout"]
    assert (timeout.state, timeout.policy) == ("ambiguous", "hold")


async def test_a_wrong_secret_is_refused_by_the_verifier_and_retried(
    database_url, sender_pool, ses_stand_in
):
    rows = await deliver_all(
        database_url, sender_pool, ses_stand_in.url, "not-the-secret", {"ses-bad": "a@example.jp"}
    )
    assert ses_stand_in.refusals == ["signature does not match"]
    assert ses_stand_in.raw == {}
    # Credentials are the account's problem, not the mail's: it waits for a fix.
    assert rows["ses-bad"].state == "deferred"
    assert rows["ses-bad"].smtp_response.startswith("SES 403 InvalidSignatureException")
