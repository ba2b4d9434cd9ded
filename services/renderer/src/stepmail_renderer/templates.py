"""Templates and layouts as files, loaded into the renderer's tables.

A templates directory holds one directory per template, ``<template_id>/``, with:

- ``template.yaml``: ``subject`` (required), ``preheader``, ``mail_kind`` (``marketing``
  or ``transactional``, default ``marketing``), ``sender`` (a named sender of
  ``senders.yaml``; the default sender when absent), ``event_properties`` and
  ``contact_attributes`` (the names the template may use under ``event.properties`` and
  ``contact.attributes``), ``sample`` (``contact`` and ``event`` for previews) and
  ``description``;
- ``body.html.j2``: the HTML body (required);
- ``body.txt.j2``: the plain-text body (optional; derived from the HTML when absent).

and optionally ``layouts/*.j2``: shared layouts and partials that templates
``{% extends "layouts/base.html.j2" %}`` or ``{% include "layouts/footer.html.j2" %}``,
and ``senders.yaml`` (see ``senders``).
"""

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from stepmail_common.errors import PermanentError

MAIL_KINDS = ("marketing", "transactional")
TEMPLATE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,199}$")
LAYOUT_NAME = re.compile(r"^layouts/[a-z0-9][a-z0-9_.-]{0,199}\.j2$")
NAME_LIST_ITEM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
META_KEYS = frozenset(
    {
        "subject",
        "preheader",
        "mail_kind",
        "sender",
        "event_properties",
        "contact_attributes",
        "sample",
        "description",
    }
)
LAYOUTS_DIR = "layouts"


class TemplateLoadError(PermanentError):
    """A template directory that is incomplete or malformed."""

    def __init__(self, message: str, field: str = "template") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """One template's content, as read from its files or the API."""

    id: str
    mail_kind: str
    subject: str
    preheader: str | None
    html: str
    text: str | None
    sender: str | None = None
    event_properties: tuple[str, ...] | None = None
    contact_attributes: tuple[str, ...] | None = None
    sample: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    description: str | None = None

    @property
    def content_hash(self) -> bytes:
        doc: dict[str, object] = {
            "mail_kind": self.mail_kind,
            "subject": self.subject,
            "preheader": self.preheader,
            "html": self.html,
            "text": self.text,
        }
        # Older versions hashed only the fields above; new fields count only when set.
        extra: dict[str, object] = {
            "sender": self.sender,
            "event_properties": self.event_properties,
            "contact_attributes": self.contact_attributes,
            "sample": self.sample,
            "description": self.description,
        }
        doc.update({k: v for k, v in extra.items() if v is not None})
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).digest()

    def to_document(self) -> dict[str, Any]:
        """The JSON form the API accepts and returns."""
        return {
            "id": self.id,
            "mail_kind": self.mail_kind,
            "subject": self.subject,
            "preheader": self.preheader,
            "html": self.html,
            "text": self.text,
            "sender": self.sender,
            "event_properties": (
                list(self.event_properties) if self.event_properties is not None else None
            ),
            "contact_attributes": (
                list(self.contact_attributes) if self.contact_attributes is not None else None
            ),
            "sample": self.sample,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """A template version as the renderer's table holds it."""

    source: TemplateSource
    version: int
    archived: bool = False


@dataclass(frozen=True, slots=True)
class LayoutSource:
    """A shared layout or partial, named ``layouts/<file>``."""

    name: str
    source: str

    @property
    def content_hash(self) -> bytes:
        return hashlib.sha256(self.source.encode()).digest()


def read_text(path: Path) -> str:
    # Normalise line ends: the MIME writer decides them, not the editor that saved the file.
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def _names(meta: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, str) and NAME_LIST_ITEM.match(v) for v in value
    ):
        raise TemplateLoadError(f"{where}: {key!r} must be a list of identifiers", key)
    return tuple(value)


def source_from_document(template_id: str, doc: dict[str, Any], where: str) -> TemplateSource:
    """Check ``template.yaml`` content (plus ``html``/``text``) and build the source."""
    if not TEMPLATE_ID.match(template_id):
        raise TemplateLoadError(
            f"{where}: a template id is lowercase letters, digits, '-' and '_'", "id"
        )
    unknown = set(doc) - META_KEYS - {"html", "text", "id"}
    if unknown:
        raise TemplateLoadError(f"{where}: unknown keys {sorted(unknown)}", sorted(unknown)[0])
    subject = doc.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise TemplateLoadError(f"{where}: 'subject' must be a non-empty string", "subject")
    preheader = doc.get("preheader")
    if preheader is not None and not isinstance(preheader, str):
        raise TemplateLoadError(f"{where}: 'preheader' must be a string", "preheader")
    mail_kind = doc.get("mail_kind") or "marketing"
    if mail_kind not in MAIL_KINDS:
        raise TemplateLoadError(f"{where}: 'mail_kind' must be one of {MAIL_KINDS}", "mail_kind")
    html = doc.get("html")
    if not isinstance(html, str) or not html.strip():
        raise TemplateLoadError(f"{where}: the HTML body is missing", "html")
    text = doc.get("text")
    if text is not None and not isinstance(text, str):
        raise TemplateLoadError(f"{where}: 'text' must be a string", "text")
    sender = doc.get("sender")
    if sender is not None and not (isinstance(sender, str) and TEMPLATE_ID.match(sender)):
        raise TemplateLoadError(f"{where}: 'sender' must be a sender name", "sender")
    sample = doc.get("sample")
    if sample is not None and not (
        isinstance(sample, dict) and set(sample) <= {"contact", "event"}
    ):
        raise TemplateLoadError(
            f"{where}: 'sample' must be a mapping with 'contact' and 'event'", "sample"
        )
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        raise TemplateLoadError(f"{where}: 'description' must be a string", "description")
    return TemplateSource(
        id=template_id,
        mail_kind=mail_kind,
        subject=subject.strip(),
        preheader=preheader.strip() if preheader else None,
        html=html.replace("\r\n", "\n"),
        text=text.replace("\r\n", "\n") if text else None,
        sender=sender,
        event_properties=_names(doc, "event_properties", where),
        contact_attributes=_names(doc, "contact_attributes", where),
        sample=sample,
        description=description,
    )


def load_template(directory: Path) -> TemplateSource:
    """Read one template directory; raises ``TemplateLoadError`` naming the file at fault."""
    meta_path = directory / "template.yaml"
    html_path = directory / "body.html.j2"
    text_path = directory / "body.txt.j2"
    for required in (meta_path, html_path):
        if not required.is_file():
            raise TemplateLoadError(f"{required}: missing")
    try:
        meta = yaml.safe_load(read_text(meta_path))
    except yaml.YAMLError as exc:
        raise TemplateLoadError(f"{meta_path}: not YAML: {exc}") from exc
    if not isinstance(meta, dict):
        raise TemplateLoadError(f"{meta_path}: expected a mapping")
    unknown = set(meta) - META_KEYS
    if unknown:
        raise TemplateLoadError(f"{meta_path}: unknown keys {sorted(unknown)}")
    doc = {**meta, "html": read_text(html_path)}
    if text_path.is_file():
        doc["text"] = read_text(text_path)
    return source_from_document(directory.name, doc, str(meta_path))


def load_layouts(root: Path) -> list[LayoutSource]:
    """The ``layouts/*.j2`` files under ``root``, in name order."""
    folder = root / LAYOUTS_DIR
    if not folder.is_dir():
        return []
    layouts = []
    for path in sorted(folder.iterdir()):
        name = f"{LAYOUTS_DIR}/{path.name}"
        if path.is_file() and path.suffix == ".j2":
            if not LAYOUT_NAME.match(name):
                raise TemplateLoadError(f"{path}: a layout name is lowercase, ending in .j2")
            layouts.append(LayoutSource(name, read_text(path)))
    return layouts


def load_directory(root: Path) -> list[TemplateSource]:
    """Every template under ``root``, in id order."""
    if not root.is_dir():
        raise TemplateLoadError(f"{root}: templates directory not found")
    return [
        load_template(d)
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name != LAYOUTS_DIR and not d.name.startswith(".")
    ]
