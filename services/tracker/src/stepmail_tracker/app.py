"""The tracker's app: open pixel, click redirects, unsubscribes and ESP feedback."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request, Response

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.errors import InvalidTokenError, RetriableError
from stepmail_common.kafka import BatchConsumer
from stepmail_common.problems import RETRY_AFTER_SECONDS, Problem
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.signing import Signer
from stepmail_common.topics import Topics
from stepmail_common.tracking import ClickToken, MailRef, OpenToken, UnsubscribeToken
from stepmail_common.webapp import (
    FASTAPI_TELEMETRY,
    dependency_checks,
    install_common,
    start_background,
)
from stepmail_tracker import feedback, metrics, pages
from stepmail_tracker.bots import machine_reason
from stepmail_tracker.handlers import ACTS_ON, consumed, handler
from stepmail_tracker.loops import RatesLoop
from stepmail_tracker.repository import Preference, Repository
from stepmail_tracker.service import Engagement, Feedback
from stepmail_tracker.settings import TrackerSettings
from stepmail_tracker.unsubscribe import MAX_BODY_BYTES, ONE_CLICK_FIELD, form_fields

log = logging.getLogger(__name__)

# Characters kept as they are in a redirect target; the renderer already encoded the rest.
_LOCATION_SAFE = "!#$%&'()*+,/:;=?@[]~"
# The smallest transparent GIF: 1x1, one transparent colour.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_PIXEL_HEADERS = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
    "Referrer-Policy": "no-referrer",
}
# A click must redirect quickly even when the database is slow or gone.
_LOOKUP_TIMEOUT_SECONDS = 0.5
MAX_FEEDBACK_BYTES = 1024 * 1024


async def run_migrations(settings: TrackerSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_tracker")


async def _limited_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _fetch_https(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.content


def create_app(
    settings: TrackerSettings,
    clock: Clock | None = None,
    *,
    fetch_url: feedback.CertFetcher | None = None,
) -> FastAPI:
    """``fetch_url`` fetches SNS signing certificates and confirmation URLs (injectable)."""
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)
    signer = Signer.from_spec(settings.signing_keys)
    proxy_networks = settings.proxy_networks()
    topic_choices = settings.topics()
    fetch = fetch_url or _fetch_https
    sns = feedback.SnsVerifier(fetch)
    sns_arns = settings.sns_topic_arns()
    sendgrid_key = feedback.load_sendgrid_key(settings.tracker_sendgrid_public_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await open_database(stack, settings, settings.db_schema, "stepmail_tracker")
            app.state.pool = pool
            repo = Repository(pool)
            app.state.repo = repo
            producer = await open_producer(
                stack,
                settings,
                "tracker",
                [topics.engagement_events, topics.delivery_events, topics.contact_events],
            )
            app.state.producer = producer
            app.state.engagement = Engagement(
                producer, topics, clock, settings.tracker_click_publish_timeout_seconds
            )
            consumer = BatchConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.delivery_events, topics.contact_events],
                group_id=settings.consumer_group("tracker"),
                prepare=consumed,
                handler=handler(repo),
                producer=producer,
                fetch_max_wait_ms=settings.kafka_feedback_fetch_max_wait_ms,
                acts_on=ACTS_ON,
            )
            await start_background(stack, consumer, "consumer")
            rates = RatesLoop(
                repo,
                clock,
                window_seconds=settings.tracker_rate_window_seconds,
                retention_days=settings.tracker_delivery_retention_days,
                interval=settings.tracker_rate_refresh_seconds,
            )
            app.state.rates = rates
            await start_background(stack, rates, "rates")
            yield

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        title="stepmail tracker",
        version="1.0.0",
        summary="Open pixel, click redirects, unsubscribes and ESP feedback for stepmail's mails.",
        lifespan=lifespan,
    )

    install_common(app, dependency_checks(app))

    def client_ip(request: Request) -> str | None:
        if settings.tracker_client_ip_header:
            value = request.headers.get(settings.tracker_client_ip_header)
            if value:
                return value.split(",", 1)[0].strip()
        return request.client.host if request.client else None

    async def classify(request: Request, kind: str, message_id: str) -> str | None:
        repo: Repository = request.app.state.repo
        sent_at: datetime | None = None
        try:
            sent_at = await asyncio.wait_for(repo.sent_at(message_id), _LOOKUP_TIMEOUT_SECONDS)
        except (TimeoutError, OSError, RetriableError) as exc:
            log.warning("delivery time unknown", extra={"error": exc.__class__.__name__})
        except Exception as exc:  # noqa: BLE001 - asyncpg errors: answer the person anyway
            log.warning("delivery time unknown", extra={"error": exc.__class__.__name__})
        reason = machine_reason(
            user_agent=request.headers.get("user-agent"),
            client_ip=client_ip(request),
            proxy_networks=proxy_networks,
            sent_at=sent_at,
            now=clock.now(),
            window_seconds=settings.tracker_machine_window_seconds,
        )
        if reason is not None:
            metrics.MACHINE_REASONS.labels(kind, reason).inc()
        return reason

    @app.get("/o/{token}", include_in_schema=False)
    async def open_pixel(token: str, request: Request) -> Response:
        """The 1x1 GIF, always, so a token's validity never leaks; valid opens publish."""
        try:
            ref = OpenToken.decode(signer, token).mail
        except InvalidTokenError as exc:
            metrics.INVALID_TOKENS.labels("open").inc()
            log.info("invalid open token", extra={"reason": str(exc)})
        else:
            reason = await classify(request, "open", ref.message_id)
            engagement: Engagement = request.app.state.engagement
            await engagement.opened(ref, reason)
            metrics.OPENS.labels("true" if reason else "false").inc()
        return Response(PIXEL_GIF, media_type="image/gif", headers=_PIXEL_HEADERS)

    @app.get("/c/{token}", include_in_schema=False)
    async def click(token: str, request: Request) -> Response:
        """302 to the link's target after recording the click; 400 for a bad token."""
        try:
            clicked = ClickToken.decode(signer, token)
        except InvalidTokenError as exc:
            metrics.INVALID_TOKENS.labels("click").inc()
            log.info("invalid click token", extra={"reason": str(exc)})
            return pages.invalid_page()
        reason = await classify(request, "click", clicked.mail.message_id)
        engagement: Engagement = request.app.state.engagement
        await engagement.clicked(clicked, reason)
        metrics.CLICKS.labels("true" if reason else "false").inc()
        return Response(
            status_code=302,
            headers={
                "Location": quote(clicked.url, safe=_LOCATION_SAFE),
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )

    def unsubscribe_token(token: str) -> UnsubscribeToken | None:
        try:
            return UnsubscribeToken.decode(signer, token)
        except InvalidTokenError as exc:
            metrics.INVALID_TOKENS.labels("unsubscribe").inc()
            log.info("invalid unsubscribe token", extra={"reason": str(exc)})
            return None

    def choices(token: UnsubscribeToken) -> dict[str, tuple[str, str]]:
        return topic_choices if token.mail_kind == "marketing" else {}

    @app.get("/u/{token}", include_in_schema=False)
    async def unsubscribe_page(token: str, request: Request) -> Response:
        """The confirm page and preference centre; a GET never changes anything."""
        unsubscribing = unsubscribe_token(token)
        if unsubscribing is None:
            return pages.invalid_page()
        repo: Repository = request.app.state.repo
        state = await repo.preference(unsubscribing.mail.contact_id, unsubscribing.mail_kind)
        if state.all_out:
            return pages.unsubscribed_page()
        return pages.confirm_page(choices(unsubscribing), state.topics or ())

    async def store(
        request: Request,
        token: UnsubscribeToken,
        subscribed: bool,
        topics: list[str] | None,
    ) -> Preference | None:
        """Record the new state; ``None`` if the database is out (the event still goes)."""
        repo: Repository = request.app.state.repo
        try:
            state, _ = await repo.set_preference(
                token.mail.contact_id, token.mail_kind, subscribed, topics, clock.now()
            )
            if not subscribed and topics is None:
                await repo.record_signal("unsubscribe", clock.now())
        except Exception as exc:  # noqa: BLE001 - an opt-out must not fail on the page's store
            log.warning("opt-out state not stored", extra={"error": exc.__class__.__name__})
            return None
        return state

    @app.post("/u/{token}", include_in_schema=False)
    async def unsubscribe(token: str, request: Request) -> Response:
        """RFC 8058 one-click, the confirm form, the topic choice or a re-subscribe.

        200 once published, never a redirect; a replay publishes the same event id.
        """
        unsubscribing = unsubscribe_token(token)
        if unsubscribing is None:
            return pages.invalid_page()
        body = await _limited_body(request)
        if body is None:
            return Response("Request body too large", status_code=413)
        fields = form_fields(request.headers.get("content-type"), body)
        one_click = fields.get(ONE_CLICK_FIELD, [""])[0] == "One-Click"
        action = "unsubscribe" if one_click else fields.get("action", ["unsubscribe"])[0]
        engagement: Engagement = request.app.state.engagement
        try:
            if action == "resubscribe":
                state = await store(request, unsubscribing, True, None)
                await engagement.resubscribed(unsubscribing, state.version if state else 0)
                return pages.resubscribed_page()
            if action == "topics" and choices(unsubscribing):
                keep = set(fields.get("topic", []))
                dropped = [t for t in choices(unsubscribing) if t not in keep]
                if not dropped:
                    state = await store(request, unsubscribing, True, None)
                    await engagement.resubscribed(unsubscribing, state.version if state else 0)
                    return pages.saved_page()
                if len(dropped) < len(choices(unsubscribing)):
                    state = await store(request, unsubscribing, False, dropped)
                    await engagement.unsubscribed(
                        unsubscribing, "page", dropped, state.version if state else None
                    )
                    return pages.saved_page()
            method = "one-click" if one_click else "page"
            state = await store(request, unsubscribing, False, None)
            await engagement.unsubscribed(
                unsubscribing, method, None, state.version if state else None
            )
        except RetriableError:
            log.warning(
                "preference not published: broker unavailable",
                extra={"message_id": unsubscribing.mail.message_id},
            )
            return pages.unavailable_page(RETRY_AFTER_SECONDS)
        log.info(
            "unsubscribed",
            extra={"message_id": unsubscribing.mail.message_id, "method": method},
        )
        return pages.done_page() if one_click else pages.unsubscribed_page()

    def refuse(provider: str, exc: feedback.FeedbackRefused) -> Problem:
        metrics.FEEDBACK_REFUSED.labels(provider, exc.reason).inc()
        log.warning("feedback refused", extra={"provider": provider, "reason": exc.reason})
        return Problem(
            exc.status,
            "Unauthorized"
            if exc.status == 401
            else ("Forbidden" if exc.status == 403 else "Bad Request"),
            exc.detail,
            type_=f"urn:stepmail:problem:feedback-{exc.reason}",
            errors=[{"field": "body" if exc.status == 400 else "signature", "message": exc.detail}],
        )

    async def publish_feedback(request: Request, items: list[Feedback]) -> None:
        engagement: Engagement = request.app.state.engagement
        repo: Repository = request.app.state.repo
        await engagement.feedback(items)
        for item in items:
            if item.kind == "complained":
                await repo.record_signal("complaint", clock.now())

    @app.post("/v1/feedback/ses", status_code=200, tags=["feedback"])
    async def ses_feedback(request: Request) -> dict[str, object]:
        """Amazon SES bounce and complaint notifications delivered by SNS (signed)."""
        body = await _limited_body(request, MAX_FEEDBACK_BYTES)
        if body is None:
            raise Problem(413, "Payload Too Large", "body over 1 MiB")
        try:
            message = feedback.parse_sns(body)
            if sns_arns and message.get("TopicArn") not in sns_arns:
                raise feedback.FeedbackRefused("unknown-topic", "TopicArn is not accepted")
            await sns.verify(message)
        except feedback.FeedbackRefused as exc:
            raise refuse("ses", exc) from None
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            url = str(message.get("SubscribeURL", ""))
            if settings.tracker_sns_auto_confirm and feedback.is_sns_url(url):
                await fetch(url)
                log.info("SNS subscription confirmed", extra={"topic": message.get("TopicArn")})
                return {"status": "confirmed"}
            log.warning(
                "SNS subscription awaits confirmation: visit SubscribeURL",
                extra={"topic": message.get("TopicArn"), "subscribe_url": url},
            )
            return {"status": "pending-confirmation"}
        if kind != "Notification":
            return {"status": "ignored"}
        try:
            items = feedback.ses_feedback(feedback.ses_notification(message))
        except feedback.FeedbackRefused as exc:
            raise refuse("ses", exc) from None
        await publish_feedback(request, items)
        return {"status": "accepted", "events": len(items)}

    @app.post("/v1/feedback/sendgrid", status_code=200, tags=["feedback"])
    async def sendgrid_feedback(request: Request) -> dict[str, object]:
        """SendGrid Event Webhook batches (signed with ECDSA)."""
        body = await _limited_body(request, MAX_FEEDBACK_BYTES)
        if body is None:
            raise Problem(413, "Payload Too Large", "body over 1 MiB")
        try:
            feedback.verify_sendgrid(
                sendgrid_key,
                request.headers.get("x-twilio-email-event-webhook-signature"),
                request.headers.get("x-twilio-email-event-webhook-timestamp"),
                body,
                clock.now(),
                settings.tracker_sendgrid_max_age_seconds,
            )
            events = feedback.parse_json(body)
            items = feedback.sendgrid_feedback(events)
        except feedback.FeedbackRefused as exc:
            raise refuse("sendgrid", exc) from None
        await publish_feedback(request, items)
        engagement: Engagement = request.app.state.engagement
        unsubscribes = feedback.sendgrid_unsubscribes(events)
        for message_id, contact_id in unsubscribes:
            # Only the ids matter to an unsubscribe event; the scenario part is unknown here.
            ref = MailRef(message_id, contact_id, "unknown", 1, "unknown", 0)
            await engagement.unsubscribed(UnsubscribeToken(ref, "marketing"), "api", None, 1)
        return {"status": "accepted", "events": len(items) + len(unsubscribes)}

    return app
