"""Signing the tokens of one mail fast, byte-identical to ``stepmail_common.signing``.

A mail carries a dozen tokens (each link, the unsubscribe URL, the open pixel); the
HMAC key schedule is done once per key here and copied per token, and the mail's
reference is serialised once. The format is ``Signer``'s, so the tracker verifies these
tokens with it unchanged.

``OpenToken`` (``k: "o"``) is the open pixel's token; ``stepmail_common.tracking`` has no
open token yet, so it is defined here with the same ``MailRef`` fields as the others.
"""

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

from stepmail_common.errors import InvalidTokenError
from stepmail_common.signing import Signer
from stepmail_common.tracking import MailRef


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def packed(ref: MailRef) -> dict[str, Any]:
    """A ``MailRef`` in the short keys every token uses."""
    return {
        "m": ref.message_id,
        "c": ref.contact_id,
        "s": ref.scenario_id,
        "v": ref.scenario_version,
        "t": ref.step_id,
        "x": ref.step_index,
    }


class TokenSigner:
    """Signs with the first key of ``keys``, as ``Signer`` does."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("a TokenSigner needs at least one key")
        kid, secret = next(iter(keys.items()))
        self._prefix = f"{kid}."
        self._mac = hmac.new(secret, self._prefix.encode(), hashlib.sha256)

    def sign(self, payload: Mapping[str, Any]) -> str:
        body = _b64(orjson.dumps(payload))
        mac = self._mac.copy()
        mac.update(body.encode("ascii"))
        return f"{self._prefix}{body}.{_b64(mac.digest())}"


def open_token(signer: TokenSigner, ref: dict[str, Any]) -> str:
    return signer.sign({"k": "o", **ref})


def decode_open_token(signer: Signer, token: str) -> MailRef:
    """The mail an open token names (for the tracker's ``/o/`` and the tests)."""
    payload = signer.verify(token)
    if payload.get("k") != "o":
        raise InvalidTokenError("not an open token")
    return MailRef._unpack(payload)
