"""Templates as files: one directory per template, loaded into the renderer's table.

A template directory ``<templates_dir>/<template_id>/`` holds:

- ``template.yaml``: ``subject`` (required), ``preheader`` (optional), ``mail_kind``
  (``marketing`` or ``transactional``, default ``marketing``);
- ``body.html.j2``: the HTML body (required);
- ``body.txt.j2``: the plain-text body (optional; derived from the HTML when absent).

Subject, preheader and bodies are Jinja templates.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from stepmail_common.errors import PermanentError

MAIL_KINDS = ("marketing", "transactional")
_TEMPLATE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,199}$")


class TemplateLoadError(PermanentError):
    """A template directory that is incomplete or malformed."""


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """One template's content, as read from its files."""

    id: str
    mail_kind: str
    subject: str
    preheader: str | None
    html: str
    text: str | None

    @property
    def content_hash(self) -> bytes:
        doc = {
            "mail_kind": self.mail_kind,
            "subject": self.subject,
            "preheader": self.preheader,
            "html": self.html,
            "text": self.text,
        }
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).digest()


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """A template version as the renderer's table holds it."""

    source: TemplateSource
    version: int


def _read(path: Path) -> str:
    # Normalise line ends: the MIME writer decides them, not the editor that saved the file.
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def load_template(directory: Path) -> TemplateSource:
    """Read one template directory; raises ``TemplateLoadError`` naming the file at fault."""
    template_id = directory.name
    if not _TEMPLATE_ID.match(template_id):
        raise TemplateLoadError(
            f"{directory}: a template id is lowercase letters, digits, '-' and '_'"
        )
    meta_path = directory / "template.yaml"
    html_path = directory / "body.html.j2"
    text_path = directory / "body.txt.j2"
    for required in (meta_path, html_path):
        if not required.is_file():
            raise TemplateLoadError(f"{required}: missing")
    try:
        meta = yaml.safe_load(_read(meta_path))
    except yaml.YAMLError as exc:
        raise TemplateLoadError(f"{meta_path}: not YAML: {exc}") from exc
    if not isinstance(meta, dict):
        raise TemplateLoadError(f"{meta_path}: expected a mapping")
    unknown = set(meta) - {"subject", "preheader", "mail_kind"}
    if unknown:
        raise TemplateLoadError(f"{meta_path}: unknown keys {sorted(unknown)}")
    subject = meta.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise TemplateLoadError(f"{meta_path}: 'subject' must be a non-empty string")
    preheader = meta.get("preheader")
    if preheader is not None and not isinstance(preheader, str):
        raise TemplateLoadError(f"{meta_path}: 'preheader' must be a string")
    mail_kind = meta.get("mail_kind", "marketing")
    if mail_kind not in MAIL_KINDS:
        raise TemplateLoadError(f"{meta_path}: 'mail_kind' must be one of {MAIL_KINDS}")
    return TemplateSource(
        id=template_id,
        mail_kind=mail_kind,
        subject=subject.strip(),
        preheader=preheader.strip() if preheader else None,
        html=_read(html_path),
        text=_read(text_path) if text_path.is_file() else None,
    )


def load_directory(root: Path) -> list[TemplateSource]:
    """Every template under ``root``, in id order."""
    if not root.is_dir():
        raise TemplateLoadError(f"{root}: templates directory not found")
    return [load_template(d) for d in sorted(root.iterdir()) if d.is_dir()]
