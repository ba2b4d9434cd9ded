"""Signed, URL-safe tokens (HMAC-SHA256) with key rotation.

A token is ``<kid>.<base64url(payload json)>.<base64url(mac)>``. The first key of
``SIGNING_KEYS`` signs; every listed key verifies, so a key can be rotated in by
putting the new one first and retired later.
"""

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

from stepmail_common.errors import InvalidTokenError


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_keys(spec: str) -> dict[str, bytes]:
    """Parse ``kid:secret[,kid:secret...]``; order is kept, the first key signs."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kid, sep, secret = item.partition(":")
        if not sep or not kid or not secret or "." in kid:
            raise ValueError("SIGNING_KEYS must be 'kid:secret[,kid:secret...]'")
        if len(secret) < 16:
            raise ValueError(f"signing key {kid!r} is shorter than 16 characters")
        keys[kid] = secret.encode()
    if not keys:
        raise ValueError("SIGNING_KEYS holds no key")
    return keys


class Signer:
    """Signs and verifies payloads with a list of keys, the first one current."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._keys = dict(keys)
        self._current = next(iter(self._keys))
        # Keyed HMAC states, copied per token: the key schedule is computed once per key.
        self._hmacs = {
            kid: hmac.new(key, digestmod=hashlib.sha256) for kid, key in self._keys.items()
        }

    @classmethod
    def from_spec(cls, spec: str) -> "Signer":
        return cls(parse_keys(spec))

    def _mac(self, kid: str, body: str) -> bytes:
        mac = self._hmacs[kid].copy()
        mac.update(f"{kid}.{body}".encode())
        return mac.digest()

    def sign(self, payload: Mapping[str, Any]) -> str:
        body = _b64encode(orjson.dumps(payload))
        return f"{self._current}.{body}.{_b64encode(self._mac(self._current, body))}"

    def verify(self, token: str) -> dict[str, Any]:
        try:
            kid, body, mac = token.split(".")
        except ValueError:
            raise InvalidTokenError("malformed token") from None
        if kid not in self._keys:
            raise InvalidTokenError("unknown key")
        try:
            given = _b64decode(mac)
        except ValueError:
            raise InvalidTokenError("malformed signature") from None
        if not hmac.compare_digest(given, self._mac(kid, body)):
            raise InvalidTokenError("bad signature")
        try:
            payload = orjson.loads(_b64decode(body))
        except ValueError:
            raise InvalidTokenError("malformed payload") from None
        if not isinstance(payload, dict):
            raise InvalidTokenError("payload is not an object")
        return payload


def standard_webhook_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` + base64)."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def standard_webhook_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of a Standard Webhooks message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
