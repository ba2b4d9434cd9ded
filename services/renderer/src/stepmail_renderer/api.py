"""The template store's HTTP API, previews and test sends; all behind the admin token.

- ``PUT /v1/templates/{id}``: save (a new version when the content changed), after the
  checks of ``validation``; ``POST /v1/templates:validate``: the checks only.
- ``GET /v1/templates``, ``GET /v1/templates/{id}`` (latest), ``/versions``,
  ``/versions/{n}``; ``DELETE /v1/templates/{id}`` archives (steps naming it then
  dead-letter; saving it again brings it back).
- ``PUT /v1/layouts/{file}``, ``POST /v1/layouts:validate``, ``GET /v1/layouts[/{file}]``.
- ``POST /v1/templates/{id}/preview``, ``GET /preview/{id}`` (a page for a person),
  ``POST /v1/templates/{id}/test-send``.
- ``GET /v1/stats/templates``: render failures by template version and error.
"""

import base64
import email
import email.policy
import hashlib
import hmac
import html
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from stepmail_common.clock import Clock
from stepmail_common.errors import PermanentError
from stepmail_common.events import derived_id
from stepmail_common.kafka import EventProducer
from stepmail_common.problems import Problem
from stepmail_common.topics import Topics
from stepmail_renderer import metrics, mime
from stepmail_renderer.handlers import rendered_event
from stepmail_renderer.rendering import MailRenderer, RenderedMail
from stepmail_renderer.repository import RendererRepository
from stepmail_renderer.resolver import ArchivedTemplateError, UnknownTemplateError, load_compiled
from stepmail_renderer.schemas import StepDue
from stepmail_renderer.templates import (
    LAYOUTS_DIR,
    TEMPLATE_ID,
    LayoutSource,
    StoredTemplate,
    TemplateLoadError,
    TemplateSource,
    source_from_document,
)
from stepmail_renderer.validation import Issue, validate_layout, validate_template

MAX_BODY = 512_000
SAMPLE_CONTACT: dict[str, Any] = {
    "id": "preview",
    "email": "preview@example.com",
    "name": "山田 花子",
    "locale": "ja-JP",
    "time_zone": "Asia/Tokyo",
    "attributes": {},
}
_LAYOUT_FILE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,199}\.j2$")


class TemplateIn(BaseModel):
    """A template as ``template.yaml`` plus its bodies."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=200)
    subject: str = Field(max_length=2_000)
    preheader: str | None = Field(default=None, max_length=2_000)
    mail_kind: Literal["marketing", "transactional"] = "marketing"
    html: str = Field(max_length=MAX_BODY)
    text: str | None = Field(default=None, max_length=MAX_BODY)
    sender: str | None = Field(default=None, max_length=100)
    event_properties: list[str] | None = Field(default=None, max_length=200)
    contact_attributes: list[str] | None = Field(default=None, max_length=200)
    sample: dict[str, Any] | None = None
    description: str | None = Field(default=None, max_length=2_000)


class TemplateValidateIn(TemplateIn):
    """A template to check without saving; ``layouts`` stand in for stored ones."""

    id: str = Field(max_length=200)
    layouts: dict[str, str] | None = None


class LayoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(max_length=MAX_BODY)


class LayoutValidateIn(LayoutIn):
    name: str = Field(max_length=220)
    layouts: dict[str, str] | None = None


class SampleIn(BaseModel):
    """The contact and event to render with; the template's ``sample`` fills the gaps."""

    model_config = ConfigDict(extra="forbid")

    contact: dict[str, Any] | None = None
    event: dict[str, Any] | None = None
    version: int | None = Field(default=None, ge=1)


class TestSendIn(SampleIn):
    to: str = Field(max_length=254)
    test_send_id: str | None = Field(default=None, min_length=1, max_length=100)


def _invalid(issues: list[Issue], what: str) -> Problem:
    fields = ", ".join(dict.fromkeys(i.field for i in issues))
    return Problem(
        422,
        f"{what} is invalid",
        f"Invalid field(s): {fields}",
        type_="urn:stepmail:problem:validation",
        errors=[i.as_dict() for i in issues],
    )


def admin_guard(token: str) -> Callable[[Request], Awaitable[None]]:
    """``Authorization: Bearer <token>`` (or HTTP Basic with the token as password, for
    the preview page in a browser), compared in constant time."""
    expected = hashlib.sha256(token.encode()).digest()

    async def guard(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        secret = given.strip()
        if scheme.lower() == "basic":
            try:
                secret = base64.b64decode(secret, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                secret = ""
        ok = scheme.lower() in ("bearer", "basic")
        if not hmac.compare_digest(hashlib.sha256(secret.encode()).digest(), expected) or not ok:
            browser = request.url.path.startswith("/preview/")
            raise Problem(
                401,
                "Unauthorized",
                "Send the admin token as 'Authorization: Bearer <token>'.",
                type_="urn:stepmail:problem:unauthorized",
                headers={
                    "WWW-Authenticate": 'Basic realm="stepmail"'
                    if browser
                    else 'Bearer realm="stepmail"'
                },
            )

    return guard


def _summary(stored: StoredTemplate) -> dict[str, Any]:
    return {**stored.source.to_document(), "version": stored.version, "archived": stored.archived}


class TemplateService:
    """What the routes do, with their dependencies."""

    def __init__(
        self,
        repo: RendererRepository,
        renderer: MailRenderer,
        producer: EventProducer,
        topics: Topics,
        clock: Clock,
    ) -> None:
        self.repo = repo
        self.renderer = renderer
        self.producer = producer
        self.topics = topics
        self.clock = clock

    async def check(
        self, template_id: str, body: TemplateIn, layouts: dict[str, str] | None = None
    ) -> TemplateSource:
        """The template ``body`` describes, or a 422 problem naming every issue."""
        doc = body.model_dump(exclude={"id", "layouts"}, exclude_none=True)
        try:
            source = source_from_document(template_id, doc, "template")
        except TemplateLoadError as exc:
            issue = Issue(exc.field, str(exc).removeprefix("template: "))
            raise _invalid([issue], "Template") from None
        stored = {name: src for name, (_, src) in (await self.repo.layouts()).items()}
        issues = validate_template(source, {**stored, **(layouts or {})}, self.renderer.senders)
        if issues:
            raise _invalid(issues, "Template")
        return source

    async def save(self, template_id: str, body: TemplateIn) -> tuple[int, bool]:
        if body.id is not None and body.id != template_id:
            raise _invalid([Issue("id", "differs from the id in the URL")], "Template")
        source = await self.check(template_id, body)
        version, created = await self.repo.save_template(source)
        if created:
            metrics.TEMPLATE_VERSIONS_CREATED.inc()
        return version, created

    def sample_step(
        self, stored: StoredTemplate, body: SampleIn, message_id: str, email_to: str | None
    ) -> StepDue:
        """A due step from the sample: the request's values over the template's over ours."""
        sample = stored.source.sample or {}
        contact = {**SAMPLE_CONTACT, **(sample.get("contact") or {}), **(body.contact or {})}
        if email_to is not None:
            contact["email"] = email_to
        event = {"name": "preview", "properties": {}, **(sample.get("event") or {})}
        event.update(body.event or {})
        try:
            return StepDue.from_data(
                {
                    "message_id": message_id,
                    "enrollment_id": message_id,
                    "scenario": {
                        "id": "preview" if email_to is None else "test-send",
                        "version": 1,
                    },
                    "step": {"id": stored.source.id, "index": 0},
                    "template": stored.source.id,
                    "template_version": stored.version,
                    "mail_kind": stored.source.mail_kind,
                    "contact": contact,
                    "event": {"name": str(event["name"]), "properties": event["properties"]},
                }
            )
        except (KeyError, TypeError) as exc:
            raise _invalid([Issue("contact", f"incomplete sample: {exc}")], "Sample") from None

    async def render_sample(
        self,
        template_id: str,
        body: SampleIn,
        message_id: str,
        email_to: str | None = None,
        extra_headers: tuple[str, ...] = (),
    ) -> tuple[StepDue, RenderedMail]:
        try:
            compiled = await load_compiled(self.repo, self.renderer, template_id, body.version)
        except (UnknownTemplateError, ArchivedTemplateError) as exc:
            raise Problem(404, "Template not found", str(exc)) from None
        stored = StoredTemplate(compiled.source, compiled.version)
        step = self.sample_step(stored, body, message_id, email_to)
        try:
            mail = self.renderer.render(step, compiled, extra_headers)
        except PermanentError as exc:  # the template or the sample data is at fault
            raise _invalid([Issue("template", str(exc))], "Rendering") from None
        return step, mail


def _headers(mail: RenderedMail) -> list[dict[str, str]]:
    msg = email.message_from_string(mail.mime, policy=email.policy.default)
    return [{"name": k, "value": str(v)} for k, v in msg.items()]


def _preview_page(template_id: str, version: int, mail: RenderedMail) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(h['name'])}</th><td>{e(h['value'])}</td></tr>" for h in _headers(mail)
    )
    return (
        '<!DOCTYPE html><html lang="ja"><head><meta charset="utf-8">'
        f"<title>プレビュー / Preview: {e(template_id)} v{version}</title>"
        "<style>body{font-family:sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;"
        "padding:4px 8px;text-align:left;vertical-align:top;word-break:break-all}"
        "iframe{width:100%;height:640px;border:1px solid #ccc}"
        "pre{white-space:pre-wrap;background:#f7f7f7;padding:12px;border:1px solid #ddd}"
        "</style></head><body>"
        f"<h1>{e(template_id)} <small>v{version}</small></h1>"
        f"<h2>件名 / Subject</h2><p>{e(mail.subject)}</p>"
        f"<h2>ヘッダー / Headers</h2><table>{rows}</table>"
        "<h2>HTML</h2>"
        f'<iframe sandbox="" referrerpolicy="no-referrer" srcdoc="{e(mail.html)}"></iframe>'
        f"<h2>テキスト / Text</h2><pre>{e(mail.text)}</pre>"
        "</body></html>"
    )


def _service(request: Request) -> TemplateService:
    service: TemplateService = request.app.state.templates
    return service


Service = Annotated[TemplateService, Depends(_service)]


def _check_id(template_id: str) -> None:
    if not TEMPLATE_ID.match(template_id):
        raise _invalid(
            [Issue("id", "a template id is lowercase letters, digits, '-' and '_'")], "Template"
        )


def _layout_name(file: str) -> str:
    if not _LAYOUT_FILE.match(file):
        raise _invalid([Issue("name", "a layout file is lowercase, ending in .j2")], "Layout")
    return f"{LAYOUTS_DIR}/{file}"


def _iso(at: datetime) -> str:
    return at.isoformat()


def install_api(app: FastAPI, admin_token: str) -> None:
    """Add the template store, layout, preview, test-send and stats routes."""
    guard = Depends(admin_guard(admin_token))
    router = APIRouter(dependencies=[guard])

    @router.put("/v1/templates/{template_id}")
    async def put_template(template_id: str, body: TemplateIn, svc: Service) -> JSONResponse:
        _check_id(template_id)
        version, created = await svc.save(template_id, body)
        return JSONResponse(
            {"id": template_id, "version": version, "created": created},
            status_code=201 if created else 200,
        )

    @router.post("/v1/templates:validate")
    async def validate(body: TemplateValidateIn, svc: Service) -> dict[str, Any]:
        _check_id(body.id)
        await svc.check(body.id, body, body.layouts)
        return {"id": body.id, "valid": True}

    @router.get("/v1/templates")
    async def list_templates(
        svc: Service, include_archived: Annotated[bool, Query()] = False
    ) -> dict[str, Any]:
        found = await svc.repo.list_templates(include_archived)
        return {
            "templates": [
                {
                    "id": t.id,
                    "version": t.version,
                    "mail_kind": t.mail_kind,
                    "description": t.description,
                    "archived": t.archived,
                    "updated_at": _iso(t.updated_at),
                }
                for t in found
            ]
        }

    async def _get(svc: TemplateService, template_id: str, version: int | None) -> dict[str, Any]:
        stored = await svc.repo.template(template_id, version)
        if stored is None:
            raise Problem(404, "Template not found", f"no template {template_id!r}")
        return _summary(stored)

    @router.get("/v1/templates/{template_id}")
    async def get_template(template_id: str, svc: Service) -> dict[str, Any]:
        return await _get(svc, template_id, None)

    @router.get("/v1/templates/{template_id}/versions")
    async def get_versions(template_id: str, svc: Service) -> dict[str, Any]:
        found = await svc.repo.versions(template_id)
        if not found:
            raise Problem(404, "Template not found", f"no template {template_id!r}")
        return {
            "id": template_id,
            "versions": [{"version": v, "created_at": _iso(at)} for v, at in found],
        }

    @router.get("/v1/templates/{template_id}/versions/{version}")
    async def get_version(template_id: str, version: int, svc: Service) -> dict[str, Any]:
        return await _get(svc, template_id, version)

    @router.delete("/v1/templates/{template_id}")
    async def archive(template_id: str, svc: Service) -> dict[str, Any]:
        if not await svc.repo.archive(template_id):
            raise Problem(404, "Template not found", f"no template {template_id!r}")
        return {"id": template_id, "archived": True}

    @router.put("/v1/layouts/{file}")
    async def put_layout(file: str, body: LayoutIn, svc: Service) -> JSONResponse:
        name = _layout_name(file)
        stored = {n: src for n, (_, src) in (await svc.repo.layouts()).items()}
        issues = validate_layout(name, body.source, stored)
        if issues:
            raise _invalid(issues, "Layout")
        version, created = await svc.repo.save_layout(LayoutSource(name, body.source))
        if created:
            metrics.TEMPLATE_VERSIONS_CREATED.inc()
        return JSONResponse(
            {"id": name, "version": version, "created": created},
            status_code=201 if created else 200,
        )

    @router.post("/v1/layouts:validate")
    async def validate_layout_only(body: LayoutValidateIn, svc: Service) -> dict[str, Any]:
        stored = {n: src for n, (_, src) in (await svc.repo.layouts()).items()}
        issues = validate_layout(body.name, body.source, {**stored, **(body.layouts or {})})
        if issues:
            raise _invalid(issues, "Layout")
        return {"id": body.name, "valid": True}

    @router.get("/v1/layouts")
    async def list_layouts(svc: Service) -> dict[str, Any]:
        found = await svc.repo.layouts()
        return {"layouts": [{"name": n, "version": v} for n, (v, _) in sorted(found.items())]}

    @router.get("/v1/layouts/{file}")
    async def get_layout(
        file: str, svc: Service, version: Annotated[int | None, Query(ge=1)] = None
    ) -> dict[str, Any]:
        name = _layout_name(file)
        found = await svc.repo.layout(name, version)
        if found is None:
            raise Problem(404, "Layout not found", f"no layout {name!r}")
        return {"name": name, "version": found[0], "source": found[1]}

    @router.post("/v1/templates/{template_id}/preview")
    async def preview(template_id: str, body: SampleIn, svc: Service) -> dict[str, Any]:
        _, mail = await svc.render_sample(template_id, body, f"preview-{uuid.uuid4()}")
        return {
            "id": template_id,
            "subject": mail.subject,
            "headers": _headers(mail),
            "html": mail.html,
            "text": mail.text,
            "mime": mail.mime,
        }

    @router.get("/preview/{template_id}", response_class=HTMLResponse)
    async def preview_page(
        template_id: str, svc: Service, version: Annotated[int | None, Query(ge=1)] = None
    ) -> Response:
        _, mail = await svc.render_sample(
            template_id, SampleIn(version=version), f"preview-{uuid.uuid4()}"
        )
        stored = await svc.repo.template(template_id, version)
        assert stored is not None
        return HTMLResponse(
            _preview_page(template_id, stored.version, mail),
            headers={
                # The mail's HTML shows in a script-less sandboxed frame; images may load.
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
                " img-src https: http: data:; frame-ancestors 'none'",
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )

    @router.post("/v1/templates/{template_id}/test-send", status_code=202)
    async def test_send(template_id: str, body: TestSendIn, svc: Service) -> dict[str, Any]:
        try:
            to = mime.check_address(body.to.strip())
        except mime.MimeError as exc:
            raise _invalid([Issue("to", str(exc))], "Test send") from None
        test_send_id = body.test_send_id or str(uuid.uuid4())
        message_id = derived_id("renderer", "test-send", test_send_id)
        step, mail = await svc.render_sample(
            template_id,
            body,
            message_id,
            email_to=to,
            extra_headers=(mime.plain("X-Stepmail-Test-Send", test_send_id),),
        )
        event = rendered_event(step, mail, svc.clock)
        await svc.producer.publish(svc.topics.mail_rendered, event, key=step.contact_id)
        metrics.TEST_SENDS.inc()
        return {"id": template_id, "test_send_id": test_send_id, "message_id": message_id}

    @router.get("/v1/stats/templates")
    async def stats(svc: Service) -> dict[str, Any]:
        found = await svc.repo.failures()
        return {
            "templates": {
                template_id: {
                    "failures": sum(f.failures for f in rows),
                    "by_version": [
                        {
                            "version": f.version,
                            "error": f.error,
                            "failures": f.failures,
                            "last_at": _iso(f.last_at),
                        }
                        for f in rows
                    ],
                }
                for template_id, rows in found.items()
            }
        }

    app.include_router(router)
