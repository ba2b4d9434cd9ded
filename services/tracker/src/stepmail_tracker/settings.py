"""Tracker's settings."""

from pydantic import model_validator

from stepmail_common.settings import CommonSettings
from stepmail_common.signing import parse_keys


class TrackerSettings(CommonSettings):
    http_port: int = 8005
    signing_keys: str = "k1:dev-only-4f9c2a71d8e35b06c1a9e7f24d6b3085"
    # How long a click waits for the broker before the person is redirected anyway.
    tracker_click_publish_timeout_seconds: float = 2.0

    @model_validator(mode="after")
    def _check(self) -> "TrackerSettings":
        for secret in parse_keys(self.signing_keys).values():
            self.refuse_placeholder("signing_keys", secret.decode())
        return self
