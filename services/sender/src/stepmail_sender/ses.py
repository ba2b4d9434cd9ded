"""Amazon SES v2 ``SendEmail`` with raw content, signed with AWS Signature Version 4.

The request is ``POST /v2/email/outbound-emails`` with a JSON body carrying the
envelope sender, the recipient and the whole MIME message (base64) under
``Content.Raw.Data``. Its answer maps onto the same verdicts as SMTP: 200 accepted (the
ledger keeps SES's ``MessageId``, which its bounce and complaint notifications name);
429, 5xx and the account-level refusals (sending paused, account suspended, a quota
exceeded, credentials refused with 401/403: the mail itself is fine, and an operator
can fix the account before the mail's maximum age) retried later; other 4xx refused
for good; a request whose answer was lost after it was sent is of unknown outcome,
exactly like a broken SMTP DATA.
"""

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from stepmail_sender.smtp import Reply, Verdict, redact

if TYPE_CHECKING:
    from stepmail_sender.settings import SenderSettings

PATH = "/v2/email/outbound-emails"
SERVICE = "ses"
# 4xx error types that say nothing against the mail: the account cannot send right now.
_ACCOUNT_LEVEL = frozenset(
    {
        "TooManyRequestsException",
        "LimitExceededException",
        "SendingPausedException",
        "AccountSuspendedException",
        "ThrottlingException",
    }
)


def error_type(response: httpx.Response) -> str:
    """The AWS error type of a refused request (``x-amzn-ErrorType``, else the body's)."""
    header = str(response.headers.get("x-amzn-errortype", ""))
    if header:
        return header.split(":", 1)[0]
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    found = body.get("__type") or body.get("code") or body.get("Code") or ""
    return str(found).rsplit("#", 1)[-1]


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(
    *,
    method: str,
    url: str,
    body: bytes,
    region: str,
    access_key: str,
    secret_key: str,
    at: datetime,
    service: str = SERVICE,
) -> dict[str, str]:
    """The ``Authorization``, ``X-Amz-Date`` and hashed-payload headers of one request."""
    parts = urlsplit(url)
    amz_date = at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {
        "content-type": "application/json",
        "host": parts.netloc,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
    }
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            parts.query,
            "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), service), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        **{k: v for k, v in headers.items() if k != "host"},
        "authorization": (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed},"
            f" Signature={signature}"
        ),
    }


class SesTransport:
    """Sends each mail with one SES v2 API call over a pooled HTTP/1.1 client."""

    def __init__(
        self,
        *,
        endpoint: str,
        region: str,
        access_key: str,
        secret_key: str,
        configuration_set: str | None = None,
        timeout: float = 30.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._url = endpoint.rstrip("/") + PATH
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._configuration_set = configuration_set
        self._now = now
        self._client = httpx.AsyncClient(timeout=timeout)

    @classmethod
    def from_settings(cls, settings: "SenderSettings") -> "SesTransport":
        return cls(
            endpoint=settings.ses_endpoint or f"https://email.{settings.ses_region}.amazonaws.com",
            region=settings.ses_region,
            access_key=settings.ses_access_key_id,
            secret_key=settings.ses_secret_access_key,
            configuration_set=settings.ses_configuration_set,
            timeout=settings.smtp_timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"SesTransport(url={self._url!r}, region={self._region!r})"

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply:
        doc: dict[str, object] = {
            "FromEmailAddress": mail_from,
            "Destination": {"ToAddresses": [rcpt_to]},
            "Content": {"Raw": {"Data": base64.b64encode(message).decode()}},
        }
        if self._configuration_set:
            doc["ConfigurationSetName"] = self._configuration_set
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers = sigv4_headers(
            method="POST",
            url=self._url,
            body=body,
            region=self._region,
            access_key=self._access_key,
            secret_key=self._secret_key,
            at=self._now(),
        )
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return Reply(Verdict.CONNECTION, None, f"{exc.__class__.__name__}")
        except httpx.HTTPError as exc:
            # The request may have reached SES: nobody can tell any more.
            return Reply(Verdict.UNKNOWN, None, f"{exc.__class__.__name__}")
        status = response.status_code
        if status == 200:
            try:
                message_id = str(response.json().get("MessageId", ""))
            except (ValueError, AttributeError):
                message_id = ""
            return Reply(Verdict.ACCEPTED, None, redact(f"SES 200 MessageId {message_id}"))
        kind = error_type(response)
        text = redact(f"SES {status} {kind} {response.text}".replace("  ", " "))
        if status in (401, 403, 429) or status >= 500 or kind in _ACCOUNT_LEVEL:
            return Reply(Verdict.TRANSIENT, None, text)
        return Reply(Verdict.PERMANENT, None, text)

    async def close(self) -> None:
        await self._client.aclose()
