"""The orchestrator's metrics (scenario ids are bounded: marketers define them)."""

from prometheus_client import Counter, Histogram

ENROLLED = Counter(
    "stepmail_orchestrator_enrollments_total", "Contacts enrolled in a scenario", ["scenario"]
)
STEPS_DUE = Counter(
    "stepmail_orchestrator_steps_due_total", "Send steps emitted to steps-due", ["scenario"]
)
STEPS_SKIPPED = Counter(
    "stepmail_orchestrator_steps_skipped_total",
    "Send steps skipped, by reason",
    ["scenario", "reason"],
)
TIMER_LAG = Histogram(
    "stepmail_orchestrator_timer_lag_seconds",
    "How late a due step was claimed after its due time",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
