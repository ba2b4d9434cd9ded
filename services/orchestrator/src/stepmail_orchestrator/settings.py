"""The orchestrator's settings."""

from pydantic import Field, model_validator

from stepmail_common.preferences import TopicSettings
from stepmail_common.signing import standard_webhook_key
from stepmail_orchestrator.engine import parse_window
from stepmail_orchestrator.scenarios import parse_duration


class OrchestratorSettings(TopicSettings):
    """``TRACKER_TOPICS`` (from ``TopicSettings``): a scenario or step may name only these."""

    http_port: int = 8002
    db_schema: str = "orchestrator"
    # Scenario files loaded (as new versions when changed) at start-up.
    orchestrator_scenarios_dir: str | None = None
    # The timer loop wakes at once after an enrollment; this bounds the wait otherwise.
    orchestrator_timer_interval_seconds: float = 0.5
    orchestrator_timer_batch: int = 2000
    # Timer passes in flight at once in one replica (each its own transaction).
    orchestrator_timer_concurrency: int = Field(default=2, ge=1)
    default_time_zone: str = "Asia/Tokyo"
    default_locale: str = "ja-JP"
    # Contact-level rules for marketing mail, in each contact's time zone.
    orchestrator_send_window: str | None = "09:00-21:00"
    orchestrator_frequency_cap: str | None = None
    # Inactivity and yearly triggers are looked for this often.
    orchestrator_scan_interval_seconds: float = 60.0
    # Consumed events' marks (against a second effect) are kept this long: longer than an
    # event can come again, from its topic or replayed from a dead-letter topic (30 days).
    orchestrator_processed_events_days: int = Field(default=35, ge=1)
    # Off, ``notify`` webhooks are recorded but not posted (dry runs, tests).
    orchestrator_notify_enabled: bool = True
    # Standard Webhooks secret (whsec_ + base64) signing ``notify`` webhooks.
    orchestrator_webhook_secret: str = "whsec_ZGV2LW9ubHktd2ViaG9vay1zZWNyZXQtY2hhbmdlLW1l"  # noqa: S105 - dev only

    @model_validator(mode="after")
    def _check(self) -> "OrchestratorSettings":
        key = standard_webhook_key(self.orchestrator_webhook_secret)
        self.refuse_placeholder("orchestrator_webhook_secret", key.decode("latin-1"))
        if self.orchestrator_send_window:
            parse_window(self.orchestrator_send_window)
        if self.orchestrator_frequency_cap:
            parse_duration(self.orchestrator_frequency_cap)
        return self
