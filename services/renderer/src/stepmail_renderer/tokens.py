"""Signing the tokens of one mail fast, byte-identical to ``stepmail_common.signing``.

A mail carries a dozen tokens (each link, the unsubscribe URL, the open pixel); the
HMAC key schedule is done once per key here and copied per token, and the mail's
reference is serialised once. The format is ``Signer``'s, so the tracker verifies these
tokens with it unchanged.

``OpenToken`` (``k: "o"``) is the open pixel's token; ``stepmail_common.tracking`` has no
open token yet, so it is defined here with the same ``MailRef`` fields as the others.
"""

import binascii
import hashlib
import html
from collections.abc import Mapping
from typing import Any

import orjson

from stepmail_common.errors import InvalidTokenError
from stepmail_common.signing import Signer
from stepmail_common.tracking import MailRef

_URL_SAFE = bytes.maketrans(b"+/", b"-_")
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


def _b64(raw: bytes) -> bytes:
    """Unpadded base64url, as ``stepmail_common.signing`` writes it."""
    return binascii.b2a_base64(raw, newline=False).translate(_URL_SAFE).rstrip(b"=")


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


class PrefixSigner:
    """Signs documents that all begin with one prefix, as ``TokenSigner.sign_json`` does.

    A mail's click tokens share the JSON of its reference. The base64 of the prefix's
    whole 3-octet groups is the same at the start of every token, and the HMAC's inner
    state after it too: both are computed once, and each token encodes and hashes only
    the rest.
    """

    __slots__ = ("_carry", "_head", "_inner", "_outer")

    def __init__(self, signer: "TokenSigner", prefix: bytes) -> None:
        whole = len(prefix) - len(prefix) % 3
        body_head = binascii.b2a_base64(prefix[:whole], newline=False).translate(_URL_SAFE)
        self._carry = prefix[whole:]
        self._head = signer._prefix + body_head
        self._inner = signer._inner.copy()
        self._inner.update(body_head)
        self._outer = signer._outer

    def sign(self, rest: bytes) -> str:
        """The token of the prefix followed by ``rest``."""
        tail = _b64(self._carry + rest)
        inner = self._inner.copy()
        inner.update(tail)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return (self._head + tail + b"." + _b64(outer.digest())).decode("ascii")


class TokenSigner:
    """Signs with the first key of ``keys``, as ``Signer`` does.

    HMAC-SHA256 (RFC 2104) from two SHA-256 states keyed once, the inner one already fed
    the ``<kid>.`` prefix; per token they are copied, which is what ``hmac.HMAC.copy``
    does behind several Python-level calls.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("a TokenSigner needs at least one key")
        kid, secret = next(iter(keys.items()))
        self._prefix = f"{kid}.".encode()
        # A token is the kid, base64url and dots: HTML escapes nothing in it unless the
        # kid holds such a character, so a link's attribute can take it as it is.
        self.html_safe = html.escape(kid) == kid
        block = hashlib.sha256().block_size
        key = hashlib.sha256(secret).digest() if len(secret) > block else secret
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(key.translate(_INNER_PAD) + self._prefix)
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))

    def with_prefix(self, prefix: bytes) -> PrefixSigner:
        """A signer for documents that begin with ``prefix``."""
        return PrefixSigner(self, prefix)

    def sign(self, payload: Mapping[str, Any]) -> str:
        return self.sign_json(orjson.dumps(payload))

    def sign_json(self, document: bytes) -> str:
        """The token of a payload already serialised as ``orjson.dumps`` would."""
        body = _b64(document)
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return (self._prefix + body + b"." + _b64(outer.digest())).decode("ascii")


def open_token(signer: TokenSigner, ref: dict[str, Any]) -> str:
    return signer.sign({"k": "o", **ref})


def decode_open_token(signer: Signer, token: str) -> MailRef:
    """The mail an open token names (for the tracker's ``/o/`` and the tests)."""
    payload = signer.verify(token)
    if payload.get("k") != "o":
        raise InvalidTokenError("not an open token")
    return MailRef._unpack(payload)
