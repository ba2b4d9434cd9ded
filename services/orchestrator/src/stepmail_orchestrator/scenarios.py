"""Scenario definitions: the YAML marketers write, checked and turned into plain data.

The format is described by ``scenario.schema.json`` (JSON Schema, for editors and CI) and
documented in the README. Structure is checked against the schema; what a schema cannot
say (step ids unique, branch targets exist, conditions well formed) is checked here.
Every error names the file, the field and what is wrong.
"""

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import time, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import yaml

from stepmail_common.errors import PermanentError
from stepmail_orchestrator.conditions import ConditionError, check

_DURATION = re.compile(r"^\s*([-+]?\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ScenarioError(PermanentError):
    """A scenario that does not follow the format; names the file and field."""


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30m, 6h, 2d or 1w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


@dataclass(frozen=True, slots=True)
class Wait:
    """Before a step: a duration, then optionally a date (± offset), a time of day, weekdays."""

    duration: timedelta = timedelta(0)
    until_date: str | None = None
    offset: timedelta = timedelta(0)
    at: time | None = None
    weekdays: frozenset[int] | None = None

    @property
    def is_zero(self) -> bool:
        return self == Wait()


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    template: str
    weight: float


@dataclass(frozen=True, slots=True)
class Send:
    variants: tuple[Variant, ...]
    # The preference-centre topic of the mail: the step's own, else the scenario's.
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class Branch:
    cases: tuple[tuple[dict[str, Any], str], ...]
    otherwise: str | None


@dataclass(frozen=True, slots=True)
class Update:
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()
    set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notify:
    url: str
    reason: str


@dataclass(frozen=True, slots=True)
class Enter:
    scenario: str


@dataclass(frozen=True, slots=True)
class End:
    pass


Action = Send | Branch | Update | Notify | Enter | End


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    wait: Wait
    action: Action


@dataclass(frozen=True, slots=True)
class Exit:
    event: str
    where: dict[str, Any] | None
    same: tuple[str, ...]
    conversion: bool


@dataclass(frozen=True, slots=True)
class Trigger:
    event: str | None = None
    where: dict[str, Any] | None = None
    count_at_least: int | None = None
    count_within: timedelta | None = None
    inactive_for: timedelta | None = None
    yearly_date: str | None = None
    yearly_at: time | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    name: str
    mail_kind: str
    trigger: Trigger
    audience: dict[str, Any] | None
    entry_rule: str
    cooloff: timedelta | None
    exits: tuple[Exit, ...]
    holdout_percent: float
    steps: tuple[Step, ...]
    definition: dict[str, Any]
    topic: str | None = None

    def to_definition(self) -> dict[str, Any]:
        return self.definition

    def digest(self) -> str:
        canonical = orjson.dumps(self.definition, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()

    def step_index(self, step_id: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.id == step_id)

    @property
    def templates(self) -> set[str]:
        return {
            v.template for s in self.steps if isinstance(s.action, Send) for v in s.action.variants
        }


@cache
def json_schema() -> dict[str, Any]:
    raw = resources.files("stepmail_orchestrator").joinpath("scenario.schema.json").read_bytes()
    schema: dict[str, Any] = orjson.loads(raw)
    return schema


@cache
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json_schema())


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def _message(error: jsonschema.ValidationError) -> str:
    """The schema's message, made plain where it would only say 'not valid under any'."""
    options = error.schema.get("oneOf") if isinstance(error.schema, dict) else None
    if error.validator == "oneOf" and options and all("required" in o for o in options):
        names = ", ".join(o["required"][0] for o in options)
        return f"needs exactly one of: {names}"
    return error.message


def _wait(raw: Any) -> Wait:
    if raw is None:
        return Wait()
    if isinstance(raw, str):
        return Wait(duration=parse_duration(raw))
    until = raw.get("until") or {}
    return Wait(
        duration=parse_duration(raw.get("for", "0s")),
        until_date=until.get("date"),
        offset=parse_duration(until.get("offset", "0s")),
        at=_clock(raw["at"]) if "at" in raw else (_clock(until["at"]) if "at" in until else None),
        weekdays=frozenset(WEEKDAYS.index(d) for d in raw["weekdays"])
        if "weekdays" in raw
        else None,
    )


def _action(raw: dict[str, Any], topic: str | None) -> Action:
    if "send" in raw:
        send = raw["send"]
        topic = send.get("topic", topic)
        if "template" in send:
            return Send((Variant("a", send["template"], 1.0),), topic)
        return Send(
            tuple(
                Variant(v.get("name", chr(ord("a") + i)), v["template"], float(v["weight"]))
                for i, v in enumerate(send["variants"])
            ),
            topic,
        )
    if "branch" in raw:
        cases = tuple((c["if"], c["goto"]) for c in raw["branch"]["cases"])
        return Branch(cases, raw["branch"].get("else"))
    if "update" in raw:
        u = raw["update"]
        return Update(
            tuple(u.get("add_tags", ())), tuple(u.get("remove_tags", ())), u.get("set", {})
        )
    if "notify" in raw:
        return Notify(raw["notify"]["url"], raw["notify"].get("reason", "scenario step"))
    if "enter" in raw:
        return Enter(raw["enter"]["scenario"])
    return End()


_ACTIONS = ("send", "branch", "update", "notify", "enter", "end")


def parse_scenario(
    doc: object, where: str = "scenario", topics: Collection[str] | None = None
) -> Scenario:
    """Check ``doc`` and build the ``Scenario``; ``ScenarioError`` names ``where`` and the field.

    ``topics``: the preference-centre topics on offer (``TRACKER_TOPICS``); a topic the
    scenario names must be one of them. ``None`` checks only the form of a topic, as for
    stored versions, which were checked when they were saved.
    """

    def fail(fieldname: str, what: str) -> ScenarioError:
        return ScenarioError(f"{where}: {fieldname}: {what}")

    if not isinstance(doc, dict):
        raise fail("(top)", "must be a mapping")
    error = jsonschema.exceptions.best_match(_validator().iter_errors(doc))
    if error is not None:
        raise fail(_path(error), _message(error))
    steps_raw: list[dict[str, Any]] = doc["steps"]
    ids = [s["id"] for s in steps_raw]
    for i, step_id in enumerate(ids):
        if step_id in ids[:i]:
            raise fail(f"steps[{i}].id", f"{step_id!r} is used twice")
    for i, raw in enumerate(steps_raw):
        present = [a for a in _ACTIONS if a in raw]
        if len(present) != 1:
            raise fail(f"steps[{i}]", f"needs exactly one of {', '.join(_ACTIONS)}")
        if "branch" in raw:
            targets = [c["goto"] for c in raw["branch"]["cases"]]
            targets += [raw["branch"]["else"]] if "else" in raw["branch"] else []
            for target in targets:
                if target not in ids:
                    raise fail(f"steps[{i}].branch", f"goto {target!r}: no step has that id")
            for j, case in enumerate(raw["branch"]["cases"]):
                _check_condition(case["if"], f"steps[{i}].branch.cases[{j}].if", fail)
        if raw.get("enter", {}).get("scenario") == doc["id"]:
            raise fail(f"steps[{i}].enter.scenario", "a scenario cannot enter itself")
    mail_kind = doc.get("mail_kind", "marketing")
    named = [("topic", doc["topic"])] if "topic" in doc else []
    named += [
        (f"steps[{i}].send.topic", raw["send"]["topic"])
        for i, raw in enumerate(steps_raw)
        if "topic" in raw.get("send", {})
    ]
    for fieldname, topic in named:
        _check_topic(topic, mail_kind, topics, fieldname, fail)
    trigger_raw = doc["trigger"]
    if "where" in trigger_raw:
        _check_condition(trigger_raw["where"], "trigger.where", fail)
    if "yearly" in trigger_raw and not trigger_raw["yearly"]["date"].startswith(
        "contact.attributes."
    ):
        raise fail("trigger.yearly.date", "must be a contact attribute: contact.attributes.<name>")
    if "count" in trigger_raw and "event" not in trigger_raw:
        raise fail("trigger.count", "counts an event: name it in trigger.event")
    if "audience" in doc:
        _check_condition(doc["audience"], "audience", fail)
    for i, ex in enumerate(doc.get("exit", [])):
        if "where" in ex:
            _check_condition(ex["where"], f"exit[{i}].where", fail)
    count = trigger_raw.get("count")
    yearly = trigger_raw.get("yearly")
    trigger = Trigger(
        event=trigger_raw.get("event"),
        where=trigger_raw.get("where"),
        count_at_least=count["at_least"] if count else None,
        count_within=parse_duration(count["within"]) if count else None,
        inactive_for=parse_duration(trigger_raw["inactive_for"])
        if "inactive_for" in trigger_raw
        else None,
        yearly_date=yearly["date"] if yearly else None,
        yearly_at=_clock(yearly["at"]) if yearly and "at" in yearly else None,
    )
    entry = doc.get("entry", {})
    rule = entry.get("rule", "once")
    if rule == "again_after" and "cooloff" not in entry:
        raise fail("entry.cooloff", "'again_after' needs a cool-off duration")
    return Scenario(
        id=doc["id"],
        name=str(doc.get("name", doc["id"])),
        mail_kind=mail_kind,
        trigger=trigger,
        audience=doc.get("audience"),
        entry_rule=rule,
        cooloff=parse_duration(entry["cooloff"]) if "cooloff" in entry else None,
        exits=tuple(
            Exit(e["event"], e.get("where"), tuple(e.get("same", ())), bool(e.get("conversion")))
            for e in doc.get("exit", [])
        ),
        holdout_percent=float(doc.get("holdout_percent", 0)),
        steps=tuple(
            Step(s["id"], _wait(s.get("wait")), _action(s, doc.get("topic"))) for s in steps_raw
        ),
        definition=doc,
        topic=doc.get("topic"),
    )


def _check_topic(
    topic: str, mail_kind: str, topics: Collection[str] | None, at: str, fail: Any
) -> None:
    if mail_kind != "marketing":
        raise fail(at, "only marketing mail has preference-centre topics")
    if topics is not None and topic not in topics:
        offered = ", ".join(topics) or "none"
        raise fail(at, f"{topic!r} is not a preference-centre topic (TRACKER_TOPICS: {offered})")


def _check_condition(condition: Any, at: str, fail: Any) -> None:
    try:
        check(condition, at)
    except ConditionError as exc:
        field_name, _, what = str(exc).partition(": ")
        raise fail(field_name, what) from None


def load_file(path: Path, topics: Collection[str] | None = None) -> Scenario:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path.name}: (top): not valid YAML: {exc}") from None
    return parse_scenario(doc, path.name, topics)


def load_dir(directory: Path, topics: Collection[str] | None = None) -> list[Scenario]:
    """Every ``*.yaml``/``*.yml`` file of ``directory``, parsed."""
    return [
        load_file(p, topics) for p in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    ]
