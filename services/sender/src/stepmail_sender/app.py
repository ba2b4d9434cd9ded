"""The sender: consumes rendered mails, hands them to SMTP once, reports every outcome."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.kafka import EventConsumer
from stepmail_common.outbox import OutboxRelay
from stepmail_common.problems import Problem
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.topics import Topics
from stepmail_common.webapp import dependency_checks, install_common, start_background
from stepmail_sender.delivery import Deliverer
from stepmail_sender.handlers import dispatcher
from stepmail_sender.ledger import Ledger
from stepmail_sender.loops import Recovery
from stepmail_sender.owners import OwnerLease
from stepmail_sender.schemas import DeliveryOut
from stepmail_sender.settings import SenderSettings
from stepmail_sender.smtp import SmtpTransport, parse_smtp_url

log = logging.getLogger(__name__)


async def run_migrations(settings: SenderSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_sender")


def create_app(settings: SenderSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)
    smtp_target = parse_smtp_url(settings.smtp_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await open_database(stack, settings, settings.db_schema, "stepmail_sender")
            producer = await open_producer(
                stack, settings, "sender", [topics.mail_rendered, topics.delivery_events]
            )
            # Closed after everything that sends has stopped: the lock proves we are alive.
            lease = OwnerLease(settings.database_url, settings.db_schema)
            await lease.start()
            stack.push_async_callback(lease.close)
            transport = SmtpTransport(smtp_target, timeout=settings.smtp_timeout_seconds)
            stack.push_async_callback(transport.close)

            ledger = Ledger(pool, topics.delivery_events)
            deliverer = Deliverer(
                ledger,
                transport,
                clock,
                owner=lease.owner,
                policy=settings.sender_ambiguous_policy,
                retries=settings.smtp_retries,
                retry_backoff=settings.smtp_retry_backoff_seconds,
                owner_wait=settings.sender_owner_wait_seconds,
            )
            await start_background(stack, lease, "owner-lease")
            relay = OutboxRelay(
                pool,
                producer,
                interval=settings.sender_outbox_interval_seconds,
                wake=ledger.outbox_ready,
            )
            await start_background(stack, relay, "outbox-relay")
            # Mails orphaned by a killed predecessor are resolved before new ones are taken.
            await deliverer.recover()
            recovery = Recovery(deliverer, interval=settings.sender_recovery_interval_seconds)
            await start_background(stack, recovery, "ambiguous-recovery")
            consumer = EventConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.mail_rendered],
                group_id=settings.consumer_group("sender"),
                handler=dispatcher(deliverer),
                producer=producer,
            )
            await start_background(stack, consumer, "consumer")
            app.state.pool = pool
            app.state.producer = producer
            app.state.ledger = ledger
            app.state.deliverer = deliverer
            log.info(
                "sender started",
                extra={"owner": lease.owner, "policy": settings.sender_ambiguous_policy},
            )
            yield

    app = FastAPI(
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
