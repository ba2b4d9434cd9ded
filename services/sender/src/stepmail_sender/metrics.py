"""The sender's Prometheus metrics: no addresses, no ids, few bounded labels."""

from prometheus_client import Counter, Gauge, Histogram

MAILS_SENT = Counter(
    "stepmail_sender_mails_sent_total", "Mails the SMTP server accepted (resends included)"
)
MAILS_FAILED = Counter(
    "stepmail_sender_mails_failed_total",
    "Mails recorded as failed, by failure class (4xx, 5xx, connection, other)",
    ["class"],
)
AMBIGUOUS = Counter(
    "stepmail_sender_ambiguous_total",
    "Mails whose handover had an unknown outcome, by the policy applied (hold, resend)",
    ["policy"],
)
RESENDS = Counter(
    "stepmail_sender_resends_total", "Attempts that re-send a mail after an ambiguous one"
)
DEFERRED = Counter(
    "stepmail_sender_mails_deferred_total",
    "Attempts that ended in a temporary failure and were scheduled again, by class",
    ["class"],
)
SUPPRESSED = Counter(
    "stepmail_sender_mails_suppressed_total",
    "Mails not sent (or addresses suppressed by a hard bounce), by reason",
    ["reason"],
)
THROTTLED = Counter(
    "stepmail_sender_throttled_total",
    "Times a window of mails waited for a throttle token, by configured domain or 'account'",
    ["bucket"],
)
RETRIES_PENDING = Gauge(
    "stepmail_sender_retries_pending", "Mails in the ledger waiting for their next attempt"
)
DELIVERY_SECONDS = Histogram(
    "stepmail_sender_delivery_seconds",
    "From a mail's arrival in the ledger to the server's acceptance",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
DUPLICATES_SKIPPED = Counter(
    "stepmail_sender_duplicates_skipped_total",
    "Redelivered mails not sent again because the ledger already knows their fate",
)
OWNER_WAITS = Counter(
    "stepmail_sender_owner_waits_total",
    "Redelivered mails that waited for another live process to record their outcome",
)

SMTP_SECONDS = Histogram(
    "stepmail_sender_smtp_seconds",
    "Time of one SMTP transaction (MAIL, RCPT, DATA), by outcome",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SUPPRESSIONS_RECORDED = Counter(
    "stepmail_sender_suppressions_recorded_total",
    "Suppressions recorded from feedback events, by reason",
    ["reason"],
)
DKIM_UNSIGNED = Counter(
    "stepmail_sender_dkim_unsigned_total",
    "Mails sent without a DKIM signature because no key is configured for the From domain",
)
