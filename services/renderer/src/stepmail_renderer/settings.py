"""Renderer's settings."""

from email.utils import parseaddr
from pathlib import Path
from urllib.parse import parse_qsl

from pydantic import Field, model_validator

from stepmail_common.settings import CommonSettings
from stepmail_common.signing import parse_keys
from stepmail_renderer.senders import SenderProfile


class RendererSettings(CommonSettings):
    http_port: int = 8003
    db_schema: str = "renderer"
    renderer_templates_dir: Path = Path("examples/templates")
    # Named senders; ``<RENDERER_TEMPLATES_DIR>/senders.yaml`` when unset.
    renderer_senders_file: Path | None = None
    tracker_public_url: str = "http://127.0.0.1:8005"
    signing_keys: str = "k1:dev-only-4f9c2a71d8e35b06c1a9e7f24d6b3085"
    # Bearer token of the template API and the preview page; compared in constant time.
    stepmail_admin_token: str = "dev-admin-token"  # noqa: S105 - refused in production
    mail_from: str = "stepmail <hello@example.com>"
    # The mailbox of the ``mailto:`` in List-Unsubscribe; defaults to unsubscribe@<From domain>.
    list_unsubscribe_mailto: str | None = None
    # What Japan's Act on Specified Electronic Mail requires in every mail's footer.
    sender_legal_name: str = "stepmail"
    sender_postal_address: str = "(postal address not configured)"
    sender_contact: str = "(contact point not configured)"
    # The default sender's charset (utf-8 or iso-2022-jp), UTM parameters and open pixel.
    mail_charset: str = "utf-8"
    mail_utm_params: str = ""
    mail_open_tracking: bool = True
    # Due steps per fetched batch: each mail is ~20 KB of MIME and ~1 ms of CPU, so a batch
    # is a few MB published at once and holds the event loop (between yields) well under
    # the consumer's session timeout.
    renderer_batch_max: int = Field(default=200, ge=1, le=2000)

    @model_validator(mode="after")
    def _check(self) -> "RendererSettings":
        keys = parse_keys(self.signing_keys)
        for secret in keys.values():
            self.refuse_placeholder("signing_keys", secret.decode())
        self.refuse_placeholder("stepmail_admin_token", self.stepmail_admin_token)
        if self.stepmail_env == "production" and len(self.stepmail_admin_token) < 16:
            raise ValueError("STEPMAIL_ADMIN_TOKEN must be at least 16 characters in production")
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
        self.default_sender()  # refuses a bad charset, UTM parameter or mailbox now
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

    @property
    def senders_file(self) -> Path:
        return self.renderer_senders_file or self.renderer_templates_dir / "senders.yaml"

    def default_sender(self) -> SenderProfile:
        return SenderProfile(
            name="default",
            mail_from=self.mail_from,
            legal_name=self.sender_legal_name,
            postal_address=self.sender_postal_address,
            contact=self.sender_contact,
            list_unsubscribe_mailto=self.list_unsubscribe_mailto,
            charset=self.mail_charset.lower(),
            open_tracking=self.mail_open_tracking,
            utm=tuple(parse_qsl(self.mail_utm_params, strict_parsing=bool(self.mail_utm_params))),
        )
