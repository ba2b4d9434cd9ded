"""Moving enrollments through their scenario: entering, acting on steps, exiting.

An enrollment is always *at* a step index with ``next_due_at`` = when that step acts.
Entering a step computes the end of its wait; a step whose wait is already over acts at
once, so one pass runs every step that is due. Durations count from when the previous
step was due (not when it ran), so a late timer does not push the rest of the series.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from stepmail_common import event_types
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.outbox import OutboxEvent
from stepmail_common.topics import Topics
from stepmail_orchestrator import engine, metrics, repository
from stepmail_orchestrator.conditions import matches
from stepmail_orchestrator.repository import Enrollment, PendingWrites
from stepmail_orchestrator.scenarios import Branch, End, Enter, Notify, Scenario, Send, Update

if TYPE_CHECKING:
    from stepmail_orchestrator.repository import Connection

log = logging.getLogger(__name__)
SOURCE = "urn:stepmail:orchestrator"
# The per-scenario counter of emitted steps, looked up once per scenario (hot path).
_steps_due = functools.cache(metrics.STEPS_DUE.labels)
# Actions one pass may take for one enrollment; the rest continue on the next pass.
MAX_ACTIONS_PER_PASS = 50


def message_id(enrollment_id: str, step_index: int) -> str:
    """The mail's id, the same however often the step is looked at."""
    return derived_id("message", enrollment_id, str(step_index))


def context(
    contact: dict[str, Any], trigger: dict[str, Any], steps: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What conditions and dates are looked up in."""
    return {
        "contact": contact,
        "trigger": {"name": trigger.get("name"), "properties": trigger.get("properties", {})},
        "steps": steps or {},
    }


class Progress:
    def __init__(self, topics: Topics, rules: engine.ContactRules) -> None:
        self._topics = topics
        self._rules = rules

    async def enroll(
        self,
        conn: Connection,
        scenario: Scenario,
        version: int,
        contact: dict[str, Any],
        trigger: dict[str, Any],
        now: datetime,
        base: datetime | None = None,
        *,
        responding: bool = True,
        writes: PendingWrites | None = None,
    ) -> bool:
        """Enroll if the entry rule and audience allow; True when an enrollment was made.

        ``responding``: the contact's own action started it, so mails due at once answer
        that action and are not held by the send window or the frequency cap.
        """
        contact_id = contact["id"]
        if not matches(scenario.audience, context(contact, trigger)):
            return False
        w = writes if writes is not None else PendingWrites()
        pair = (scenario.id, contact_id)
        entry = w.locked.pop(pair, None)
        if entry is None:
            if pair in w.entries:
                await w.flush(conn)  # the lock's read must see the enrollment made before
            entry = await repository.lock_entry(conn, scenario.id, contact_id)
        if entry.last_created_at is not None:
            if scenario.entry_rule == "once":
                return False
            if scenario.entry_rule == "again_after":
                if entry.has_active:
                    return False
                assert scenario.cooloff is not None
                if (entry.last_ended_at or entry.last_created_at) + scenario.cooloff > now:
                    return False
        held_out = engine.in_holdout(scenario.holdout_percent, scenario.id, contact_id)
        status = "held_out" if held_out else "active"
        enrollment = repository.new_enrollment(scenario, version, contact_id, trigger, status, now)
        w.enroll(enrollment)
        metrics.ENROLLED.labels(scenario.id, status).inc()
        if not held_out:
            await self.run(
                conn,
                w,
                enrollment,
                scenario,
                contact,
                now,
                base=base or now,
                act_first=False,
                responding=responding,
            )
        if writes is None:
            await w.flush(conn)
        return True

    async def run(
        self,
        conn: Connection,
        w: PendingWrites,
        enrollment: Enrollment,
        scenario: Scenario,
        contact: dict[str, Any],
        now: datetime,
        *,
        base: datetime,
        act_first: bool,
        responding: bool = False,
    ) -> None:
        """Act on the current step if due (``act_first``), then enter the following ones."""
        index = enrollment.step_index
        started = base
        tz = engine.zone(contact.get("time_zone"))
        for _ in range(MAX_ACTIONS_PER_PASS):
            if index >= len(scenario.steps):
                w.finish(enrollment.id, "completed", now)
                metrics.COMPLETED.labels(scenario.id).inc()
                return
            step = scenario.steps[index]
            if not act_first:
                ctx = context(contact, enrollment.trigger_event)
                wake = engine.wake_time(step.wait, base, tz, ctx)
                if wake is None:
                    metrics.STEPS_SKIPPED.labels(scenario.id, "date_unknown").inc()
                    index += 1
                    continue
                if wake > now:
                    w.schedule(enrollment.id, index, wake)
                    return
                base = wake
            act_first = False
            action = step.action
            if isinstance(action, Send):
                answers_action = responding and base == started
                outcome = await self._send(
                    w, enrollment, scenario, index, contact, now, base, hold=not answers_action
                )
                if outcome == "exited":
                    return
                if isinstance(outcome, datetime):
                    w.schedule(enrollment.id, index, outcome)
                    return
            elif isinstance(action, Branch):
                await w.flush(conn)
                facts = await repository.message_facts(conn, enrollment.id)
                ctx = context(contact, enrollment.trigger_event, facts)
                target = next((goto for cond, goto in action.cases if matches(cond, ctx)), None)
                target = target or action.otherwise
                if target is not None:
                    index = scenario.step_index(target)
                    continue
            elif isinstance(action, Update):
                await w.flush(conn)
                await repository.update_profile(
                    conn, contact["id"], action.add_tags, action.remove_tags, action.set
                )
                contact = await repository.get_contact(conn, contact["id"]) or contact
            elif isinstance(action, Notify):
                await repository.add_notification(
                    conn,
                    action.url,
                    _notification(enrollment, scenario, step.id, action, contact, now),
                    now,
                )
            elif isinstance(action, Enter):
                await self._enter(conn, w, action.scenario, contact, enrollment, now)
            elif isinstance(action, End):
                w.finish(enrollment.id, "completed", now)
                metrics.COMPLETED.labels(scenario.id).inc()
                return
            index += 1
        w.schedule(enrollment.id, index, now)

    async def _send(
        self,
        w: PendingWrites,
        enrollment: Enrollment,
        scenario: Scenario,
        index: int,
        contact: dict[str, Any],
        now: datetime,
        due: datetime,
        *,
        hold: bool = True,
    ) -> datetime | str:
        """Emit the step's mail (``"sent"``), skip it (``"skipped"``, recorded), end the
        enrollment (``"exited"``), or say until when it must wait (a datetime).

        The rules are applied at the step's due time, not at the time the timer ran, so a
        late pass holds (or does not hold) exactly as a punctual one would have; the mail's
        ``due_at`` is that (possibly held) due time.
        """
        step = scenario.steps[index]
        assert isinstance(step.action, Send)
        if not matches(scenario.audience, context(contact, enrollment.trigger_event)):
            w.finish(enrollment.id, "exited", now, "left_audience")
            metrics.EXITED.labels(scenario.id, "left_audience").inc()
            return "exited"
        if not contact.get("email"):
            metrics.STEPS_SKIPPED.labels(scenario.id, "no_address").inc()
            return "skipped"
        if not engine.has_consent(contact, scenario.mail_kind):
            metrics.STEPS_SKIPPED.labels(scenario.id, "no_consent").inc()
            return "skipped"
        topic = step.action.topic
        if engine.topic_opted_out(contact, scenario.mail_kind, topic):
            metrics.STEPS_SKIPPED.labels(scenario.id, "topic_opted_out").inc()
            return "skipped"
        if scenario.mail_kind == "marketing" and hold:
            held = engine.hold_until(
                self._rules,
                engine.zone(contact.get("time_zone")),
                contact.get("last_marketing_at"),
                due,
            )
            if held is not None:
                metrics.STEPS_HELD.labels(scenario.id).inc()
                if held > now:
                    return held
                due = held
        variant = engine.choose_variant(step.action.variants, scenario.id, step.id, contact["id"])
        mid = message_id(str(enrollment.id), index)
        data: dict[str, Any] = {
            "message_id": mid,
            "enrollment_id": str(enrollment.id),
            "scenario": {"id": scenario.id, "version": enrollment.scenario_version},
            "step": {"id": step.id, "index": index},
            "template": variant.template,
            "variant": variant.name,
            "mail_kind": scenario.mail_kind,
            "contact": {
                k: v
                for k, v in contact.items()
                if k in ("id", "email", "name", "locale", "time_zone", "attributes")
                and v is not None
            },
            "event": {
                "name": enrollment.trigger_event.get("name", ""),
                "properties": enrollment.trigger_event.get("properties", {}),
            },
            "due_at": due.isoformat(),
        }
        if topic is not None:
            data["topic"] = topic
        event = CloudEvent(
            type=event_types.STEP_DUE,
            source=SOURCE,
            subject=contact["id"],
            id=derived_id("step-due", mid),
            time=now,
            data=data,
        )
        # The mail continues the trace of the event that enrolled the contact: the relay's
        # "send" span becomes a child of that trace.
        carrier = enrollment.trigger_event.get("trace") or None
        w.outbox.append(OutboxEvent(self._topics.steps_due, contact["id"], event, carrier))
        w.message(mid, enrollment, step.id, variant.name, scenario.mail_kind, now)
        if scenario.mail_kind == "marketing":
            w.touch_marketing(contact["id"], due)
            contact["last_marketing_at"] = due
        _steps_due(scenario.id).inc()
        return "sent"

    async def _enter(
        self,
        conn: Connection,
        w: PendingWrites,
        scenario_id: str,
        contact: dict[str, Any],
        source: Enrollment,
        now: datetime,
    ) -> None:
        for candidate, version in await repository.latest_active(conn):
            if candidate.id == scenario_id:
                trigger = {**source.trigger_event, "entered_from": source.scenario_id}
                await self.enroll(
                    conn, candidate, version, contact, trigger, now, responding=False, writes=w
                )
                return
        metrics.STEPS_SKIPPED.labels(source.scenario_id, "enter_inactive").inc()

    async def fire_due(self, conn: Connection, now: datetime, limit: int) -> int:
        """One timer pass in the caller's transaction: act on every due enrollment."""
        due = await repository.claim_due(conn, now, limit)
        if not due:
            return 0
        statuses = await repository.scenario_statuses(conn)
        w = PendingWrites()
        for enrollment, contact in due:
            assert enrollment.next_due_at is not None
            metrics.TIMER_LAG.observe(max(0.0, (now - enrollment.next_due_at).total_seconds()))
            scenario = await repository.scenario_of(conn, enrollment)
            if statuses.get(scenario.id) == "paused":
                # Paused: the step waits and is looked at again later, nothing is lost.
                w.schedule(enrollment.id, enrollment.step_index, now + PAUSE_RECHECK)
                continue
            await self.run(
                conn,
                w,
                enrollment,
                scenario,
                contact,
                now,
                base=enrollment.next_due_at,
                act_first=True,
            )
        await w.flush(conn)
        return len(due)

    async def exit_on_event(
        self,
        conn: Connection,
        contact: dict[str, Any],
        name: str,
        properties: dict[str, Any],
        now: datetime,
    ) -> None:
        """End the contact's enrollments whose scenario exits on this event."""
        w = PendingWrites()
        for enrollment in await repository.active_enrollments(conn, contact["id"]):
            scenario = await repository.scenario_of(conn, enrollment)
            trigger_props = enrollment.trigger_event.get("properties", {})
            for rule in scenario.exits:
                if rule.event != name:
                    continue
                if not matches(rule.where, {"properties": properties, "contact": contact}):
                    continue
                if any(properties.get(k) != trigger_props.get(k) for k in rule.same):
                    continue
                w.finish(enrollment.id, "exited", now, f"event:{name}", converted=rule.conversion)
                metrics.EXITED.labels(scenario.id, "event").inc()
                if rule.conversion:
                    metrics.CONVERTED.labels(scenario.id).inc()
                break
        await w.flush(conn)

    async def exit_kind(
        self, conn: Connection, contact_id: str, mail_kind: str, now: datetime
    ) -> None:
        """Opt-out is final: end every enrollment of that kind of mail."""
        w = PendingWrites()
        for enrollment in await repository.active_enrollments(conn, contact_id):
            scenario = await repository.scenario_of(conn, enrollment)
            if scenario.mail_kind == mail_kind:
                w.finish(enrollment.id, "exited", now, "opted_out")
                metrics.EXITED.labels(scenario.id, "opted_out").inc()
        await w.flush(conn)

    async def exit_left_audience(
        self, conn: Connection, contact: dict[str, Any], now: datetime
    ) -> None:
        w = PendingWrites()
        for enrollment in await repository.active_enrollments(conn, contact["id"]):
            scenario = await repository.scenario_of(conn, enrollment)
            if not matches(scenario.audience, context(contact, enrollment.trigger_event)):
                w.finish(enrollment.id, "exited", now, "left_audience")
                metrics.EXITED.labels(scenario.id, "left_audience").inc()
        await w.flush(conn)


PAUSE_RECHECK = timedelta(minutes=1)


def _notification(
    enrollment: Enrollment,
    scenario: Scenario,
    step_id: str,
    action: Notify,
    contact: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    return {
        "type": "stepmail.scenario.notification",
        "reason": action.reason,
        "scenario": {"id": scenario.id, "version": enrollment.scenario_version, "step": step_id},
        "enrollment_id": str(enrollment.id),
        "contact": {
            k: contact.get(k)
            for k in ("id", "email", "name", "attributes", "tags")
            if contact.get(k)
        },
        "at": now.isoformat(),
    }
