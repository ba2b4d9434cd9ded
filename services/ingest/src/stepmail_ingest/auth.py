"""API keys: only their SHA-256 is stored; a key is ``sm_`` plus 32 random bytes."""

import hashlib
import secrets

from stepmail_common.problems import Problem
from stepmail_ingest.repository import ApiKey, IngestRepository

SCOPES = ("events:write", "contacts:write", "admin")


def new_api_key() -> str:
    return "sm_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    # The keys are long and random, so a fast hash is right (no dictionary to resist).
    return hashlib.sha256(key.encode()).digest()


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "Unauthorized",
        detail,
        type_="urn:stepmail:problem:unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="stepmail"'},
    )


async def authenticate(repo: IngestRepository, authorization: str | None, scope: str) -> ApiKey:
    """The key of an ``Authorization: Bearer <key>`` header, checked for ``scope``."""
    if not authorization:
        raise _unauthorized("Send the API key as 'Authorization: Bearer <key>'.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Send the API key as 'Authorization: Bearer <key>'.")
    key = await repo.api_key_by_hash(hash_api_key(token.strip()))
    if key is None:
        raise _unauthorized("The API key is unknown or revoked.")
    if scope not in key.scopes and "admin" not in key.scopes:
        raise Problem(403, "Forbidden", f"The API key lacks the '{scope}' scope.")
    return key
