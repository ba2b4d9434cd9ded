"""The tracker's app: click redirects and unsubscribes, the links recipients follow."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import quote

from fastapi import FastAPI, Request, Response

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.errors import InvalidTokenError, RetriableError
from stepmail_common.problems import RETRY_AFTER_SECONDS
from stepmail_common.service import open_producer
from stepmail_common.signing import Signer
from stepmail_common.topics import Topics
from stepmail_common.tracking import ClickToken, UnsubscribeToken
from stepmail_common.webapp import dependency_checks, install_common
from stepmail_tracker import metrics, pages
from stepmail_tracker.bots import looks_automated
from stepmail_tracker.service import Engagement
from stepmail_tracker.settings import TrackerSettings
from stepmail_tracker.unsubscribe import MAX_BODY_BYTES, method_of

log = logging.getLogger(__name__)

# Characters kept as they are in a redirect target; the renderer already encoded the rest.
_LOCATION_SAFE = "!#$%&'()*+,/:;=?@[]~"


async def run_migrations(settings: TrackerSettings) -> None:
    """The tracker keeps no tables yet; ``migrate`` succeeds with nothing to do."""
    log.info("no migrations for the tracker")


async def _limited_body(request: Request) -> bytes | None:
    """The request body, or ``None`` when it is larger than any unsubscribe needs."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def create_app(settings: TrackerSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)
    signer = Signer.from_spec(settings.signing_keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            producer = await open_producer(stack, settings, "tracker", [topics.engagement_events])
            app.state.producer = producer
            app.state.engagement = Engagement(
                producer, topics, clock, settings.tracker_click_publish_timeout_seconds
            )
            yield

    app = FastAPI(
        title="stepmail tracker",
        version="1.0.0",
        summary="Click redirects and unsubscribes for the links in stepmail's mails.",
        lifespan=lifespan,
    )

    install_common(app, dependency_checks(app, database=False))

    @app.get("/c/{token}", include_in_schema=False)
    async def click(token: str, request: Request) -> Response:
        """302 to the link's target after recording the click; 400 for a bad token."""
        try:
            clicked = ClickToken.decode(signer, token)
        except InvalidTokenError as exc:
            metrics.INVALID_TOKENS.labels("click").inc()
            log.info("invalid click token", extra={"reason": str(exc)})
            return pages.invalid_page()
        machine = looks_automated(request.headers.get("user-agent"))
        engagement: Engagement = request.app.state.engagement
        await engagement.clicked(clicked, machine)
        metrics.CLICKS.labels("true" if machine else "false").inc()
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

    @app.get("/u/{token}", include_in_schema=False)
    async def unsubscribe_page(token: str) -> Response:
        """The confirm page; a GET never unsubscribes (link scanners follow GETs)."""
        if unsubscribe_token(token) is None:
            return pages.invalid_page()
        return pages.confirm_page()

    @app.post("/u/{token}", include_in_schema=False)
    async def unsubscribe(token: str, request: Request) -> Response:
        """RFC 8058 one-click or the confirm form: 200 once recorded, never a redirect."""
        unsubscribing = unsubscribe_token(token)
        if unsubscribing is None:
            return pages.invalid_page()
        body = await _limited_body(request)
        if body is None:
            return Response("Request body too large", status_code=413)
        method = method_of(request.headers.get("content-type"), body)
        engagement: Engagement = request.app.state.engagement
        try:
            await engagement.unsubscribed(unsubscribing, method)
        except RetriableError:
            log.warning(
                "unsubscribe not recorded: broker unavailable",
                extra={"message_id": unsubscribing.mail.message_id},
            )
            return pages.unavailable_page(RETRY_AFTER_SECONDS)
        log.info(
            "unsubscribed",
            extra={"message_id": unsubscribing.mail.message_id, "method": method},
        )
        return pages.done_page()

    return app
