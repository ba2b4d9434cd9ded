"""Accounting for every mail of a chaos run, from the SMTP sink and the sender's ledger.

Each expected contact should get exactly one mail. Per contact, with ``copies`` the mails
the sink accepted for it (any message id) and the ledger rows the sender recorded for it:

- ledger ``ambiguous`` (the sender was killed with it in flight at the SMTP server):
  **ambiguous**, whether the sink has it or not; two copies or more are counted apart
  (``ambiguous_duplicated``), since a held ambiguous mail must not be sent again;
- otherwise one copy: **delivered** (exactly once);
- otherwise two or more: **duplicated**;
- otherwise none, with a ledger row ``failed``, ``suppressed`` or ``deferred``: **failed**
  (recorded, but not delivered);
- otherwise none: **lost**, with where it was lost: ``no ledger row`` (it never reached
  the sender) or ``ledger <state>`` (it did, and the sink has nothing).

Mails at the sink for contacts nobody expected are **unexpected**.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

UNDELIVERED_STATES = frozenset({"failed", "suppressed", "deferred"})
_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One row of the sender's ``deliveries``."""

    message_id: str
    contact_id: str
    state: str


@dataclass
class Accounting:
    """The counts of a run, with a few contact ids of each problem for the report."""

    expected: int = 0
    delivered: int = 0
    ambiguous: int = 0
    ambiguous_delivered: int = 0
    ambiguous_duplicated: int = 0
    duplicated: int = 0
    failed: int = 0
    lost: int = 0
    unexpected: int = 0
    lost_where: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def accounted(self) -> int:
        """Contacts whose fate is known: delivered once, ambiguous or failed on record."""
        return self.delivered + self.ambiguous + self.failed

    @property
    def ok(self) -> bool:
        """Nothing lost and nothing duplicated outside the ambiguous set."""
        return self.lost == 0 and self.duplicated == 0 and self.unexpected == 0

    def _note(self, kind: str, contact_id: str) -> None:
        if len(self.examples[kind]) < _EXAMPLES:
            self.examples[kind].append(contact_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "delivered_once": self.delivered,
            "ambiguous": self.ambiguous,
            "ambiguous_delivered": self.ambiguous_delivered,
            "ambiguous_duplicated": self.ambiguous_duplicated,
            "lost": self.lost,
            "lost_where": dict(self.lost_where),
            "duplicated": self.duplicated,
            "failed": self.failed,
            "unexpected": self.unexpected,
            "ok": self.ok,
            "examples": dict(self.examples),
        }


def account(
    expected: Iterable[str],
    accepted: Iterable[tuple[str, str]],
    ledger: Iterable[LedgerRow],
) -> Accounting:
    """Account for each ``expected`` contact id.

    ``accepted`` holds ``(contact id, message id)`` of each mail the sink accepted,
    duplicates included; ``ledger`` the sender's rows.
    """
    wanted = set(expected)
    copies: Counter[str] = Counter()
    result = Accounting(expected=len(wanted))
    for contact_id, _message_id in accepted:
        if contact_id in wanted:
            copies[contact_id] += 1
        else:
            result.unexpected += 1
            result._note("unexpected", contact_id)
    states: dict[str, list[str]] = defaultdict(list)
    for row in ledger:
        states[row.contact_id].append(row.state)
    for contact_id in sorted(wanted):
        count = copies[contact_id]
        recorded = states.get(contact_id, [])
        if "ambiguous" in recorded:
            result.ambiguous += 1
            if count == 1:
                result.ambiguous_delivered += 1
            elif count > 1:
                result.ambiguous_duplicated += 1
                result._note("ambiguous_duplicated", contact_id)
        elif count == 1:
            result.delivered += 1
        elif count > 1:
            result.duplicated += 1
            result._note("duplicated", contact_id)
        elif any(state in UNDELIVERED_STATES for state in recorded):
            result.failed += 1
            result._note("failed", contact_id)
        else:
            result.lost += 1
            where = f"ledger {'/'.join(sorted(set(recorded)))}" if recorded else "no ledger row"
            result.lost_where[where] += 1
            result._note("lost", contact_id)
    return result
