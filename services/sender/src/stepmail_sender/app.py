"""The sender: consumes rendered mails, hands them to SMTP once, reports every outcome."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.kafka import BatchConsumer, EventConsumer
from stepmail_common.outbox import OutboxRelay
from stepmail_common.problems import Problem
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.topics import Topics
from stepmail_common.webapp import (
    FASTAPI_TELEMETRY,
    dependency_checks,
    install_common,
    start_background,
    start_together,
)
from stepmail_sender.delivery import (
    Deliverer,
    RetryPolicy,
    Signer,
    Transport,
    sendgrid_unique_args,
)
from stepmail_sender.dkimsign import DkimSigner, load_keys
from stepmail_sender.handlers import FEEDBACK_TYPES, feedback_dispatcher, rendered_mail
from stepmail_sender.ledger import Ledger
from stepmail_sender.loops import Recovery, Retrier
from stepmail_sender.owners import OwnerLease
from stepmail_sender.schemas import DeliveryOut
from stepmail_sender.ses import SesTransport
from stepmail_sender.settings import SenderSettings
from stepmail_sender.smtp import SmtpPool, parse_smtp_url
from stepmail_sender.throttle import Throttle, parse_domain_limits, parse_limit

log = logging.getLogger(__name__)

# The relay waits this long after a window's rows are committed before it takes them, so
# that at load one pass carries the delivery events of several windows; the events are
# later by that much, the mails not at all.
RELAY_SETTLE_SECONDS = 0.02


async def run_migrations(settings: SenderSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_sender")


def create_app(settings: SenderSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)
    smtp_target = parse_smtp_url(settings.smtp_url)
    signer: Signer | None = None
    if settings.sender_dkim_sign:
        keys = load_keys(settings.sender_dkim_keys) + load_keys(settings.sender_dkim_ed25519_keys)
        signer = DkimSigner(keys) if keys else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # The ledger's statements are set-based: planned once, not at every window.
            pool = await open_database(
                stack, settings, settings.db_schema, "stepmail_sender", generic_plans=True
            )
            producer = await open_producer(
                stack,
                settings,
                "sender",
                [
                    topics.mail_rendered,
                    topics.delivery_events,
                    topics.engagement_events,
                    topics.contact_events,
                ],
            )
            # Closed after everything that sends has stopped: the lock proves we are alive.
            lease = OwnerLease(settings.database_url, settings.db_schema)
            await lease.start()
            stack.push_async_callback(lease.close)
            transport: Transport
            if settings.sender_transport == "ses":
                ses = SesTransport.from_settings(settings)
                stack.push_async_callback(ses.close)
                transport = ses
            else:
                smtp = SmtpPool(
                    smtp_target,
                    timeout=settings.smtp_timeout_seconds,
                    size=settings.smtp_pool_size,
                )
                stack.push_async_callback(smtp.close)
                transport = smtp
            throttle = Throttle(
                pool,
                parse_domain_limits(settings.sender_domain_limits),
                parse_limit(settings.sender_account_limit)
                if settings.sender_account_limit
                else None,
                settings.sender_transport,
            )
            await throttle.start()

            ledger = Ledger(pool, topics.delivery_events, settings.sender_suppression_key.encode())
            deliverer = Deliverer(
                ledger,
                transport,
                clock,
                owner=lease.owner,
                policy=settings.sender_ambiguous_policy,
                retry=RetryPolicy(
                    base=settings.sender_retry_base_seconds,
                    cap=settings.sender_retry_max_seconds,
                    max_age=settings.sender_retry_max_age_seconds,
                ),
                owner_wait=settings.sender_owner_wait_seconds,
                window=settings.sender_window,
                signer=signer,
                tagger=sendgrid_unique_args if settings.sender_sendgrid_unique_args else None,
                throttle=throttle,
            )
            await start_background(stack, lease, "owner-lease")
            relay = OutboxRelay(
                pool,
                producer,
                interval=settings.sender_outbox_interval_seconds,
                wake=ledger.outbox_ready,
                settle=RELAY_SETTLE_SECONDS,
            )
            await start_background(stack, relay, "outbox-relay")
            # Mails orphaned by a killed predecessor are resolved before new ones are taken.
            await deliverer.recover()
            recovery = Recovery(deliverer, interval=settings.sender_recovery_interval_seconds)
            await start_background(stack, recovery, "ambiguous-recovery")
            retrier = Retrier(deliverer, interval=settings.sender_retry_interval_seconds)
            await start_background(stack, retrier, "deferred-retries")
            feedback = EventConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.engagement_events, topics.contact_events],
                group_id=settings.consumer_group("sender-feedback"),
                handler=feedback_dispatcher(ledger),
                producer=producer,
                fetch_max_wait_ms=settings.kafka_feedback_fetch_max_wait_ms,
                acts_on=FEEDBACK_TYPES,
            )
            consumer = BatchConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.mail_rendered],
                group_id=settings.consumer_group("sender"),
                prepare=rendered_mail,
                handler=deliverer.handle_many,
                producer=producer,
                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                max_batch=settings.sender_batch_max,
                after=feedback,
            )
            stack.push_async_callback(feedback.close)
            stack.push_async_callback(consumer.close)
            await start_together(stack, [(feedback, "feedback-consumer"), (consumer, "consumer")])
            # What start-up made (modules, schemas, the app) lives as long as the process:
            # kept out of the collector's generations, it is not walked again and again
            # while mails are handled.
            gc.freeze()
            app.state.pool = pool
            app.state.producer = producer
            app.state.ledger = ledger
            app.state.deliverer = deliverer
            log.info(
                "sender started",
                extra={"owner": lease.owner, "policy": settings.sender_ambiguous_policy},
            )
            try:
                yield
            finally:
                gc.unfreeze()

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        title="stepmail sender",
        version="1.0.0",
        summary="Rendered mails in; SMTP handover once per message id; delivery events out.",
        lifespan=lifespan,
    )

    install_common(app, dependency_checks(app))

    @app.get(
        "/v1/deliveries/{message_id}",
        response_model=DeliveryOut,
        summary="The ledger row of one mail",
        responses={404: {"description": "No mail with this message id"}},
    )
    async def get_delivery(message_id: str, request: Request) -> DeliveryOut:
        ledger: Ledger = request.app.state.ledger
        delivery = await ledger.get(message_id)
        if delivery is None:
            raise Problem(
                404,
                "Delivery not found",
                "No mail with this message id is in the ledger.",
                type_="urn:stepmail:problem:not-found",
            )
        return DeliveryOut(**delivery.public())

    return app
