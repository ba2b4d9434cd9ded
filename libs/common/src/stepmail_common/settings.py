"""Settings shared by every service, read from environment variables (12-factor)."""

from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stepmail_common.kafka import (
    COMPRESSION,
    FEEDBACK_FETCH_MAX_WAIT_MS,
    FETCH_MAX_WAIT_MS,
    Compression,
)

Environment = Literal["development", "test", "production"]


class CommonSettings(BaseSettings):
    """What every service needs; each service subclasses it with its own fields.

    Built once in ``main`` and passed down: no business code reads the environment.
    """

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    stepmail_env: Environment = "development"
    log_level: str = "INFO"
    http_host: str = "127.0.0.1"
    http_port: int = 8000

    database_url: str = "postgresql://stepmail@127.0.0.1:5432/stepmail"
    database_pool_max: int = 10

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "stepmail."
    kafka_topic_partitions: int = 12
    kafka_topic_replication: int = 1
    # The embedded broker (Tansu) refuses InitProducerId; Apache Kafka wants it on.
    kafka_enable_idempotence: bool = False
    # How long a consumer's fetch waits at the broker for data. Apache Kafka answers a
    # waiting fetch as soon as data arrives, so 500 costs no latency there and spares
    # idle polling; the embedded broker answers at its next look, so it keeps 150.
    kafka_fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS
    # The same for the consumers no mail waits for on its way (feedback, the tracker).
    kafka_feedback_fetch_max_wait_ms: int = FEEDBACK_FETCH_MAX_WAIT_MS
    # How producers compress record batches; every Kafka client since 2.1 reads zstd.
    kafka_compression: Compression = COMPRESSION

    otel_exporter_otlp_endpoint: str | None = None

    # Bearer token of the marketers' APIs (scenarios, templates); dev value refused in production.
    stepmail_admin_token: str = "dev-admin-token"  # noqa: S105 - refused in production

    @model_validator(mode="after")
    def _positive_partitions(self) -> "CommonSettings":
        if self.kafka_topic_partitions < 1:
            raise ValueError("KAFKA_TOPIC_PARTITIONS must be at least 1")
        for name in ("kafka_fetch_max_wait_ms", "kafka_feedback_fetch_max_wait_ms"):
            if not 1 <= getattr(self, name) <= 30_000:
                raise ValueError(f"{name.upper()} must be between 1 and 30000")
        self.refuse_placeholder("stepmail_admin_token", self.stepmail_admin_token)
        return self

    def consumer_group(self, service: str) -> str:
        """The consumer group of ``service``: ``stepmail-sender`` with the default prefix."""
        return f"{self.kafka_topic_prefix.rstrip('.')}-{service}"

    def refuse_placeholder(self, name: str, value: str, placeholder_prefix: str = "dev") -> None:
        """Outside development, a secret that still holds its dev placeholder is an error."""
        if self.stepmail_env == "production" and value.startswith(placeholder_prefix):
            raise ValueError(f"{name.upper()} still holds a development placeholder")
