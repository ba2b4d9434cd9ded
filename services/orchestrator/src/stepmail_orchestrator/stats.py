"""Per-scenario and per-step figures with rates, from enrollments and message facts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepmail_orchestrator import repository

if TYPE_CHECKING:
    from stepmail_orchestrator.repository import Connection


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 4)


async def scenario_stats(conn: Connection, scenario_id: str) -> dict[str, Any]:
    totals, rows = await repository.scenario_stats(conn, scenario_id)
    steps = []
    for r in rows:
        sent = r["sent"]
        steps.append(
            {
                "step": r["step_id"],
                "variant": r["variant"],
                # "sent": the orchestrator asked for the mail; "delivered": the mail server
                # accepted it (delivery.sent); rates are of delivered mails.
                "sent": r["requested"],
                "delivered": sent,
                "failed": r["failed"],
                "opened_unique": r["opened"],
                "clicked_unique": r["clicked"],
                "unsubscribed": r["unsubscribed"],
                "complained": r["complained"],
                "converted": r["converted"],
                "open_rate": _rate(r["opened"], sent),
                "click_rate": _rate(r["clicked"], sent),
                "click_to_open_rate": _rate(r["clicked"], r["opened"]),
                "unsubscribe_rate": _rate(r["unsubscribed"], sent),
                "complaint_rate": _rate(r["complained"], sent),
            }
        )
    entered = totals["entered"]
    return {
        "scenario": scenario_id,
        "entered": entered,
        "held_out": totals["held_out"],
        "active": totals["active"],
        "completed": totals["completed"],
        "exited": totals["exited"],
        "converted": totals["converted"],
        "completion_rate": _rate(totals["completed"], entered - totals["held_out"]),
        "conversion_rate": _rate(totals["converted"], entered - totals["held_out"]),
        "steps": steps,
    }
