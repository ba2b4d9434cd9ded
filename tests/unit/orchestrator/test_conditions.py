import pytest

from stepmail_orchestrator.conditions import ConditionError, check, matches

CTX = {
    "properties": {
        "total": "12800.00",
        "currency": "JPY",
        "items": [{"sku": "A"}],
        "tags": ["vip"],
    },
    "contact": {"attributes": {"plan": "free", "industry": "製造業"}, "tags": ["lead"]},
}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (None, True),
        ({}, True),
        ({"properties.currency": "JPY"}, True),
        ({"properties.currency": "USD"}, False),
        ({"properties.total": {"gte": 10000}}, True),
        ({"properties.total": {"gt": 12800}}, False),
        ({"properties.total": {"lte": "12800"}}, True),
        ({"contact.attributes.plan": {"in": ["free", "trial"]}}, True),
        ({"contact.attributes.plan": {"nin": ["free"]}}, False),
        ({"contact.attributes.missing": {"exists": False}}, True),
        ({"contact.attributes.plan": {"exists": True}}, True),
        ({"contact.attributes.missing": {"ne": "x"}}, True),
        ({"contact.attributes.missing": "x"}, False),
        ({"properties.tags": {"contains": "vip"}}, True),
        ({"contact.attributes.industry": {"starts_with": "製造"}}, True),
        ({"properties.items.0.sku": "A"}, True),
        ({"any": [{"properties.currency": "USD"}, {"contact.tags": {"contains": "lead"}}]}, True),
        ({"all": [{"properties.currency": "JPY"}, {"contact.attributes.plan": "paid"}]}, False),
        ({"not": {"contact.attributes.plan": "paid"}}, True),
        ({"properties.currency": "JPY", "contact.attributes.plan": "paid"}, False),
        ({"properties.total": {"gte": "abc"}}, False),
    ],
)
def test_matches(condition, expected):
    assert matches(condition, CTX) is expected


@pytest.mark.parametrize(
    ("condition", "where"),
    [
        ([], "where"),
        ({"a": {"bigger": 1}}, "where.a.bigger"),
        ({"a": {"in": "x"}}, "where.a.in"),
        ({"a": {"exists": "yes"}}, "where.a.exists"),
        ({"all": []}, "where.all"),
        ({"any": [{"b": {}}]}, "where.any[0].b"),
        ({"a..b": 1}, "where.a..b"),
    ],
)
def test_malformed_conditions_name_the_path(condition, where):
    with pytest.raises(ConditionError) as err:
        check(condition, "where")
    assert str(err.value).startswith(where + ":")
