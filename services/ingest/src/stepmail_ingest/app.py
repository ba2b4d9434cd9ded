"""Ingest's HTTP app: the front door e-commerce and CRM systems post to."""

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Header, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from pydantic import BaseModel, TypeAdapter, ValidationError

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.loops import PeriodicLoop
from stepmail_common.problems import Problem
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.topics import Topics
from stepmail_common.webapp import (
    FASTAPI_TELEMETRY,
    dependency_checks,
    install_common,
    start_background,
)
from stepmail_ingest import metrics
from stepmail_ingest.adapters import segment, shopify
from stepmail_ingest.auth import ApiKeys, hash_api_key, new_api_key, unauthorized
from stepmail_ingest.decoding import (
    M,
    body_as,
    decode_body,
    openapi_extra,
    parse_valid,
    post_hand_read,
)
from stepmail_ingest.decoding import idempotency_key as decoded_idempotency_key
from stepmail_ingest.errors import PayloadError, SignatureError
from stepmail_ingest.limits import BodyLimit
from stepmail_ingest.openapi import install_openapi
from stepmail_ingest.ratelimit import RateLimiter, retry_after
from stepmail_ingest.repository import ApiKey, ApiKeyRow, IngestRepository, WebhookSource
from stepmail_ingest.schemas import (
    ApiKeyCreated,
    ApiKeyCreateIn,
    ApiKeyList,
    ApiKeyOut,
    BatchAccepted,
    ContactAccepted,
    ContactIn,
    ContactUpsertIn,
    EventAccepted,
    EventBatchIn,
    EventIn,
    EventResult,
    SegmentAccepted,
    SegmentBatch,
    SegmentIdentify,
    SegmentTrack,
    WebhookAccepted,
    WebhookSourceIn,
    WebhookSourceList,
    WebhookSourceOut,
    WebhookSourceSaved,
)
from stepmail_ingest.service import (
    Accepted,
    EventIntake,
    Pending,
    contact_erasure,
    contact_update,
    customer_event,
    fingerprint,
)
from stepmail_ingest.settings import IngestSettings
from stepmail_ingest.signatures import (
    new_webhook_secret,
    standard_key,
    verify_shopify,
    verify_standard,
)

log = logging.getLogger(__name__)

SourceName = Annotated[
    str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
ContactId = Annotated[str, Path(min_length=1, max_length=200)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=200,
        description="dedupes for INGEST_IDEMPOTENCY_HOURS (48 h); same key and body = same answer",
    ),
]

Responses = dict[int | str, dict[str, Any]]
AUTHED: Responses = {401: {}, 403: {}, 429: {}}
WRITES: Responses = {**AUTHED, 413: {}, 422: {}, 503: {}}


async def run_migrations(settings: IngestSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_ingest")


class IdempotencyCleanup(PeriodicLoop):
    """Deletes idempotency records older than the window, in bounded batches."""

    def __init__(self, repo: IngestRepository, interval: float) -> None:
        super().__init__(interval)
        self._repo = repo

    async def run_once(self) -> bool:
        deleted = await self._repo.forget_expired()
        if deleted:
            metrics.IDEMPOTENCY_EXPIRED.inc(deleted)
        return deleted >= 5000


@dataclass
class Ingest:
    """What the routes use, built by the lifespan."""

    settings: IngestSettings
    repo: IngestRepository
    keys: ApiKeys
    limiter: RateLimiter
    intake: EventIntake

    def admit(self, bucket: str, rate: float | None) -> None:
        wait = self.limiter.take(bucket, rate or self.settings.ingest_rate_limit_per_second)
        if wait:
            metrics.REJECTED.labels("rate_limited").inc()
            raise Problem(
                429,
                "Too many requests",
                "The rate limit of this API key is exceeded; retry after the given seconds.",
                type_="urn:stepmail:problem:rate-limited",
                headers={"Retry-After": retry_after(wait)},
            )


def _invalid(exc: ValidationError, *prefix: str | int) -> RequestValidationError:
    errors = [{**err, "loc": ("body", *prefix, *err["loc"])} for err in exc.errors()]
    return RequestValidationError(errors)


def _parse_json(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "The body is not valid JSON", "type": "json_invalid"}]
        ) from None


def _results(accepted: Sequence[Accepted]) -> list[EventResult]:
    return [
        EventResult(index=i, id=a.event_id, replayed=a.replayed) for i, a in enumerate(accepted)
    ]


def _json(doc: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A 202 serialised as is: the hot routes build their documented shape (the route's
    ``response_model``) themselves, which spares a model per event and its validation."""
    return Response(
        orjson.dumps(doc), status.HTTP_202_ACCEPTED, headers, media_type="application/json"
    )


def _key_out(row: ApiKeyRow) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        name=row.name,
        scopes=row.scopes,
        rate_limit_per_second=row.rate_limit_per_second,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _source_out(source: WebhookSource) -> WebhookSourceOut:
    return WebhookSourceOut(
        name=source.name,
        kind=source.kind,
        created_at=source.created_at,
        updated_at=source.updated_at,
    )


bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer sm_...`")
basic = HTTPBasic(auto_error=False, description="Segment: the write key as user name")


async def ingest_of(request: Request) -> Ingest:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a
    thread hand-off on every request."""
    ingest: Ingest = request.app.state.ingest
    return ingest


Ctx = Annotated[Ingest, Depends(ingest_of)]


async def _bearer_key(
    ingest: Ingest, credentials: HTTPAuthorizationCredentials | None, scope: str
) -> ApiKey:
    if credentials is None:
        raise unauthorized("Send the API key as 'Authorization: Bearer <key>'.")
    key = await ingest.keys.authenticate(credentials.credentials, scope)
    ingest.admit(key.scope, key.rate_limit_per_second)
    return key


def api_key(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    async def dependency(
        ingest: Ctx,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiKey:
        return await _bearer_key(ingest, credentials, scope)

    return dependency


async def _events_request(request: Request, model: type[M]) -> tuple[Ingest, ApiKey, str | None, M]:
    """The event routes' inputs, in FastAPI's order (see ``decoding``).

    A valid body is parsed and validated in one pass; only an invalid one is decoded
    and validated apart, to answer as FastAPI does.
    """
    raw = await request.body()
    content_type = request.headers.get("content-type")
    parsed = parse_valid(model, raw, content_type)
    body = decode_body(raw, content_type) if parsed is None else parsed
    ingest = await ingest_of(request)
    key = await _bearer_key(ingest, await bearer(request), "events:write")
    errors: list[dict[str, Any]] = []
    idempotency_key = decoded_idempotency_key(request, errors)
    if parsed is None:
        parsed = body_as(model, body, errors)
    elif errors:
        raise RequestValidationError(errors)
    return ingest, key, idempotency_key, parsed


async def segment_key(
    ingest: Ctx, credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)]
) -> ApiKey:
    if credentials is None or not credentials.username:
        raise unauthorized("Send the write key as the HTTP Basic user name.", "Basic")
    key = await ingest.keys.authenticate(credentials.username, "events:write", "Basic")
    ingest.admit(key.scope, key.rate_limit_per_second)
    return key


ContactsKey = Annotated[ApiKey, Depends(api_key("contacts:write"))]
AdminKey = Annotated[ApiKey, Depends(api_key("admin"))]
SegmentKey = Annotated[ApiKey, Depends(segment_key)]


_EVENT_OR_BATCH: TypeAdapter[EventIn | EventBatchIn] = TypeAdapter(EventIn | EventBatchIn)


def create_app(settings: IngestSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await open_database(stack, settings, settings.db_schema, "stepmail_ingest")
            producer = await open_producer(stack, settings, "ingest", [topics.contact_events])
            repo = IngestRepository(pool, settings.ingest_idempotency_hours)
            if settings.ingest_bootstrap_api_key:
                await repo.ensure_api_key(
                    "bootstrap", hash_api_key(settings.ingest_bootstrap_api_key), ["admin"]
                )
            app.state.ingest = Ingest(
                settings,
                repo,
                ApiKeys(repo, settings.ingest_api_key_cache_seconds),
                RateLimiter(settings.ingest_rate_limit_burst_seconds),
                EventIntake(repo, producer, topics, clock),
            )
            app.state.pool = pool
            app.state.producer = producer
            cleanup = IdempotencyCleanup(repo, settings.ingest_idempotency_cleanup_seconds)
            await start_background(stack, cleanup, "idempotency-cleanup", grace=5)
            yield

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        title="stepmail ingest",
        version="1.0.0",
        summary="Customer events and contact updates in; CloudEvents on Kafka out.",
        description=(
            "Every error is an RFC 9457 problem document naming the wrong field. Envelopes"
            " reject unknown fields; `properties` and `attributes` are free-form; partner"
            " formats (Segment, Shopify) ignore fields stepmail does not use. A 2xx means the"
            " broker acknowledged every event of the request; a rejected request produces"
            " nothing."
        ),
        lifespan=lifespan,
    )
    install_common(app, dependency_checks(app))
    app.add_middleware(BodyLimit, max_bytes=settings.ingest_max_body_bytes)
    install_openapi(app, [EventIn, EventBatchIn])

    # Events and contacts

    @post_hand_read(
        app,
        "/v1/events",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=EventAccepted,
        summary="Accept one customer event",
        tags=["events"],
        responses=WRITES,
        openapi_extra=openapi_extra(EventIn),
    )
    async def post_event(request: Request) -> Response:
        """202 only after the broker acknowledged the event."""
        ingest, key, idempotency_key, event = await _events_request(request, EventIn)
        dedupe = idempotency_key or (f"id:{event.id}" if event.id else None)
        item = customer_event(event, ingest.intake.now(), dedupe)
        (accepted,) = await ingest.intake.accept(key.scope, [item])
        return _json(
            {"id": accepted.event_id, "status": "accepted", "replayed": accepted.replayed},
            {"Idempotent-Replayed": "true"} if accepted.replayed else None,
        )

    @post_hand_read(
        app,
        "/v1/events:batch",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=BatchAccepted,
        summary="Accept up to 1,000 customer events at once, all or nothing",
        tags=["events"],
        responses=WRITES,
        openapi_extra=openapi_extra(EventBatchIn),
    )
    async def post_events(request: Request) -> Response:
        """Every event is validated before any is published; one publish for all.

        With an Idempotency-Key, event *i* dedupes on ``<key>:<i>``; otherwise on its ``id``.
        """
        ingest, key, idempotency_key, batch = await _events_request(request, EventBatchIn)
        if len(batch.events) > settings.ingest_max_batch:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "events"),
                        "msg": f"at most {settings.ingest_max_batch} events",
                        "type": "too_long",
                    }
                ]
            )
        now = ingest.intake.now()
        items = [
            customer_event(
                event,
                now,
                f"{idempotency_key}:{i}"
                if idempotency_key
                else (f"id:{event.id}" if event.id else None),
            )
            for i, event in enumerate(batch.events)
        ]
        accepted = await ingest.intake.accept(key.scope, items)
        replayed = sum(1 for a in accepted if a.replayed)
        return _json(
            {
                "status": "accepted",
                "accepted": len(accepted) - replayed,
                "replayed": replayed,
                "results": [
                    {"index": i, "id": a.event_id, "replayed": a.replayed}
                    for i, a in enumerate(accepted)
                ],
            }
        )

    @app.post(
        "/v1/contacts",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=ContactAccepted,
        summary="Create or update a contact's profile and record consent",
        tags=["contacts"],
        responses=WRITES,
    )
    async def post_contact(
        contact: ContactUpsertIn,
        ingest: Ctx,
        key: ContactsKey,
        idempotency_key: IdempotencyKey = None,
    ) -> ContactAccepted:
        """Publishes ``stepmail.contact.updated.v1``. Granted consent needs evidence: the
        form (id, URL or consent text) and/or the subscriber's IP as your form saw it."""
        item = contact_update(contact, ingest.intake.now(), idempotency_key)
        (accepted,) = await ingest.intake.accept(key.scope, [item])
        return ContactAccepted(
            id=accepted.event_id, contact_id=contact.id, replayed=accepted.replayed
        )

    @app.delete(
        "/v1/contacts/{contact_id}",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=ContactAccepted,
        summary="Erase a contact: every service forgets the person",
        tags=["contacts"],
        responses={**AUTHED, 422: {}, 503: {}},
    )
    async def erase_contact(
        contact_id: ContactId, ingest: Ctx, key: ContactsKey, idempotency_key: IdempotencyKey = None
    ) -> ContactAccepted:
        """Publishes the ``stepmail.contact.erased.v1`` tombstone. Ingest itself keeps no
        personal data (idempotency records hold a body digest and an event id)."""
        item = contact_erasure(contact_id, ingest.intake.now(), idempotency_key)
        (accepted,) = await ingest.intake.accept(key.scope, [item])
        return ContactAccepted(
            id=accepted.event_id, contact_id=contact_id, replayed=accepted.replayed
        )

    # Segment

    def _identify_item(
        call: SegmentIdentify, now: Any, context: Any, where: tuple[str | int, ...]
    ) -> Pending:
        contact = segment.identify_contact(call, context)
        try:
            ContactIn.model_validate(contact)
        except ValidationError as exc:
            fields = {"id": "userId", "email": "traits.email", "name": "traits.name"}
            errors = [
                {
                    **err,
                    "loc": (
                        "body",
                        *where,
                        fields.get(str(err["loc"][0]), f"traits.{err['loc'][0]}"),
                        *err["loc"][1:],
                    ),
                }
                for err in exc.errors()
            ]
            raise RequestValidationError(errors) from None
        return segment.identify(contact, call, now)

    @app.post(
        "/v1/segment/track",
        response_model=SegmentAccepted,
        summary="Segment track call (HTTP Tracking API shape)",
        tags=["segment"],
        responses=WRITES,
    )
    async def segment_track(call: SegmentTrack, ingest: Ctx, key: SegmentKey) -> SegmentAccepted:
        item = segment.track(call, ingest.intake.now())
        return SegmentAccepted(results=_results(await ingest.intake.accept(key.scope, [item])))

    @app.post(
        "/v1/segment/identify",
        response_model=SegmentAccepted,
        summary="Segment identify call: updates the contact",
        tags=["segment"],
        responses=WRITES,
    )
    async def segment_identify(
        call: SegmentIdentify, ingest: Ctx, key: SegmentKey
    ) -> SegmentAccepted:
        item = _identify_item(call, ingest.intake.now(), None, ())
        return SegmentAccepted(results=_results(await ingest.intake.accept(key.scope, [item])))

    @app.post(
        "/v1/segment/batch",
        response_model=SegmentAccepted,
        summary="Segment batch: track and identify calls; page, screen, group, alias ignored",
        tags=["segment"],
        responses=WRITES,
    )
    async def segment_batch(batch: SegmentBatch, ingest: Ctx, key: SegmentKey) -> SegmentAccepted:
        now = ingest.intake.now()
        items: list[Pending] = []
        for i, call in enumerate(batch.batch):
            if isinstance(call, SegmentTrack):
                items.append(segment.track(call, now, batch.context))
            elif isinstance(call, SegmentIdentify):
                items.append(_identify_item(call, now, batch.context, ("batch", i)))
        accepted = await ingest.intake.accept(key.scope, items) if items else []
        return SegmentAccepted(results=_results(accepted))

    # Signed webhooks

    async def _source(ingest: Ingest, name: str, kind: str) -> WebhookSource:
        source = await ingest.repo.webhook_source(name)
        if source is None or source.kind != kind:
            metrics.REJECTED.labels("bad_signature").inc()
            raise Problem(
                401,
                "Unknown webhook source",
                "No webhook source of this name is configured.",
                type_="urn:stepmail:problem:unauthorized",
            )
        ingest.admit(f"source:{name}", None)
        return source

    def _signature_problem(exc: SignatureError) -> Problem:
        metrics.REJECTED.labels("bad_signature").inc()
        return Problem(
            401, "Bad webhook signature", str(exc), type_="urn:stepmail:problem:bad-signature"
        )

    shopify_body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }

    @app.post(
        "/v1/shopify/webhooks",
        response_model=WebhookAccepted,
        summary="Shopify webhooks: orders, checkouts, customers",
        tags=["webhooks"],
        responses={401: {}, 413: {}, 422: {}, 429: {}, 503: {}},
        openapi_extra=shopify_body,
    )
    async def shopify_webhook(
        request: Request,
        ingest: Ctx,
        x_shopify_topic: Annotated[str, Header(max_length=100)],
        x_shopify_shop_domain: Annotated[str, Header(max_length=255)],
        x_shopify_hmac_sha256: Annotated[str | None, Header(max_length=100)] = None,
        x_shopify_webhook_id: Annotated[str | None, Header(max_length=200)] = None,
    ) -> WebhookAccepted:
        """Verified with ``X-Shopify-Hmac-Sha256`` over the raw body and the shop's secret
        (a webhook source of kind ``shopify`` named by the shop domain);
        ``X-Shopify-Webhook-Id`` is the idempotency key."""
        source = await _source(ingest, x_shopify_shop_domain, "shopify")
        raw = await request.body()
        try:
            verify_shopify(source.secret, x_shopify_hmac_sha256, raw)
        except SignatureError as exc:
            raise _signature_problem(exc) from None
        payload = _parse_json(raw)
        try:
            mapped = shopify.event_for(x_shopify_topic, source.name, payload, ingest.intake.now())
        except PayloadError as exc:
            raise RequestValidationError(
                [{"loc": ("body", *exc.field.split(".")), "msg": exc.detail, "type": "value_error"}]
            ) from None
        if mapped is None:
            return WebhookAccepted(
                status="ignored", reason=f"topic {x_shopify_topic} without a customer or not used"
            )
        type_, contact_id, data = mapped
        if "contact" in data:
            try:
                ContactIn.model_validate(data["contact"])
            except ValidationError as exc:
                raise _invalid(exc, "customer") from None
        dedupe = x_shopify_webhook_id
        item = Pending(
            type_,
            contact_id,
            data,
            dedupe,
            fingerprint(raw) if dedupe else b"",
            "shopify",
            checked=False,
        )
        accepted = await ingest.intake.accept(f"shopify:{source.name}", [item])
        return WebhookAccepted(status="accepted", results=_results(accepted))

    standard_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/EventIn"},
                            {"$ref": "#/components/schemas/EventBatchIn"},
                        ]
                    }
                }
            },
        }
    }

    @app.post(
        "/v1/webhooks/{source}",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=WebhookAccepted,
        summary="Generic webhooks signed the Standard Webhooks way",
        tags=["webhooks"],
        responses={401: {}, 413: {}, 422: {}, 429: {}, 503: {}},
        openapi_extra=standard_body,
    )
    async def standard_webhook(
        source: SourceName,
        request: Request,
        ingest: Ctx,
        webhook_id: Annotated[str | None, Header(max_length=200)] = None,
        webhook_timestamp: Annotated[str | None, Header(max_length=20)] = None,
        webhook_signature: Annotated[str | None, Header(max_length=2000)] = None,
    ) -> WebhookAccepted:
        """The body is one event (as ``/v1/events``) or ``{"events": [...]}``; signed over
        ``webhook-id.webhook-timestamp.body`` within a 5-minute window; ``webhook-id`` is
        the idempotency key (event *i* of a batch: ``<webhook-id>:<i>``)."""
        found = await _source(ingest, source, "standard")
        raw = await request.body()
        try:
            verify_standard(
                found.secret,
                webhook_id,
                webhook_timestamp,
                webhook_signature,
                raw,
                time.time(),
                settings.ingest_webhook_tolerance_seconds,
            )
        except SignatureError as exc:
            raise _signature_problem(exc) from None
        assert webhook_id is not None
        payload = _parse_json(raw)
        try:
            parsed = _EVENT_OR_BATCH.validate_python(payload)
        except ValidationError as exc:
            raise _invalid(exc) from None
        now = ingest.intake.now()
        if isinstance(parsed, EventIn):
            items = [customer_event(parsed, now, webhook_id, "webhook")]
        else:
            items = [
                customer_event(event, now, f"{webhook_id}:{i}", "webhook")
                for i, event in enumerate(parsed.events)
            ]
        accepted = await ingest.intake.accept(f"webhook:{found.name}", items)
        return WebhookAccepted(status="accepted", results=_results(accepted))

    # Administration

    @app.post(
        "/v1/admin/api-keys",
        status_code=status.HTTP_201_CREATED,
        response_model=ApiKeyCreated,
        summary="Create an API key (the key is shown this once)",
        tags=["admin"],
        responses={**AUTHED, 413: {}, 422: {}, 503: {}},
    )
    async def create_api_key(body: ApiKeyCreateIn, ingest: Ctx, _: AdminKey) -> ApiKeyCreated:
        key = new_api_key()
        row = await ingest.repo.create_api_key(
            body.name, hash_api_key(key), sorted(set(body.scopes)), body.rate_limit_per_second
        )
        return ApiKeyCreated(**_key_out(row).model_dump(), key=key)

    @app.get(
        "/v1/admin/api-keys",
        response_model=ApiKeyList,
        summary="List API keys (never the keys themselves)",
        tags=["admin"],
        responses={**AUTHED, 503: {}},
    )
    async def list_api_keys(ingest: Ctx, _: AdminKey) -> ApiKeyList:
        return ApiKeyList(api_keys=[_key_out(r) for r in await ingest.repo.list_api_keys()])

    @app.delete(
        "/v1/admin/api-keys/{key_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Revoke an API key",
        tags=["admin"],
        responses={**AUTHED, 404: {}, 422: {}, 503: {}},
    )
    async def revoke_api_key(key_id: uuid.UUID, ingest: Ctx, _: AdminKey) -> Response:
        key_hash = await ingest.repo.revoke_api_key(key_id)
        if key_hash is None:
            raise Problem(404, "Not found", "No API key has this id.")
        ingest.keys.forget(key_hash)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.put(
        "/v1/admin/webhook-sources/{name}",
        response_model=WebhookSourceSaved,
        summary="Create or replace a webhook source and its secret",
        tags=["admin"],
        responses={**AUTHED, 413: {}, 422: {}, 503: {}},
    )
    async def put_webhook_source(
        name: SourceName, body: WebhookSourceIn, ingest: Ctx, _: AdminKey
    ) -> WebhookSourceSaved:
        """``standard``: the Standard Webhooks secret (``whsec_`` + base64), generated and
        shown once when omitted. ``shopify``: name = the shop domain, secret = the app's
        client secret. Secrets are stored as given in ingest's schema (verifying an HMAC
        needs them in the clear), never logged, never shown again."""
        secret = body.secret
        generated = None
        if body.kind == "standard":
            if secret is None:
                secret = generated = new_webhook_secret()
            try:
                standard_key(secret)
            except ValueError as exc:
                raise RequestValidationError(
                    [{"loc": ("body", "secret"), "msg": str(exc), "type": "value_error"}]
                ) from None
        elif secret is None:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "secret"),
                        "msg": "the Shopify app's client secret is required",
                        "type": "missing",
                    }
                ]
            )
        saved, _created = await ingest.repo.put_webhook_source(name, body.kind, secret)
        return WebhookSourceSaved(**_source_out(saved).model_dump(), secret=generated)

    @app.get(
        "/v1/admin/webhook-sources",
        response_model=WebhookSourceList,
        summary="List webhook sources (never their secrets)",
        tags=["admin"],
        responses={**AUTHED, 503: {}},
    )
    async def list_webhook_sources(ingest: Ctx, _: AdminKey) -> WebhookSourceList:
        sources = await ingest.repo.list_webhook_sources()
        return WebhookSourceList(webhook_sources=[_source_out(s) for s in sources])

    @app.delete(
        "/v1/admin/webhook-sources/{name}",
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Delete a webhook source",
        tags=["admin"],
        responses={**AUTHED, 404: {}, 422: {}, 503: {}},
    )
    async def delete_webhook_source(name: SourceName, ingest: Ctx, _: AdminKey) -> Response:
        if not await ingest.repo.delete_webhook_source(name):
            raise Problem(404, "Not found", "No webhook source has this name.")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return app


__all__ = ["BaseModel", "create_app", "run_migrations"]
