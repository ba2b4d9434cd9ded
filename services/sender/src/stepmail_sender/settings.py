"""The sender's settings."""

from typing import Literal

from pydantic import model_validator

from stepmail_common.settings import CommonSettings

AmbiguousPolicy = Literal["hold", "resend"]


class SenderSettings(CommonSettings):
    http_port: int = 8004
    db_schema: str = "sender"

    # smtp://host:port, smtps://host:port (implicit TLS), ?starttls=true, user:password@ for AUTH.
    smtp_url: str = "smtp://127.0.0.1:1025"
    smtp_timeout_seconds: float = 30.0
    # Quick in-process retries of a 4xx reply or a connection failure before ``failed``.
    smtp_retries: int = 3
    smtp_retry_backoff_seconds: float = 0.2

    # What to do with a mail whose sender died between handing it over and the answer.
    sender_ambiguous_policy: AmbiguousPolicy = "hold"
    # How often rows left in ``sending`` by dead processes are looked for.
    sender_recovery_interval_seconds: float = 2.0
    # How long a redelivered message waits for a live owner to record its outcome.
    sender_owner_wait_seconds: float = 30.0
    sender_outbox_interval_seconds: float = 0.5

    @model_validator(mode="after")
    def _sane_numbers(self) -> "SenderSettings":
        if self.smtp_retries < 0:
            raise ValueError("SMTP_RETRIES must not be negative")
        if self.smtp_timeout_seconds <= 0:
            raise ValueError("SMTP_TIMEOUT_SECONDS must be positive")
        return self
