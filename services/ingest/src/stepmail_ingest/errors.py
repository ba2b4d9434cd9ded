"""Ingest's own errors."""

from stepmail_common.errors import PermanentError


class SignatureError(PermanentError):
    """A webhook whose signature, timestamp or headers do not check out."""


class PayloadError(PermanentError):
    """A partner payload that lacks what stepmail needs; ``field`` names the culprit."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
