from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from stepmail_orchestrator.engine import ContactRules, parse_window
from stepmail_orchestrator.scenarios import parse_scenario
from stepmail_orchestrator.timeline import Assume, simulate

TOKYO = ZoneInfo("Asia/Tokyo")
START = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # Monday 10:00 in Tokyo
CONTACT = {
    "id": "c-1",
    "email": "a@example.com",
    "time_zone": "Asia/Tokyo",
    "consent": {"marketing": {"status": "granted"}},
}
REENGAGE = parse_scenario(
    {
        "id": "re",
        "trigger": {"inactive_for": "90d"},
        "steps": [
            {"id": "first", "send": {"template": "r1"}},
            {
                "id": "check",
                "wait": "3d",
                "branch": {"cases": [{"if": {"steps.first.opened": True}, "goto": "last"}]},
            },
            {"id": "again", "send": {"template": "r1b"}},
            {"id": "last", "wait": "7d", "send": {"template": "stay"}},
        ],
    }
)


def _sends(entries):
    return [
        (e["step"], e["template"], datetime.fromisoformat(e["at"]))
        for e in entries
        if e["action"] == "send"
    ]


def test_timeline_follows_waits_and_assumed_engagement():
    not_opened = simulate(REENGAGE, CONTACT, {"name": "inactive"}, START, ContactRules())
    assert _sends(not_opened) == [
        ("first", "r1", START),
        ("again", "r1b", START + timedelta(days=3)),
        ("last", "stay", START + timedelta(days=10)),
    ]
    opened = simulate(
        REENGAGE, CONTACT, {"name": "inactive"}, START, ContactRules(), Assume(opened=True)
    )
    assert [s for s, _, _ in _sends(opened)] == ["first", "last"]
    assert opened[-1]["action"] == "completed"


def test_timeline_applies_the_send_window_and_consent():
    night = START + timedelta(hours=13)  # 23:00 in Tokyo
    rules = ContactRules(send_window=parse_window("09:00-21:00"))
    entries = simulate(REENGAGE, CONTACT, {"name": "inactive"}, night, rules)
    assert entries[0]["at"] == datetime(2026, 11, 24, 9, 0, tzinfo=TOKYO).isoformat()
    assert entries[0]["held"] is True
    no_consent = simulate(REENGAGE, {**CONTACT, "consent": {}}, {"name": "x"}, START, rules)
    assert {e.get("reason") for e in no_consent if e["action"] == "skipped"} == {"no_consent"}
    assert _sends(no_consent) == []


def test_a_held_out_contact_gets_nothing():
    scenario = parse_scenario(
        {
            "id": "h",
            "holdout_percent": 100,
            "trigger": {"event": "x"},
            "steps": [{"id": "a", "end": True}],
        }
    )
    assert [
        e["action"] for e in simulate(scenario, CONTACT, {"name": "x"}, START, ContactRules())
    ] == ["held_out"]


def test_a_mail_answering_the_contacts_own_action_is_not_held_but_the_next_is():
    scenario = parse_scenario(
        {
            "id": "w",
            "trigger": {"event": "signup"},
            "steps": [
                {"id": "now", "send": {"template": "w1"}},
                {"id": "later", "wait": "1h", "send": {"template": "w2"}},
            ],
        }
    )
    night = START + timedelta(hours=13, minutes=30)  # 23:30 in Tokyo
    rules = ContactRules(send_window=parse_window("09:00-21:00"))
    sends = _sends(simulate(scenario, CONTACT, {"name": "signup"}, night, rules))
    assert sends == [
        ("now", "w1", night),
        ("later", "w2", datetime(2026, 11, 24, 9, 0, tzinfo=TOKYO)),
    ]
