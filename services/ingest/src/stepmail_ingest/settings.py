"""Ingest's settings."""

from stepmail_common.settings import CommonSettings


class IngestSettings(CommonSettings):
    http_port: int = 8001
    db_schema: str = "ingest"
    # Created (hashed) at start-up when set, so a fresh platform has a working key.
    ingest_bootstrap_api_key: str | None = None
    ingest_max_body_bytes: int = 1_048_576
    ingest_max_batch: int = 1000
    # Token bucket per API key and per replica: N replicas admit up to N times this.
    ingest_rate_limit_per_second: float = 1000.0
    ingest_rate_limit_burst_seconds: float = 2.0
    # How long a replica trusts a looked-up API key; a revocation made on another
    # replica takes effect within this many seconds.
    ingest_api_key_cache_seconds: float = 10.0
    ingest_idempotency_hours: int = 48
    ingest_idempotency_cleanup_seconds: float = 600.0
    # Standard Webhooks replay window, either way.
    ingest_webhook_tolerance_seconds: int = 300
