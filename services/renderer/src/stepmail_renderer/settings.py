"""Renderer's settings."""

from email.utils import parseaddr
from pathlib import Path

from pydantic import model_validator

from stepmail_common.settings import CommonSettings
from stepmail_common.signing import parse_keys


class RendererSettings(CommonSettings):
    http_port: int = 8003
    db_schema: str = "renderer"
    renderer_templates_dir: Path = Path("examples/templates")
    tracker_public_url: str = "http://127.0.0.1:8005"
    signing_keys: str = "k1:dev-only-4f9c2a71d8e35b06c1a9e7f24d6b3085"
    mail_from: str = "stepmail <hello@example.com>"
    # The mailbox of the ``mailto:`` in List-Unsubscribe; defaults to unsubscribe@<From domain>.
    list_unsubscribe_mailto: str | None = None
    # What Japan's Act on Specified Electronic Mail requires in every mail's footer.
    sender_legal_name: str = "stepmail"
    sender_postal_address: str = "(postal address not configured)"
    sender_contact: str = "(contact point not configured)"

    @model_validator(mode="after")
    def _check(self) -> "RendererSettings":
        keys = parse_keys(self.signing_keys)
        for secret in keys.values():
            self.refuse_placeholder("signing_keys", secret.decode())
        if not self.tracker_public_url.startswith(("https://", "http://")):
            raise ValueError("TRACKER_PUBLIC_URL must be an http(s) URL")
        if self.stepmail_env == "production":
            # RFC 8058 one-click needs an HTTPS URI in List-Unsubscribe.
            if not self.tracker_public_url.startswith("https://"):
                raise ValueError("TRACKER_PUBLIC_URL must be https in production")
            for name in ("sender_legal_name", "sender_postal_address", "sender_contact"):
                if getattr(self, name) == type(self).model_fields[name].default:
                    raise ValueError(f"{name.upper()} must be set in production")
        if "@" not in parseaddr(self.mail_from)[1]:
            raise ValueError("MAIL_FROM must hold an address, e.g. 'Shop <hello@example.com>'")
        return self

    @property
    def mail_from_address(self) -> str:
        return parseaddr(self.mail_from)[1]

    @property
    def mail_from_domain(self) -> str:
        return self.mail_from_address.rpartition("@")[2]

    @property
    def unsubscribe_mailbox(self) -> str:
        return self.list_unsubscribe_mailto or f"unsubscribe@{self.mail_from_domain}"
