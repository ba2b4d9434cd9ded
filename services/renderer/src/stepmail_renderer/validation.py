"""What a template is checked for when it is saved, before any mail depends on it.

- every part compiles (syntax errors name the part and the line);
- every layout or partial it extends or includes is stored, and compiles;
- every variable it reads is known: ``contact.<field>``, ``contact.attributes.<name>``
  for names declared in ``contact_attributes``, ``event.name``,
  ``event.properties.<name>`` for names declared in ``event_properties``, ``scenario``,
  ``step``, ``sender`` and ``unsubscribe_url``; a typo is caught here instead of
  dead-lettering mails later;
- a marketing template shows ``{{ unsubscribe_url }}`` in its HTML body (and its text
  body, if it has one); the footer carries the link too, but the law and the mailbox
  providers want the way out visible in the mail itself;
- the sender it names is configured.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from jinja2 import TemplateSyntaxError, meta, nodes

from stepmail_renderer.sandbox import MailSandbox, environment
from stepmail_renderer.senders import SenderBook
from stepmail_renderer.templates import LAYOUT_NAME, TemplateSource

CONTACT_FIELDS = frozenset({"id", "email", "name", "locale", "time_zone", "attributes"})
EVENT_FIELDS = frozenset({"name", "properties"})
SCENARIO_FIELDS = frozenset({"id", "version"})
STEP_FIELDS = frozenset({"id", "index"})
SENDER_FIELDS = frozenset({"legal_name", "postal_address", "contact"})
CONTEXT = frozenset({"contact", "event", "scenario", "step", "sender", "unsubscribe_url"})
# The parts of a template, as the API names them (the CLI maps them to files).
PARTS = (("subject", False), ("preheader", True), ("html", True), ("text", False))


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found, with the field (part) it is in."""

    field: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "detail": self.detail}


def _chain(node: nodes.Node) -> tuple[str, list[str]] | None:
    """``contact.attributes.plan`` → ("contact", ["attributes", "plan"]); None if dynamic."""
    path: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            path.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            if not isinstance(node.arg.value, str):
                return None
            path.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            return node.name, path[::-1]
        else:
            return None


class _Checker:
    def __init__(self, source: TemplateSource) -> None:
        self.attributes = (
            frozenset(source.contact_attributes) if source.contact_attributes is not None else None
        )
        self.properties = (
            frozenset(source.event_properties) if source.event_properties is not None else None
        )

    def path(self, root: str, path: list[str]) -> str | None:
        """Why ``root.path`` is unknown, or ``None`` when it is fine."""
        dotted = ".".join([root, *path])
        if not path:
            return None
        head = path[0]
        known = {
            "contact": CONTACT_FIELDS,
            "event": EVENT_FIELDS,
            "scenario": SCENARIO_FIELDS,
            "step": STEP_FIELDS,
            "sender": SENDER_FIELDS,
        }.get(root)
        if known is None:
            return None
        if head not in known:
            return f"unknown variable {dotted}: {root} has {', '.join(sorted(known))}"
        if len(path) < 2:
            return None
        if (
            root == "contact"
            and head == "attributes"
            and (self.attributes is None or path[1] not in self.attributes)
        ):
            return (
                f"unknown variable {dotted}: declare {path[1]!r} in contact_attributes"
                " of template.yaml"
            )
        if (
            root == "event"
            and head == "properties"
            and (self.properties is None or path[1] not in self.properties)
        ):
            return (
                f"unknown variable {dotted}: declare {path[1]!r} in event_properties"
                " of template.yaml"
            )
        return None

    def walk(self, node: nodes.Node) -> Iterator[tuple[int, str]]:
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            found = _chain(node)
            if found is not None and found[0] in CONTEXT:
                reason = self.path(*found)
                if reason:
                    yield node.lineno, reason
                return
        for child in node.iter_child_nodes():
            yield from self.walk(child)


def _referenced(ast: nodes.Template) -> list[str | None]:
    return list(meta.find_referenced_templates(ast))


def _parse(env: MailSandbox, field: str, source: str, issues: list[Issue]) -> nodes.Template | None:
    try:
        return env.parse(source)
    except TemplateSyntaxError as exc:
        issues.append(Issue(field, f"line {exc.lineno}: {exc.message}"))
        return None


def _with_layouts(
    env: MailSandbox,
    field: str,
    ast: nodes.Template,
    layouts: Mapping[str, str],
    issues: list[Issue],
) -> list[tuple[str, nodes.Template]]:
    """``ast`` and every layout it reaches, each with the field its problems belong to."""
    found: list[tuple[str, nodes.Template]] = [(field, ast)]
    seen: set[str] = set()
    queue = [(field, ast)]
    while queue:
        owner, tree = queue.pop()
        for name in _referenced(tree):
            if name is None:
                issues.append(
                    Issue(owner, "extends/include must name a layout literally: 'layouts/<file>'")
                )
                continue
            if name in seen:
                continue
            seen.add(name)
            if not LAYOUT_NAME.match(name) or name not in layouts:
                issues.append(Issue(owner, f"layout {name!r} is not stored (apply it first)"))
                continue
            layout_ast = _parse(env, name, layouts[name], issues)
            if layout_ast is not None:
                found.append((name, layout_ast))
                queue.append((name, layout_ast))
    return found


def validate_template(
    source: TemplateSource, layouts: Mapping[str, str], senders: SenderBook
) -> list[Issue]:
    """Every problem of ``source`` (empty when it may be saved)."""
    issues: list[Issue] = []
    if not senders.knows(source.sender):
        issues.append(Issue("sender", f"no sender {source.sender!r} is configured"))
    checker = _Checker(source)
    html_env = environment(autoescape=True, layouts=layouts)
    text_env = environment(autoescape=False, layouts=layouts)
    allowed = CONTEXT | frozenset(html_env.globals)
    shows_unsubscribe: dict[str, bool] = {}
    for field, is_html in PARTS:
        text = getattr(source, field)
        if text is None:
            continue
        env = html_env if is_html else text_env
        ast = _parse(env, field, text, issues)
        if ast is None:
            continue
        trees = _with_layouts(env, field, ast, layouts, issues)
        mentions = False
        for owner, tree in trees:
            for name in sorted(meta.find_undeclared_variables(tree) - allowed):
                issues.append(
                    Issue(owner, f"unknown variable {name!r}: templates see {sorted(CONTEXT)}")
                )
            for line, reason in checker.walk(tree):
                issues.append(Issue(owner, f"line {line}: {reason}"))
            mentions = mentions or any(
                n.name == "unsubscribe_url" for n in tree.find_all(nodes.Name)
            )
        shows_unsubscribe[field] = mentions
        try:
            env.from_string(text)
        except TemplateSyntaxError as exc:  # semantic errors: unknown filter, bad block
            issues.append(Issue(field, f"line {exc.lineno}: {exc.message}"))
    if source.mail_kind == "marketing":
        for field in ("html", "text"):
            if field in shows_unsubscribe and not shows_unsubscribe[field]:
                issues.append(
                    Issue(
                        field,
                        "a marketing mail must show an unsubscribe link: add"
                        " {{ unsubscribe_url }} (the footer carries one as well)",
                    )
                )
    return _unique(issues)


def validate_layout(name: str, source: str, layouts: Mapping[str, str]) -> list[Issue]:
    """Problems of a layout or partial about to be stored."""
    issues: list[Issue] = []
    if not LAYOUT_NAME.match(name):
        issues.append(Issue("name", "a layout is named layouts/<lowercase file>.j2"))
        return issues
    env = environment(autoescape=name.endswith(".html.j2"), layouts={**layouts, name: source})
    ast = _parse(env, "source", source, issues)
    if ast is not None:
        _with_layouts(env, "source", ast, {**layouts, name: source}, issues)
        for extra in sorted(meta.find_undeclared_variables(ast) - CONTEXT - set(env.globals)):
            issues.append(
                Issue("source", f"unknown variable {extra!r}: templates see {sorted(CONTEXT)}")
            )
        try:
            env.from_string(source)
        except TemplateSyntaxError as exc:
            issues.append(Issue("source", f"line {exc.lineno}: {exc.message}"))
    return _unique(issues)


def _unique(issues: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))
