"""The compiled templates a batch of due steps names, with one query per batch.

A stored template version never changes, so it is read once and its compiled form is kept
(``MailRenderer.compiled``, per version and layout versions). What does change is which
version is the latest, whether a template is archived and which layouts are current: one
query per batch asks for the first two for all of the batch's templates, and one more for
the layouts' versions only when a template of the batch uses layouts. A template
published or archived therefore takes effect from the next batch on.
"""

import re
from collections import OrderedDict
from collections.abc import Iterable

from stepmail_common.errors import PermanentError
from stepmail_renderer.rendering import CompiledTemplate, Layouts, MailRenderer
from stepmail_renderer.repository import RendererRepository
from stepmail_renderer.templates import StoredTemplate

TemplateKey = tuple[str, int | None]
"""A template id and the version a step names (``None``: the latest)."""

_USES_LAYOUTS = re.compile(r"\{%-?\s*(?:extends|include|import|from)\b")
_STORED_CACHE = 256
_LAYOUT_SETS = 8


class UnknownTemplateError(PermanentError):
    """A step names a template (or version) the renderer does not have."""


class ArchivedTemplateError(PermanentError):
    """A step names a template that was archived."""


def _unknown(template_id: str, version: int | None) -> UnknownTemplateError:
    at = f" v{version}" if version is not None else ""
    return UnknownTemplateError(f"no template {template_id!r}{at}")


def uses_layouts(stored: StoredTemplate) -> bool:
    src = stored.source
    return any(
        part is not None and _USES_LAYOUTS.search(part)
        for part in (src.subject, src.preheader, src.html, src.text)
    )


async def load_compiled(
    repo: RendererRepository, renderer: MailRenderer, template_id: str, version: int | None
) -> CompiledTemplate:
    """The compiled template a request names, with the latest layouts if it uses any."""
    stored = await repo.template(template_id, version)
    if stored is None:
        raise _unknown(template_id, version)
    if stored.archived:
        raise ArchivedTemplateError(f"template {template_id!r} is archived")
    layouts = Layouts.stored(await repo.layouts()) if uses_layouts(stored) else Layouts.empty()
    return renderer.compiled(stored, layouts)


class TemplateResolver:
    """Resolves the templates of a batch of steps to compiled templates, or to why not."""

    def __init__(self, repo: RendererRepository, renderer: MailRenderer) -> None:
        self._repo = repo
        self._renderer = renderer
        self._stored: OrderedDict[tuple[str, int], tuple[StoredTemplate, bool]] = OrderedDict()
        self._layout_sets: OrderedDict[tuple[tuple[str, int], ...], Layouts] = OrderedDict()

    async def resolve(
        self, wanted: Iterable[TemplateKey]
    ) -> dict[TemplateKey, CompiledTemplate | PermanentError]:
        """Each wanted template compiled, or the permanent error that refuses its steps."""
        keys = set(wanted)
        if not keys:
            return {}
        latest = await self._repo.latest_versions(sorted({template_id for template_id, _ in keys}))
        current_layouts: list[Layouts] = []
        out: dict[TemplateKey, CompiledTemplate | PermanentError] = {}
        for key in keys:
            try:
                out[key] = await self._compiled(key, latest, current_layouts)
            except PermanentError as exc:
                out[key] = exc
        return out

    async def _compiled(
        self,
        key: TemplateKey,
        latest: dict[str, tuple[int, bool]],
        current_layouts: list[Layouts],
    ) -> CompiledTemplate:
        template_id, version = key
        found = latest.get(template_id)
        if found is None:
            raise _unknown(template_id, version)
        latest_version, archived = found
        if archived:
            raise ArchivedTemplateError(f"template {template_id!r} is archived")
        stored, layouts_used = await self._stored_version(
            template_id, latest_version if version is None else version
        )
        if not layouts_used:
            return self._renderer.compiled(stored, Layouts.empty())
        if not current_layouts:
            current_layouts.append(await self._current_layouts())
        return self._renderer.compiled(stored, current_layouts[0])

    async def _stored_version(self, template_id: str, version: int) -> tuple[StoredTemplate, bool]:
        key = (template_id, version)
        found = self._stored.get(key)
        if found is not None:
            self._stored.move_to_end(key)
            return found
        stored = await self._repo.template(template_id, version)
        if stored is None:
            raise _unknown(template_id, version)
        found = self._stored[key] = (stored, uses_layouts(stored))
        if len(self._stored) > _STORED_CACHE:
            self._stored.popitem(last=False)
        return found

    async def _current_layouts(self) -> Layouts:
        """The latest layouts: their versions are asked for, their sources read once."""
        versions = tuple(sorted((await self._repo.layout_versions()).items()))
        found = self._layout_sets.get(versions)
        if found is not None:
            self._layout_sets.move_to_end(versions)
            return found
        layouts = Layouts.stored(await self._repo.layouts())
        self._layout_sets[layouts.versions] = layouts
        if len(self._layout_sets) > _LAYOUT_SETS:
            self._layout_sets.popitem(last=False)
        return layouts
