"""The tracker's Prometheus metrics (bounded labels only; no ids, no addresses)."""

from prometheus_client import Counter, Gauge

OPENS = Counter(
    "stepmail_tracker_opens_total",
    "Open pixels fetched with a valid token, by whether the open looked automated",
    ["machine"],
)
CLICKS = Counter(
    "stepmail_tracker_clicks_total",
    "Tracked links followed, by whether the click looked automated",
    ["machine"],
)
MACHINE_REASONS = Counter(
    "stepmail_tracker_machine_total",
    "Opens and clicks flagged as a machine's, by kind (open, click) and reason",
    ["kind", "reason"],
)
INVALID_TOKENS = Counter(
    "stepmail_tracker_invalid_tokens_total",
    "Requests with a token that failed verification, by route (open, click, unsubscribe)",
    ["route"],
)
UNSUBSCRIBES = Counter(
    "stepmail_tracker_unsubscribes_total",
    "Unsubscribes recorded on the broker, by method (one-click, page, api)",
    ["method"],
)
RESUBSCRIBES = Counter(
    "stepmail_tracker_resubscribes_total",
    "Re-subscriptions recorded on the broker",
)
COMPLAINTS = Counter(
    "stepmail_tracker_complaints_total",
    "Spam complaints reported by an ESP, by source (ses, sendgrid)",
    ["source"],
)
BOUNCES = Counter(
    "stepmail_tracker_bounces_total",
    "Bounces reported by an ESP, by source and class (hard, soft)",
    ["source", "bounce"],
)
FEEDBACK_REFUSED = Counter(
    "stepmail_tracker_feedback_refused_total",
    "ESP webhook requests refused, by provider and reason",
    ["provider", "reason"],
)
PUBLISH_FAILURES = Counter(
    "stepmail_tracker_publish_failures_total",
    "Engagement events the broker did not take, by event (opened, clicked, unsubscribed, ...)",
    ["event"],
)
SENT_IN_WINDOW = Gauge(
    "stepmail_tracker_sent_in_window",
    "Mails delivered within the sliding window (TRACKER_RATE_WINDOW_SECONDS)",
)
COMPLAINT_RATIO = Gauge(
    "stepmail_tracker_complaint_ratio",
    "Complaints / mails delivered within the sliding window (alert above 0.001)",
)
UNSUBSCRIBE_RATIO = Gauge(
    "stepmail_tracker_unsubscribe_ratio",
    "Unsubscribes / mails delivered within the sliding window (alert on spikes)",
)
