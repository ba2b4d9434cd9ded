"""Ingest's Prometheus metrics."""

from prometheus_client import Counter

EVENTS_ACCEPTED = Counter(
    "stepmail_ingest_events_accepted_total",
    "Events the broker acknowledged, by CloudEvent type",
    ["type"],
)
EVENTS_REPLAYED = Counter(
    "stepmail_ingest_events_replayed_total",
    "Events answered from the idempotency record instead of published again",
)
REJECTED = Counter(
    "stepmail_ingest_rejected_total",
    "Requests refused before anything was published, by reason",
    ["reason"],
)
IDEMPOTENCY_EXPIRED = Counter(
    "stepmail_ingest_idempotency_keys_expired_total",
    "Idempotency records deleted after the window",
)
