"""Who a mail is from, per sender: the legal footer, From, List-Unsubscribe, charset, UTM.

The default sender comes from the settings (``MAIL_FROM``, ``SENDER_*``). Named senders
live in ``senders.yaml`` in the templates directory (``RENDERER_SENDERS_FILE`` to put it
elsewhere); a template names one with ``sender: <name>``:

```yaml
shop-jp:
  from: "デモショップ <shop@example.com>"
  legal_name: 株式会社デモショップ
  postal_address: 〒100-0005 東京都千代田区丸の内1-1-1
  contact: support@example.com / 03-0000-0000
  list_unsubscribe_mailto: unsubscribe@example.com   # default unsubscribe@<From domain>
  charset: iso-2022-jp                                 # or utf-8 (default)
  open_tracking: true                                  # default true
  utm:                                                 # added to every tracked link
    utm_source: stepmail
    utm_medium: email
    utm_campaign: "{scenario}"                         # {scenario}, {step}, {template}
```
"""

import re
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import yaml

from stepmail_common.errors import PermanentError
from stepmail_renderer import mime

CHARSETS = ("utf-8", "iso-2022-jp")
SENDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_KEYS = frozenset(
    {
        "from",
        "legal_name",
        "postal_address",
        "contact",
        "list_unsubscribe_mailto",
        "charset",
        "open_tracking",
        "utm",
    }
)
_UTM_KEY = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
_UTM_FIELDS = frozenset({"scenario", "step", "template"})
_UTM_FIELD = re.compile(r"\{(\w+)\}")
DEFAULT = "default"


class SenderConfigError(PermanentError):
    """A sender configuration that cannot be used."""


class UnknownSenderError(PermanentError):
    """A template names a sender that is not configured."""


@dataclass(frozen=True, slots=True)
class SenderProfile:
    """Everything about one sender that goes into its mails."""

    name: str
    mail_from: str
    legal_name: str
    postal_address: str
    contact: str
    list_unsubscribe_mailto: str | None = None
    charset: str = "utf-8"
    open_tracking: bool = True
    utm: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        address = parseaddr(self.mail_from)[1]
        if "@" not in address:
            raise SenderConfigError(f"sender {self.name!r}: 'from' must hold an address")
        try:
            mime.check_address(address)
            mime.check_address(self.unsubscribe_mailbox)
        except mime.MimeError as exc:
            raise SenderConfigError(f"sender {self.name!r}: {exc}") from exc
        if self.charset not in CHARSETS:
            raise SenderConfigError(f"sender {self.name!r}: 'charset' must be one of {CHARSETS}")
        for key, value in self.utm:
            if not _UTM_KEY.match(key):
                raise SenderConfigError(f"sender {self.name!r}: bad UTM parameter {key!r}")
            unknown = set(_UTM_FIELD.findall(value)) - _UTM_FIELDS
            if unknown:
                raise SenderConfigError(
                    f"sender {self.name!r}: UTM value {value!r} names unknown {sorted(unknown)}"
                )
        for item in ("legal_name", "postal_address", "contact"):
            if not getattr(self, item).strip():
                raise SenderConfigError(f"sender {self.name!r}: {item!r} must not be empty")

    @property
    def from_name(self) -> str:
        return parseaddr(self.mail_from)[0]

    @property
    def from_address(self) -> str:
        return parseaddr(self.mail_from)[1]

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2]

    @property
    def unsubscribe_mailbox(self) -> str:
        if self.list_unsubscribe_mailto:
            return self.list_unsubscribe_mailto
        return f"unsubscribe@{parseaddr(self.mail_from)[1].rpartition('@')[2]}"

    def utm_for(self, scenario: str, step: str, template: str) -> tuple[tuple[str, str], ...]:
        """The UTM parameters with ``{scenario}``, ``{step}``, ``{template}`` filled in."""
        values = {"scenario": scenario, "step": step, "template": template}
        return tuple(
            (key, _UTM_FIELD.sub(lambda m: values[m.group(1)], value)) for key, value in self.utm
        )


def _profile(name: str, doc: Any, where: str) -> SenderProfile:
    if not SENDER_NAME.match(name):
        raise SenderConfigError(f"{where}: sender name {name!r} must be lowercase letters/digits")
    if not isinstance(doc, dict):
        raise SenderConfigError(f"{where}: sender {name!r} must be a mapping")
    unknown = set(doc) - _KEYS
    if unknown:
        raise SenderConfigError(f"{where}: sender {name!r} has unknown keys {sorted(unknown)}")
    missing = [k for k in ("from", "legal_name", "postal_address", "contact") if k not in doc]
    if missing:
        raise SenderConfigError(f"{where}: sender {name!r} lacks {missing}")
    utm = doc.get("utm") or {}
    if not isinstance(utm, dict):
        raise SenderConfigError(f"{where}: sender {name!r}: 'utm' must be a mapping")
    return SenderProfile(
        name=name,
        mail_from=str(doc["from"]),
        legal_name=str(doc["legal_name"]),
        postal_address=str(doc["postal_address"]),
        contact=str(doc["contact"]),
        list_unsubscribe_mailto=doc.get("list_unsubscribe_mailto"),
        charset=str(doc.get("charset", "utf-8")).lower(),
        open_tracking=bool(doc.get("open_tracking", True)),
        utm=tuple((str(k), str(v)) for k, v in utm.items()),
    )


class SenderBook:
    """The default sender and the named ones."""

    def __init__(self, default: SenderProfile, named: dict[str, SenderProfile]) -> None:
        self.default = default
        self._named = dict(named)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._named)

    def get(self, name: str | None) -> SenderProfile:
        if name is None or name == DEFAULT:
            return self.default
        found = self._named.get(name)
        if found is None:
            raise UnknownSenderError(f"no sender {name!r} is configured")
        return found

    def knows(self, name: str | None) -> bool:
        return name is None or name == DEFAULT or name in self._named

    @classmethod
    def load(cls, default: SenderProfile, path: Path | None) -> "SenderBook":
        """The default plus ``path`` (a missing file means no named senders)."""
        if path is None or not path.is_file():
            return cls(default, {})
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise SenderConfigError(f"{path}: not YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise SenderConfigError(f"{path}: expected a mapping of sender names")
        if DEFAULT in doc:
            raise SenderConfigError(f"{path}: 'default' is the sender from the settings")
        return cls(default, {str(k): _profile(str(k), v, str(path)) for k, v in doc.items()})
