"""The Jinja sandbox templates run in: no attribute tricks, no huge values, no silent blanks."""

import operator
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from stepmail_common.errors import PermanentError

# A template that multiplies its way to gigabytes would stall the partition.
MAX_REPEAT = 100_000
MAX_EXPONENT = 100


class TemplateRenderError(PermanentError):
    """A template that failed to render: a missing variable, a sandbox violation, a bug."""


class TemplateSyntaxProblem(PermanentError):
    """A template whose source does not compile."""


class MailSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, strict about undefined names and about value sizes."""

    intercepted_binops = frozenset({"*", "**"})

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


def _environment(*, autoescape: bool) -> MailSandbox:
    return MailSandbox(
        autoescape=autoescape,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
    )


HTML_ENV = _environment(autoescape=True)
TEXT_ENV = _environment(autoescape=False)


def compile_template(env: MailSandbox, source: str, where: str) -> Template:
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise TemplateSyntaxProblem(f"{where}: {exc}") from exc


def render(template: Template, context: dict[str, Any], where: str) -> str:
    """Render, turning every failure of the template into ``TemplateRenderError``."""
    try:
        return template.render(context)
    except Exception as exc:
        # Templates can fail in any way Python can (1/0, int('x')); all of it is the
        # template's fault, never worth a retry.
        raise TemplateRenderError(f"{where}: {exc.__class__.__name__}: {exc}") from exc
