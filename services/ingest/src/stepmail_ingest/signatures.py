"""Webhook signatures: Standard Webhooks and Shopify, over the raw body, constant time."""

import base64
import binascii
import hashlib
import hmac
import secrets

from stepmail_ingest.errors import SignatureError

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def new_webhook_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def standard_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the decoded part)."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from None


def standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(standard_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_standard(
    secret: str,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance: int,
) -> None:
    """Check ``webhook-signature`` over ``id.timestamp.body``; raises ``SignatureError``."""
    if not msg_id or not timestamp or not signature:
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        sent = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp is not Unix seconds") from None
    if abs(now - sent) > tolerance:
        raise SignatureError("webhook-timestamp is outside the replay window")
    expected = standard_signature(secret, msg_id, timestamp, body).encode()
    for entry in signature.split():
        version, _, _value = entry.partition(",")
        # Entries of other versions (v1a, ...) are skipped, per the specification.
        if version == "v1" and hmac.compare_digest(entry.encode(), expected):
            return
    raise SignatureError("no webhook-signature entry matches")


def shopify_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify_shopify(secret: str, header: str | None, body: bytes) -> None:
    """Check ``X-Shopify-Hmac-Sha256`` (base64 HMAC-SHA256 of the raw body)."""
    if not header:
        raise SignatureError("X-Shopify-Hmac-Sha256 is required")
    if not hmac.compare_digest(header.strip().encode(), shopify_signature(secret, body).encode()):
        raise SignatureError("X-Shopify-Hmac-Sha256 does not match the body")
