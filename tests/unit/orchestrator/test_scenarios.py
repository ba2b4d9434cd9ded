from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from stepmail_orchestrator.scenarios import ScenarioError, load_dir, parse_duration, parse_scenario

WELCOME: dict[str, Any] = {
    "id": "welcome",
    "trigger": {"event": "signup"},
    "steps": [
        {"id": "hello", "send": {"template": "welcome"}},
        {"id": "tips", "wait": "2d", "send": {"template": "tips"}},
    ],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", timedelta(0)),
        ("30m", timedelta(minutes=30)),
        ("6h", timedelta(hours=6)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "2 days", "1y", "d"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_scenario_defaults_and_ids():
    scenario = parse_scenario(WELCOME, "welcome.yaml")
    assert scenario.mail_kind == "marketing"
    assert [s.id for s in scenario.steps] == ["hello", "tips"]
    assert scenario.steps[1].wait.duration == timedelta(days=2)
    assert scenario.entry_rule == "once"
    assert scenario.templates == {"welcome", "tips"}


def test_digest_changes_with_content_only():
    a = parse_scenario(WELCOME)
    b = parse_scenario({**WELCOME})
    changed = parse_scenario({**WELCOME, "steps": WELCOME["steps"][:1]})
    assert a.digest() == b.digest() != changed.digest()
    assert parse_scenario(a.to_definition()).digest() == a.digest()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": "Bad Id"}, "id"),
        ({"trigger": {}}, "trigger"),
        ({"steps": []}, "steps"),
        ({"steps": [{"id": "a", "send": {}}]}, "steps[0].send"),
        ({"steps": [{"id": "a", "wait": "soon", "send": {"template": "t"}}]}, "steps[0].wait"),
        ({"mail_kind": "spam"}, "mail_kind"),
        ({"steps": [{"id": "a", "send": {"template": "t"}, "end": True}]}, "steps[0]"),
        (
            {"steps": [{"id": "a", "branch": {"cases": [{"if": {}, "goto": "zz"}]}}]},
            "steps[0].branch",
        ),
        (
            {
                "steps": [
                    {"id": "a", "branch": {"cases": [{"if": {"x": {"almost": 1}}, "goto": "a"}]}}
                ]
            },
            "steps[0].branch.cases[0].if.x.almost",
        ),
        ({"trigger": {"event": "x", "where": {"a": {"in": 3}}}}, "trigger.where.a.in"),
        ({"trigger": {"yearly": {"date": "trigger.properties.day"}}}, "trigger.yearly.date"),
        ({"entry": {"rule": "again_after"}}, "entry.cooloff"),
        ({"surprise": 1}, "(top)"),
        (
            {"steps": [{"id": "a", "send": {"template": "t"}}, {"id": "a", "end": True}]},
            "steps[1].id",
        ),
    ],
)
def test_errors_name_file_and_field(change, field):
    with pytest.raises(ScenarioError) as err:
        parse_scenario({**WELCOME, **change}, "welcome.yaml")
    assert str(err.value).startswith(f"welcome.yaml: {field}:")


def test_example_scenarios_load(repo_root: Path):
    scenarios = load_dir(repo_root / "examples" / "scenarios")
    assert "welcome" in {s.id for s in scenarios}


def test_catalogue_scenarios_are_valid(repo_root: Path):
    scenarios = {s.id: s for s in load_dir(repo_root / "examples" / "scenarios" / "catalog")}
    assert set(scenarios) == {
        "birthday",
        "cart-abandonment",
        "pricing-interest",
        "purchase-followup",
        "reengagement",
        "trial",
        "webinar",
        "welcome-series",
        "whitepaper-followup",
    }
    assert scenarios["cart-abandonment"].exits[0].same == ("checkout_token",)
    assert scenarios["birthday"].trigger.yearly_date == "contact.attributes.birthday"


def test_the_readme_example_is_a_valid_scenario(repo_root: Path):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    start = readme.index("```yaml\nid: cart-abandonment") + len("```yaml\n")
    example = yaml.safe_load(readme[start : readme.index("```", start)])
    scenario = parse_scenario(example, "README.md")
    assert [s.id for s in scenario.steps][-1] == "done"
