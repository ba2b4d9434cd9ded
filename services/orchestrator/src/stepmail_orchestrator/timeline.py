"""The dry run: which mails a scenario would send a contact, and when, without sending.

It walks the steps as the timers would, with the same waits, consent, send window and
frequency cap. What cannot be known in advance is assumed: engagement branches take the
``assume`` answers (default: nothing opened or clicked), and notify/enter steps are listed
as what they would do.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stepmail_orchestrator import engine
from stepmail_orchestrator.conditions import matches
from stepmail_orchestrator.progress import MAX_ACTIONS_PER_PASS, context
from stepmail_orchestrator.scenarios import Branch, End, Enter, Notify, Scenario, Send, Update


@dataclass(frozen=True, slots=True)
class Assume:
    opened: bool = False
    clicked: bool = False


def simulate(
    scenario: Scenario,
    contact: dict[str, Any],
    trigger: dict[str, Any],
    start: datetime,
    rules: engine.ContactRules,
    assume: Assume = Assume(),
) -> list[dict[str, Any]]:
    """The entries of the timeline: ``{"at", "step", "action", ...}`` in time order, with
    times in the contact's own time zone (what a marketer in Tokyo expects to read)."""
    contact = {**contact, "attributes": dict(contact.get("attributes") or {})}
    tz = engine.zone(contact.get("time_zone"))

    def local(moment: datetime) -> str:
        return moment.astimezone(tz).isoformat()

    out: list[dict[str, Any]] = []
    if engine.in_holdout(scenario.holdout_percent, scenario.id, contact["id"]):
        return [{"at": local(start), "step": None, "action": "held_out"}]

    facts: dict[str, dict[str, Any]] = {}
    last_marketing = contact.get("last_marketing_at")
    base, index = start, 0
    for _ in range(MAX_ACTIONS_PER_PASS * 4):
        if index >= len(scenario.steps):
            out.append({"at": local(base), "step": None, "action": "completed"})
            return out
        step = scenario.steps[index]
        wake = engine.wake_time(step.wait, base, tz, context(contact, trigger))
        if wake is None:
            out.append(
                {
                    "at": local(base),
                    "step": step.id,
                    "action": "skipped",
                    "reason": "date_unknown",
                }
            )
            index += 1
            continue
        base = max(wake, base)
        entry: dict[str, Any] = {"at": local(base), "step": step.id}
        action = step.action
        if isinstance(action, Send):
            if not contact.get("email"):
                out.append({**entry, "action": "skipped", "reason": "no_address"})
            elif not engine.has_consent(contact, scenario.mail_kind):
                out.append({**entry, "action": "skipped", "reason": "no_consent"})
            elif engine.topic_opted_out(contact, scenario.mail_kind, action.topic):
                out.append({**entry, "action": "skipped", "reason": "topic_opted_out"})
            else:
                # As in the timers: a mail due the moment the contact's own action enrolls
                # them answers that action and is not held.
                answers_action = scenario.trigger.event is not None and base == start
                if scenario.mail_kind == "marketing" and not answers_action:
                    held = engine.hold_until(rules, tz, last_marketing, base)
                    if held is not None:
                        base = held
                        entry = {**entry, "at": local(held), "held": True}
                if scenario.mail_kind == "marketing":
                    last_marketing = base
                variant = engine.choose_variant(
                    action.variants, scenario.id, step.id, contact["id"]
                )
                out.append(
                    {
                        **entry,
                        "action": "send",
                        "template": variant.template,
                        "variant": variant.name,
                    }
                )
                facts[step.id] = {
                    "sent": True,
                    "opened": assume.opened,
                    "clicked": assume.clicked,
                    "clicked_links": [],
                }
        elif isinstance(action, Branch):
            ctx = context(contact, trigger, facts)
            target = next((goto for cond, goto in action.cases if matches(cond, ctx)), None)
            target = target or action.otherwise
            out.append({**entry, "action": "branch", "goto": target})
            if target is not None:
                index = scenario.step_index(target)
                continue
        elif isinstance(action, Update):
            contact["attributes"].update(action.set)
            out.append({**entry, "action": "update"})
        elif isinstance(action, Notify):
            out.append({**entry, "action": "notify", "url": action.url, "reason": action.reason})
        elif isinstance(action, Enter):
            out.append({**entry, "action": "enter", "scenario": action.scenario})
        elif isinstance(action, End):
            out.append({**entry, "action": "completed"})
            return out
        index += 1
    out.append({"at": local(base), "step": None, "action": "truncated"})
    return out
