"""DKIM signing (RFC 6376, relaxed/relaxed) per sending domain, with ``cryptography``.

RSA-SHA256 with the domain's RSA key, and optionally a second signature with Ed25519
(RFC 8463). The signed headers include ``List-Unsubscribe`` and ``List-Unsubscribe-Post``
(bulk-sender rules). Signing is done here rather than with dkimpy because OpenSSL's RSA
is an order of magnitude faster than dkimpy's pure-Python path.
"""

import base64
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from stepmail_common.errors import PermanentError
from stepmail_sender import metrics

SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
_WSP_RUN = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_FROM_DOMAIN = re.compile(rb"@([A-Za-z0-9.-]+)>?\s*$")


class DkimKeyError(ValueError):
    """A DKIM key setting or file cannot be used."""


@dataclass(frozen=True, slots=True)
class DomainKey:
    """One signing key of a domain: RSA (rsa-sha256) or Ed25519 (ed25519-sha256)."""

    domain: str
    selector: str
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if isinstance(self.key, ed25519.Ed25519PrivateKey) else "rsa-sha256"


def load_keys(spec: str) -> list[DomainKey]:
    """``domain:selector:/path/key.pem`` entries separated by commas (PKCS#8 or PKCS#1 PEM)."""
    keys = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        parts = item.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise DkimKeyError("DKIM key entries are domain:selector:/path/key.pem")
        domain, selector, path = parts
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise DkimKeyError(
                f"DKIM key of {domain} cannot be read: {exc.__class__.__name__}"
            ) from exc
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 2048:
                raise DkimKeyError(f"DKIM RSA key of {domain} is shorter than 2048 bits")
        elif not isinstance(key, ed25519.Ed25519PrivateKey):
            raise DkimKeyError(f"DKIM key of {domain} is neither RSA nor Ed25519")
        keys.append(DomainKey(domain.lower(), selector, key))
    return keys


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded continuation lines) and the body."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        raise PermanentError("message has no header/body separator")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields, body


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfold, collapse whitespace, trim around the colon."""
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip(b" \t").lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: collapse whitespace, drop it at line ends, drop trailing empty lines.

    Each rewrite runs only when its pattern can match: a rendered body (base64 or
    quoted-printable) rarely has a tab, a double space or a space before a line end, and
    the substring checks are much cheaper than the regular expressions over ~10 KB.
    """
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    if b" \r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


class DkimSigner:
    """Signs each mail with the keys of its From domain; mails of other domains pass as is."""

    def __init__(
        self,
        keys: list[DomainKey],
        *,
        now: Callable[[], float] = time.time,
        headers: tuple[str, ...] = SIGNED_HEADERS,
    ) -> None:
        self._keys: dict[str, list[DomainKey]] = {}
        for key in keys:
            self._keys.setdefault(key.domain, []).append(key)
        # RSA first, so the Ed25519 signature (if any) sits on top, as RFC 8463 suggests.
        for domain_keys in self._keys.values():
            domain_keys.sort(key=lambda k: k.algorithm != "rsa-sha256")
        self._now = now
        self._headers = headers

    @property
    def domains(self) -> Mapping[str, list[DomainKey]]:
        return self._keys

    def __call__(self, message: bytes) -> bytes:
        fields, body = _split(message)
        by_name: dict[bytes, list[bytes]] = {}
        for field in fields:
            by_name.setdefault(field.partition(b":")[0].strip().lower(), []).append(field)
        from_fields = by_name.get(b"from")
        found = _FROM_DOMAIN.search(from_fields[-1]) if from_fields else None
        domain = found.group(1).decode().lower() if found else ""
        keys = self._keys.get(domain)
        if not keys:
            metrics.DKIM_UNSIGNED.inc()
            return message
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        # The last instance of each header is the one a reader sees (RFC 6376 5.4.2).
        names = [h for h in self._headers if h.encode() in by_name]
        signed = b"".join(relaxed_header(by_name[h.encode()][-1]) for h in names)
        stamp = int(self._now())
        added = []
        for key in keys:
            value = (
                f"v=1; a={key.algorithm}; c=relaxed/relaxed; d={key.domain}; s={key.selector};"
                f"\r\n\tt={stamp}; h={':'.join(names)};\r\n\tbh={body_hash};\r\n\tb="
            )
            data = signed + relaxed_header(b"DKIM-Signature: " + value.encode())[:-2]
            if isinstance(key.key, rsa.RSAPrivateKey):
                signature = key.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
            else:
                signature = key.key.sign(hashlib.sha256(data).digest())
            b64 = base64.b64encode(signature).decode()
            folded = "\r\n\t ".join(b64[i : i + 72] for i in range(0, len(b64), 72))
            added.append(f"DKIM-Signature: {value}{folded}\r\n".encode())
        return b"".join(reversed(added)) + message
