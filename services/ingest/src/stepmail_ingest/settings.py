"""Ingest's settings."""

from stepmail_common.settings import CommonSettings


class IngestSettings(CommonSettings):
    http_port: int = 8001
    db_schema: str = "ingest"
    # Created (hashed) at start-up when set, so a fresh platform has a working key.
    ingest_bootstrap_api_key: str | None = None
    ingest_max_body_bytes: int = 1_048_576
