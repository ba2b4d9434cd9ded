"""The condition language of scenarios: trigger filters, audiences, branches, exits.

A condition is a mapping. Its keys are dotted paths into the context (``properties.total``,
``contact.attributes.plan``, ``trigger.properties.cart_token``) or the combinators
``all``/``any`` (lists of conditions) and ``not`` (a condition); every key must hold.
A path's value is either a plain value (equality) or a mapping of operators::

    properties.currency: JPY
    properties.total: {gte: 5000}
    contact.attributes.plan: {in: [free, trial]}
    contact.attributes.unsubscribed_at: {exists: false}

Operators: eq, ne, in, nin, gt, gte, lt, lte, exists, contains, starts_with.
Numbers given as strings (``"12800.00"``, as Shopify sends prices) compare as numbers.
"""

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

OPERATORS = frozenset(
    {"eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists", "contains", "starts_with"}
)
COMBINATORS = frozenset({"all", "any", "not"})
_MISSING = object()


class ConditionError(ValueError):
    """A condition that is not well formed; the message names the path."""


def lookup(context: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path``, or ``_MISSING``."""
    value: Any = context
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def _equal(a: Any, b: Any) -> bool:
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None and not (isinstance(a, str) and isinstance(b, str)):
        return na == nb
    return bool(a == b)


def _order(a: Any, b: Any) -> int | None:
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return (na > nb) - (na < nb)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    return None


def _apply(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return (actual is not _MISSING and actual is not None) == bool(expected)
    if actual is _MISSING:
        return op in ("ne", "nin")
    if op == "eq":
        return _equal(actual, expected)
    if op == "ne":
        return not _equal(actual, expected)
    if op == "in":
        return any(_equal(actual, e) for e in expected)
    if op == "nin":
        return not any(_equal(actual, e) for e in expected)
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        return isinstance(actual, list) and any(_equal(a, expected) for a in actual)
    if op == "starts_with":
        return isinstance(actual, str) and actual.startswith(str(expected))
    order = _order(actual, expected)
    if order is None:
        return False
    return {"gt": order > 0, "gte": order >= 0, "lt": order < 0, "lte": order <= 0}[op]


def matches(condition: Mapping[str, Any] | None, context: Mapping[str, Any]) -> bool:
    """Whether ``context`` satisfies ``condition`` (an absent condition always holds)."""
    if not condition:
        return True
    for key, spec in condition.items():
        if key == "all":
            ok = all(matches(c, context) for c in spec)
        elif key == "any":
            ok = any(matches(c, context) for c in spec)
        elif key == "not":
            ok = not matches(spec, context)
        elif isinstance(spec, Mapping):
            actual = lookup(context, key)
            ok = all(_apply(op, actual, expected) for op, expected in spec.items())
        else:
            ok = _apply("eq", lookup(context, key), spec)
        if not ok:
            return False
    return True


def check(condition: Any, where: str) -> None:
    """Raise ``ConditionError`` naming ``where`` if ``condition`` is not well formed."""
    if not isinstance(condition, Mapping):
        raise ConditionError(f"{where}: must be a mapping of paths to values or operators")
    for key, spec in condition.items():
        at = f"{where}.{key}"
        if key in ("all", "any"):
            if not isinstance(spec, list) or not spec:
                raise ConditionError(f"{at}: must be a non-empty list of conditions")
            for i, sub in enumerate(spec):
                check(sub, f"{at}[{i}]")
        elif key == "not":
            check(spec, at)
        elif not isinstance(key, str) or not key or key.startswith(".") or ".." in key:
            raise ConditionError(f"{at}: not a dotted path")
        elif isinstance(spec, Mapping):
            if not spec:
                raise ConditionError(f"{at}: names no operator")
            for op, expected in spec.items():
                if op not in OPERATORS:
                    raise ConditionError(
                        f"{at}.{op}: unknown operator (use one of {', '.join(sorted(OPERATORS))})"
                    )
                if op in ("in", "nin") and not isinstance(expected, list):
                    raise ConditionError(f"{at}.{op}: must be a list")
                if op == "exists" and not isinstance(expected, bool):
                    raise ConditionError(f"{at}.{op}: must be true or false")
