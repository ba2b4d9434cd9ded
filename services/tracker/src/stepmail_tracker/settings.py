"""Tracker's settings."""

import ipaddress

from pydantic import model_validator

from stepmail_common.preferences import TopicSettings
from stepmail_common.signing import parse_keys

# Ranges whose fetches are proxies, not people: Apple's 17.0.0.0/8 (Mail Privacy
# Protection fetches from it) and Google's image proxy ranges.
DEFAULT_PROXY_CIDRS = "17.0.0.0/8,66.102.0.0/20,66.249.80.0/20,74.125.0.0/16"


class TrackerSettings(TopicSettings):
    http_port: int = 8005
    db_schema: str = "tracker"
    signing_keys: str = "k1:dev-only-4f9c2a71d8e35b06c1a9e7f24d6b3085"
    # How long a click or open waits for the broker before the person is answered anyway.
    tracker_click_publish_timeout_seconds: float = 2.0
    # Opens and clicks this soon after delivery are a machine's (scanner, prefetch).
    tracker_machine_window_seconds: float = 10.0
    tracker_proxy_cidrs: str = DEFAULT_PROXY_CIDRS
    # Header holding the client address behind a load balancer (first entry), e.g.
    # ``x-forwarded-for``; empty uses the socket's peer.
    tracker_client_ip_header: str = ""
    tracker_delivery_retention_days: int = 30
    # The sliding window of the complaint and unsubscribe ratio gauges.
    tracker_rate_window_seconds: int = 3600
    tracker_rate_refresh_seconds: float = 15.0
    # Amazon SES via SNS: confirm subscriptions by themselves (else log the URL only),
    # and accept only these topic ARNs (comma-separated; empty accepts any signed one).
    tracker_sns_auto_confirm: bool = False
    tracker_sns_topic_arns: str = ""
    # SendGrid Event Webhook verification key (base64 DER or PEM, as SendGrid shows it);
    # empty refuses every SendGrid request.
    tracker_sendgrid_public_key: str = ""
    tracker_sendgrid_max_age_seconds: int = 600

    @model_validator(mode="after")
    def _check(self) -> "TrackerSettings":
        for secret in parse_keys(self.signing_keys).values():
            self.refuse_placeholder("signing_keys", secret.decode())
        self.proxy_networks()
        return self

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        try:
            return tuple(
                ipaddress.ip_network(part.strip(), strict=False)
                for part in self.tracker_proxy_cidrs.split(",")
                if part.strip()
            )
        except ValueError as exc:
            raise ValueError(f"TRACKER_PROXY_CIDRS: {exc}") from None

    def sns_topic_arns(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.tracker_sns_topic_arns.split(",") if p.strip())
