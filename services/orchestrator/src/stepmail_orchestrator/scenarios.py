"""Scenario definitions: the YAML marketers write, parsed and checked.

The walking-skeleton format, which later versions extend without breaking::

    id: welcome
    name: 会員登録ウェルカム
    mail_kind: marketing            # or transactional
    trigger:
      event: signup                 # a customer event type
    steps:
      - id: welcome
        wait: 0s                    # optional; 30m, 6h, 2d, 1w or 0s
        send:
          template: welcome
"""

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml

from stepmail_common.errors import PermanentError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


class ScenarioError(PermanentError):
    """A scenario file that does not follow the format; names the file and field."""


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30m, 6h, 2d or 1w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    wait: timedelta
    template: str


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    name: str
    mail_kind: str
    trigger_event: str
    steps: tuple[Step, ...]

    def to_definition(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "mail_kind": self.mail_kind,
            "trigger": {"event": self.trigger_event},
            "steps": [
                {
                    "id": s.id,
                    "wait": f"{int(s.wait.total_seconds())}s",
                    "send": {"template": s.template},
                }
                for s in self.steps
            ],
        }

    def digest(self) -> str:
        canonical = orjson.dumps(self.to_definition(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()


def parse_scenario(doc: object, where: str = "scenario") -> Scenario:
    """Build a ``Scenario`` from a parsed document; errors name ``where`` and the field."""

    def fail(field: str, what: str) -> ScenarioError:
        return ScenarioError(f"{where}: {field}: {what}")

    if not isinstance(doc, dict):
        raise fail("(top)", "must be a mapping")
    sid = doc.get("id")
    if not isinstance(sid, str) or not _ID.match(sid):
        raise fail("id", "must be lower-case letters, digits, '-' or '_'")
    mail_kind = doc.get("mail_kind", "marketing")
    if mail_kind not in ("marketing", "transactional"):
        raise fail("mail_kind", "must be 'marketing' or 'transactional'")
    trigger = doc.get("trigger")
    if not isinstance(trigger, dict) or not isinstance(trigger.get("event"), str):
        raise fail("trigger.event", "must name the event type that starts the scenario")
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise fail("steps", "must be a non-empty list")
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        if not isinstance(raw, dict):
            raise fail(f"steps[{i}]", "must be a mapping")
        step_id = raw.get("id", f"step-{i + 1}")
        if not isinstance(step_id, str) or not _ID.match(step_id):
            raise fail(f"steps[{i}].id", "must be lower-case letters, digits, '-' or '_'")
        if step_id in {s.id for s in steps}:
            raise fail(f"steps[{i}].id", f"{step_id!r} is used twice")
        try:
            wait = parse_duration(raw.get("wait", "0s"))
        except ValueError as exc:
            raise fail(f"steps[{i}].wait", str(exc)) from None
        send = raw.get("send")
        if not isinstance(send, dict) or not isinstance(send.get("template"), str):
            raise fail(f"steps[{i}].send.template", "must name a template")
        steps.append(Step(step_id, wait, send["template"]))
    name = doc.get("name", sid)
    return Scenario(sid, str(name), mail_kind, trigger["event"], tuple(steps))


def load_dir(directory: Path) -> list[Scenario]:
    """Every ``*.yaml``/``*.yml`` file of ``directory``, parsed."""
    scenarios = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{path.name}: not valid YAML: {exc}") from None
        scenarios.append(parse_scenario(doc, path.name))
    return scenarios
