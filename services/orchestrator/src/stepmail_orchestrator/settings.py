"""The orchestrator's settings."""

from stepmail_common.settings import CommonSettings


class OrchestratorSettings(CommonSettings):
    http_port: int = 8002
    db_schema: str = "orchestrator"
    # Scenario files loaded (as new versions when changed) at start-up.
    orchestrator_scenarios_dir: str | None = None
    # The timer loop wakes at once after an enrollment; this bounds the wait otherwise.
    orchestrator_timer_interval_seconds: float = 0.5
    orchestrator_timer_batch: int = 500
    default_time_zone: str = "Asia/Tokyo"
    default_locale: str = "ja-JP"
