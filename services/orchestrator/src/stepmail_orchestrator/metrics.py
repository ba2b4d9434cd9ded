"""The orchestrator's metrics (scenario ids are bounded: marketers define them)."""

from prometheus_client import Counter, Histogram

ENROLLED = Counter(
    "stepmail_orchestrator_enrollments_total",
    "Contacts enrolled in a scenario (status active, or held_out for the control group)",
    ["scenario", "status"],
)
COMPLETED = Counter(
    "stepmail_orchestrator_completions_total", "Enrollments that ran to the end", ["scenario"]
)
EXITED = Counter(
    "stepmail_orchestrator_exits_total",
    "Enrollments ended early, by reason (event, opted_out, left_audience)",
    ["scenario", "reason"],
)
CONVERTED = Counter(
    "stepmail_orchestrator_conversions_total", "Exits recorded as conversions", ["scenario"]
)
STEPS_DUE = Counter(
    "stepmail_orchestrator_steps_due_total", "Send steps emitted to steps-due", ["scenario"]
)
STEPS_HELD = Counter(
    "stepmail_orchestrator_steps_held_total",
    "Send steps postponed by the send window or the frequency cap",
    ["scenario"],
)
STEPS_SKIPPED = Counter(
    "stepmail_orchestrator_steps_skipped_total",
    "Steps skipped, by reason (no_address, no_consent, date_unknown, enter_inactive)",
    ["scenario", "reason"],
)
TIMER_LAG = Histogram(
    "stepmail_orchestrator_timer_lag_seconds",
    "How late a due step was acted on after its due time",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
NOTIFICATIONS = Counter(
    "stepmail_orchestrator_notifications_total",
    "Signed webhooks to external systems, by outcome (delivered, retried, failed)",
    ["outcome"],
)
SEND_LATENCY = Histogram(
    "stepmail_orchestrator_send_latency_seconds",
    "From a send step's release to steps-due (for a mail due at once, when its trigger was"
    " handled) to the SMTP server's acceptance, by mail kind",
    ["mail_kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
