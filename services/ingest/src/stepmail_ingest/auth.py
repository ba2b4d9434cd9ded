"""API keys: only their SHA-256 is stored; a key is ``sm_`` plus 32 random bytes.

Looked-up keys are cached briefly per replica (``INGEST_API_KEY_CACHE_SECONDS``), so a
busy sender costs no database round trip per request; a revocation drops the key from
the cache of the replica that made it at once, and from the others within that time.
"""

import base64
import binascii
import hashlib
import secrets
import time
from collections.abc import Callable

from stepmail_common.problems import Problem
from stepmail_ingest.repository import ApiKey, IngestRepository

SCOPES = ("events:write", "contacts:write", "admin")


def new_api_key() -> str:
    return "sm_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    # The keys are long and random, so a fast hash is right (no dictionary to resist).
    return hashlib.sha256(key.encode()).digest()


def unauthorized(detail: str, scheme: str = "Bearer") -> Problem:
    return Problem(
        401,
        "Unauthorized",
        detail,
        type_="urn:stepmail:problem:unauthorized",
        headers={"WWW-Authenticate": f'{scheme} realm="stepmail"'},
    )


def bearer_token(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Send the API key as 'Authorization: Bearer <key>'.")
    return token.strip()


def basic_username(authorization: str | None) -> str:
    """Segment's way: HTTP Basic with the write key as user name and an empty password."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise unauthorized("Send the write key as HTTP Basic user name.", "Basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise unauthorized("The Basic credentials are not valid base64.", "Basic") from None
    username = decoded.partition(":")[0]
    if not username:
        raise unauthorized("The Basic user name (the write key) is empty.", "Basic")
    return username


class ApiKeys:
    """Authenticates keys against the repository through a short per-replica cache."""

    def __init__(
        self,
        repo: IngestRepository,
        ttl: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repo
        self._ttl = ttl
        self._monotonic = monotonic
        self._cache: dict[bytes, tuple[float, ApiKey | None]] = {}

    async def lookup(self, token: str) -> ApiKey | None:
        digest = hash_api_key(token)
        now = self._monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self._repo.api_key_by_hash(digest)
        if len(self._cache) > 10_000:
            self._cache.clear()
        # Unknown keys are cached too (shorter), so a flood of bad keys spares the database.
        self._cache[digest] = (now + (self._ttl if key else min(self._ttl, 1.0)), key)
        return key

    def forget(self, key_hash: bytes) -> None:
        self._cache.pop(key_hash, None)

    async def authenticate(self, token: str, scope: str, scheme: str = "Bearer") -> ApiKey:
        key = await self.lookup(token)
        if key is None:
            raise unauthorized("The API key is unknown or revoked.", scheme)
        if scope not in key.scopes and "admin" not in key.scopes:
            raise Problem(
                403,
                "Forbidden",
                f"The API key lacks the '{scope}' scope.",
                type_="urn:stepmail:problem:forbidden",
            )
        return key
