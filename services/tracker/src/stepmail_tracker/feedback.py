"""ESP feedback webhooks: Amazon SES via SNS and SendGrid's Event Webhook.

Both are verified before anything is read (SNS: the message signature against the
certificate at an ``https://sns.<region>.amazonaws.com`` URL; SendGrid: ECDSA over
timestamp + raw body), then mapped to ``Feedback`` items the service publishes.
"""

import base64
import binascii
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from stepmail_tracker.service import Feedback

log = logging.getLogger(__name__)

MESSAGE_ID_HEADER = "x-stepmail-message-id"
CONTACT_ID_HEADER = "x-stepmail-contact-id"

CertFetcher = Callable[[str], Awaitable[bytes]]


class FeedbackRefused(Exception):
    """A webhook request that is not authentic or not readable; ``reason`` is bounded."""

    def __init__(self, reason: str, detail: str, status: int = 403) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status


# --- Amazon SNS -------------------------------------------------------------------------

_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SUBSCRIPTION_KEYS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


def is_sns_url(url: str) -> bool:
    """An https URL on an ``sns.<region>.amazonaws.com`` host (no port, no credentials)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and parts.port is None
        and parts.username is None
        and _SNS_HOST.match(parts.hostname or "") is not None
    )


def sns_string_to_sign(message: dict[str, Any]) -> bytes:
    """The canonical ``key\\nvalue\\n`` text SNS signs, by message type."""
    keys = _NOTIFICATION_KEYS if message.get("Type") == "Notification" else _SUBSCRIPTION_KEYS
    out = []
    for key in keys:
        value = message.get(key)
        if value is None:
            if key == "Subject":
                continue
            raise FeedbackRefused("malformed", f"SNS message lacks {key}", 400)
        out.append(f"{key}\n{value}\n")
    return "".join(out).encode()


class SnsVerifier:
    """Checks SNS signatures; certificates are fetched once per URL and cached."""

    def __init__(self, fetch: CertFetcher, cache_size: int = 32) -> None:
        self._fetch = fetch
        self._cache: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._cache_size = cache_size

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        key = self._cache.get(url)
        if key is not None:
            self._cache.move_to_end(url)
            return key
        try:
            cert = x509.load_pem_x509_certificate(await self._fetch(url))
        except ValueError:
            raise FeedbackRefused("bad-certificate", "signing certificate unreadable") from None
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise FeedbackRefused("bad-certificate", "signing certificate is not RSA")
        self._cache[url] = public
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return public

    async def verify(self, message: dict[str, Any]) -> None:
        version = message.get("SignatureVersion")
        algorithm: hashes.HashAlgorithm
        if version == "1":
            algorithm = hashes.SHA1()  # noqa: S303 - SNS SignatureVersion 1 is SHA1withRSA
        elif version == "2":
            algorithm = hashes.SHA256()
        else:
            raise FeedbackRefused("bad-signature", "unknown SignatureVersion")
        url = message.get("SigningCertURL")
        if not isinstance(url, str) or not is_sns_url(url):
            raise FeedbackRefused("bad-certificate-url", "SigningCertURL is not an SNS URL")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except binascii.Error:
            raise FeedbackRefused("bad-signature", "Signature is not base64") from None
        key = await self._key(url)
        try:
            key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise FeedbackRefused("bad-signature", "SNS signature does not verify") from None


def _headers(mail: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    headers = mail.get("headers")
    if isinstance(headers, list):
        for header in headers:
            if isinstance(header, dict) and isinstance(header.get("value"), str):
                found.setdefault(str(header.get("name", "")).lower(), header["value"])
    return found


def _status_code(diagnostic: str | None) -> str | None:
    if not diagnostic:
        return None
    match = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", diagnostic)
    return match.group(1) if match else None


def ses_feedback(notification: dict[str, Any]) -> list[Feedback]:
    """Bounces and complaints in an SES notification (or event-publishing) message."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") if isinstance(notification.get("mail"), dict) else {}
    assert isinstance(mail, dict)
    headers = _headers(mail)
    message_id = headers.get(MESSAGE_ID_HEADER)
    contact_id = headers.get(CONTACT_ID_HEADER)
    items: list[Feedback] = []
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        hard = bounce.get("bounceType") == "Permanent"
        feedback_id = str(bounce.get("feedbackId") or mail.get("messageId") or "")
        for recipient in bounce.get("bouncedRecipients") or []:
            address = recipient.get("emailAddress")
            if not isinstance(address, str):
                continue
            diagnostic = recipient.get("diagnosticCode")
            items.append(
                Feedback(
                    kind="bounced",
                    source="ses",
                    recipient=address,
                    feedback_id=feedback_id,
                    message_id=message_id,
                    contact_id=contact_id,
                    bounce="hard" if hard else "soft",
                    dsn=recipient.get("status") or _status_code(diagnostic),
                    diagnostic=diagnostic,
                )
            )
    elif kind == "Complaint":
        complaint = notification.get("complaint") or {}
        feedback_id = str(complaint.get("feedbackId") or mail.get("messageId") or "")
        # "not-spam" feedback is the opposite of a complaint.
        if complaint.get("complaintFeedbackType") != "not-spam":
            for recipient in complaint.get("complainedRecipients") or []:
                address = recipient.get("emailAddress")
                if isinstance(address, str):
                    items.append(
                        Feedback(
                            kind="complained",
                            source="ses",
                            recipient=address,
                            feedback_id=feedback_id,
                            message_id=message_id,
                            contact_id=contact_id,
                        )
                    )
    return items


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FeedbackRefused("malformed", "body is not JSON", 400) from None


def parse_sns(body: bytes) -> dict[str, Any]:
    message = parse_json(body)
    if not isinstance(message, dict) or not isinstance(message.get("Type"), str):
        raise FeedbackRefused("malformed", "body is not an SNS message", 400)
    return message


def ses_notification(message: dict[str, Any]) -> dict[str, Any]:
    try:
        notification = orjson.loads(message["Message"])
    except (orjson.JSONDecodeError, TypeError):
        raise FeedbackRefused("malformed", "Message is not an SES notification", 400) from None
    if not isinstance(notification, dict):
        raise FeedbackRefused("malformed", "Message is not an SES notification", 400)
    return notification


# --- SendGrid ---------------------------------------------------------------------------


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey | None:
    """The verification key as SendGrid shows it (base64 DER), or PEM; ``None`` if empty."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
    else:
        key = serialization.load_der_public_key(base64.b64decode(text))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("TRACKER_SENDGRID_PUBLIC_KEY is not an ECDSA public key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey | None,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: datetime,
    max_age: int,
) -> None:
    if key is None:
        raise FeedbackRefused("not-configured", "SendGrid verification key not configured")
    if not signature or not timestamp:
        raise FeedbackRefused("missing-signature", "signature or timestamp header missing", 401)
    try:
        sent = int(timestamp)
    except ValueError:
        raise FeedbackRefused("bad-timestamp", "timestamp is not Unix seconds", 401) from None
    if max_age and abs(now.timestamp() - sent) > max_age:
        raise FeedbackRefused("bad-timestamp", "timestamp is too far from now", 401)
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, InvalidSignature):
        raise FeedbackRefused("bad-signature", "SendGrid signature does not verify") from None


_HARD_DROPS = {"bounced address", "invalid", "invalid email address"}


def sendgrid_feedback(events: Any) -> list[Feedback]:
    """Bounces and complaints in a SendGrid Event Webhook batch; other events are skipped."""
    if not isinstance(events, list):
        raise FeedbackRefused("malformed", "body is not a JSON array of events", 400)
    items: list[Feedback] = []
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("email"), str):
            continue
        kind = event.get("event")
        reason = str(event.get("reason") or "")
        common = {
            "source": "sendgrid",
            "recipient": event["email"],
            "feedback_id": str(event.get("sg_event_id") or event.get("sg_message_id") or ""),
            "message_id": event.get("stepmail_message_id") or None,
            "contact_id": event.get("stepmail_contact_id") or None,
        }
        if kind == "bounce":
            # SendGrid's "blocked" is a temporary refusal; "bounce" a permanent one.
            hard = event.get("type", "bounce") != "blocked"
            items.append(
                Feedback(
                    kind="bounced",
                    bounce="hard" if hard else "soft",
                    dsn=str(event.get("status") or "") or None,
                    diagnostic=reason or None,
                    **common,
                )
            )
        elif kind == "dropped":
            if reason.lower() == "spam reporting address":
                items.append(Feedback(kind="complained", **common))
            else:
                hard = reason.lower() in _HARD_DROPS
                items.append(
                    Feedback(
                        kind="bounced",
                        bounce="hard" if hard else "soft",
                        dsn=str(event.get("status") or "") or None,
                        diagnostic=reason or None,
                        **common,
                    )
                )
        elif kind == "spamreport":
            items.append(Feedback(kind="complained", **common))
    return items


def sendgrid_unsubscribes(events: Any) -> list[tuple[str, str]]:
    """(message id, contact id) of SendGrid ``unsubscribe``/``group_unsubscribe`` events
    that carry stepmail's custom arguments; without them the contact is unknown."""
    found: list[tuple[str, str]] = []
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict):
            continue
        if event.get("event") in ("unsubscribe", "group_unsubscribe"):
            message_id = event.get("stepmail_message_id")
            contact_id = event.get("stepmail_contact_id")
            if isinstance(message_id, str) and isinstance(contact_id, str):
                found.append((message_id, contact_id))
    return found
