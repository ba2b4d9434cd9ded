"""The tracker's Prometheus metrics."""

from prometheus_client import Counter

CLICKS = Counter(
    "stepmail_tracker_clicks_total",
    "Tracked links followed, by whether the click looked automated",
    ["machine"],
)
INVALID_TOKENS = Counter(
    "stepmail_tracker_invalid_tokens_total",
    "Requests with a token that failed verification, by route (click, unsubscribe)",
    ["route"],
)
UNSUBSCRIBES = Counter(
    "stepmail_tracker_unsubscribes_total",
    "Unsubscribes recorded on the broker, by method (one-click, page)",
    ["method"],
)
PUBLISH_FAILURES = Counter(
    "stepmail_tracker_publish_failures_total",
    "Engagement events the broker did not take, by event (clicked, unsubscribed)",
    ["event"],
)
