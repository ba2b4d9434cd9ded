"""The sender's Prometheus metrics: no addresses, no ids, few bounded labels."""

from prometheus_client import Counter, Histogram

MAILS_SENT = Counter(
    "stepmail_sender_mails_sent_total", "Mails the SMTP server accepted (resends included)"
)
MAILS_FAILED = Counter(
    "stepmail_sender_mails_failed_total",
    "Mails recorded as failed, by failure class (4xx, 5xx, connection)",
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
SMTP_RETRIES = Counter(
    "stepmail_sender_smtp_retries_total",
    "Quick in-process retries after a 4xx reply or a connection failure",
    ["class"],
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
