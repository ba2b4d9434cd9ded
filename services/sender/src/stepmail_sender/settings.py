"""The sender's settings."""

from typing import Literal

from pydantic import model_validator

from stepmail_common.settings import CommonSettings
from stepmail_sender.throttle import parse_domain_limits, parse_limit

AmbiguousPolicy = Literal["hold", "resend"]


class SenderSettings(CommonSettings):
    http_port: int = 8004
    db_schema: str = "sender"

    # smtp (SMTP_URL through a pool of persistent connections) or ses (Amazon SES v2 API).
    sender_transport: Literal["smtp", "ses"] = "smtp"
    # smtp://host:port, smtps://host:port (implicit TLS), ?starttls=true, user:password@ for AUTH.
    smtp_url: str = "smtp://127.0.0.1:1025"
    smtp_timeout_seconds: float = 30.0
    smtp_pool_size: int = 8

    ses_region: str = "ap-northeast-1"
    # Defaults to https://email.<region>.amazonaws.com; set for a stand-in or a VPC endpoint.
    ses_endpoint: str | None = None
    ses_access_key_id: str = ""
    ses_secret_access_key: str = ""
    ses_configuration_set: str | None = None

    # Mails claimed and handed over at once by one process: also the most a SIGKILL can
    # leave ambiguous.
    sender_window: int = 8
    sender_batch_max: int = 500

    # Deferred mails (4xx, connection failures): exponential back-off with jitter.
    sender_retry_base_seconds: float = 60.0
    sender_retry_max_seconds: float = 3600.0
    sender_retry_max_age_seconds: float = 172800.0
    sender_retry_interval_seconds: float = 1.0

    # docomo.ne.jp=50/s:5,ezweb.ne.jp=30/s (rate across all replicas, connections per process).
    sender_domain_limits: str = ""
    # The provider account's sending rate, e.g. 14/s (empty: unlimited).
    sender_account_limit: str = ""

    # Key of the HMAC under which suppressed addresses are stored (never the address).
    sender_suppression_key: str = "dev-suppression-key"

    # DKIM: domain:selector:/path/key.pem entries, comma-separated (RSA-2048 PEM);
    # SENDER_DKIM_ED25519_KEYS adds an Ed25519 signature. SENDER_DKIM_SIGN=false leaves
    # signing to the MTA or ESP.
    sender_dkim_sign: bool = True
    sender_dkim_keys: str = ""
    sender_dkim_ed25519_keys: str = ""

    # Relaying through SendGrid's SMTP: an X-SMTPAPI header whose unique_args bring each
    # mail's message and contact id back on SendGrid's Event Webhook (bounces, complaints).
    sender_sendgrid_unique_args: bool = False

    # What to do with a mail whose sender died between handing it over and the answer.
    sender_ambiguous_policy: AmbiguousPolicy = "hold"
    # How often rows left in ``sending`` by dead processes are looked for.
    sender_recovery_interval_seconds: float = 2.0
    # How long a redelivered message waits for a live owner to record its outcome.
    sender_owner_wait_seconds: float = 30.0
    sender_outbox_interval_seconds: float = 0.5

    @model_validator(mode="after")
    def _sane_values(self) -> "SenderSettings":
        if self.smtp_timeout_seconds <= 0:
            raise ValueError("SMTP_TIMEOUT_SECONDS must be positive")
        if self.smtp_pool_size < 1 or self.sender_window < 1 or self.sender_batch_max < 1:
            raise ValueError("SMTP_POOL_SIZE, SENDER_WINDOW and SENDER_BATCH_MAX must be >= 1")
        if self.sender_retry_base_seconds <= 0 or self.sender_retry_max_age_seconds <= 0:
            raise ValueError("SENDER_RETRY_* must be positive")
        parse_domain_limits(self.sender_domain_limits)
        if self.sender_account_limit:
            parse_limit(self.sender_account_limit)
        self.refuse_placeholder("sender_suppression_key", self.sender_suppression_key)
        if self.sender_transport == "ses" and not (
            self.ses_access_key_id and self.ses_secret_access_key
        ):
            raise ValueError(
                "SENDER_TRANSPORT=ses needs SES_ACCESS_KEY_ID and SES_SECRET_ACCESS_KEY"
            )
        return self
