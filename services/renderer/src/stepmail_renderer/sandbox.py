"""The Jinja sandbox templates run in: no attribute tricks, no huge values, no silent blanks."""

import operator
from collections.abc import Mapping
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, Template, TemplateError, TemplateNotFound
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from stepmail_common.errors import PermanentError
from stepmail_renderer.filters import FILTERS

# A template that multiplies its way to gigabytes would stall the partition.
MAX_REPEAT = 100_000
MAX_EXPONENT = 100


class TemplateRenderError(PermanentError):
    """A template that failed to render: a missing variable, a sandbox violation, a bug."""


class TemplateSyntaxProblem(PermanentError):
    """A template whose source does not compile."""

    def __init__(self, message: str, lineno: int | None = None) -> None:
        super().__init__(message)
        self.lineno = lineno


class LayoutLoader(BaseLoader):
    """Shared layouts and partials (``layouts/<name>``), from one fixed set of versions."""

    def __init__(self, layouts: Mapping[str, str]) -> None:
        self._layouts = dict(layouts)

    def get_source(self, environment: Any, template: str) -> tuple[str, str | None, Any]:
        source = self._layouts.get(template)
        if source is None:
            raise TemplateNotFound(template)
        return source, None, lambda: True


class MailSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, strict about undefined names and about value sizes."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        # On data (dicts) a dot reads a key, never a method: ``event.properties.items``
        # is the cart's items, and when they are missing it is undefined (an error),
        # not ``dict.items``. Loop over a mapping with ``| items`` or ``| dictsort``.
        if isinstance(obj, dict):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError("exponent too large")
            return operator.pow(left, right)
        for seq, count in ((left, right), (right, left)):
            if (
                isinstance(seq, str | list | tuple)
                and isinstance(count, int)
                and len(seq) * count > MAX_REPEAT
            ):
                raise SecurityError("repetition too large")
        return operator.mul(left, right)


def environment(*, autoescape: bool, layouts: Mapping[str, str] | None = None) -> MailSandbox:
    """A sandbox with the mail filters and, when given, the layouts it may extend/include."""
    env = MailSandbox(
        autoescape=autoescape,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
        loader=LayoutLoader(layouts or {}),
    )
    env.filters.update(FILTERS)
    return env


HTML_ENV = environment(autoescape=True)
TEXT_ENV = environment(autoescape=False)


def compile_template(env: MailSandbox, source: str, where: str) -> Template:
    try:
        return env.from_string(source)
    except TemplateError as exc:
        lineno = getattr(exc, "lineno", None)
        at = f" line {lineno}" if lineno else ""
        raise TemplateSyntaxProblem(f"{where}{at}: {exc}", lineno) from exc


def render(template: Template, context: dict[str, Any], where: str) -> str:
    """Render, turning every failure of the template into ``TemplateRenderError``.

    What ``Template.render`` does, without merging the template's globals through a
    ``ChainMap`` on every call: templates made by ``compile_template`` have no globals of
    their own, so the environment's (a plain dict) are all there is.
    """
    env = template.environment
    try:
        names = dict(env.globals)
        names.update(context)
        ctx = new_context(env, template.name, template.blocks, names, True)
        return env.concat(template.root_render_func(ctx))
    except Exception as exc:
        # Templates can fail in any way Python can (1/0, int('x')); all of it is the
        # template's fault, never worth a retry.
        raise TemplateRenderError(f"{where}: {exc.__class__.__name__}: {exc}") from exc
