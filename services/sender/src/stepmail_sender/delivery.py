"""Delivering a rendered mail exactly once where SMTP allows it, and the ambiguous policy.

The ledger row of a mail (keyed by ``message_id``) moves
``accepted -> sending -> sent | failed``, and ``sending -> ambiguous`` when the outcome
of a handover cannot be known. Only the process whose conditional ``UPDATE`` moved the
row into ``sending`` (recording itself as ``owner`` and bumping ``attempt``) talks to the
SMTP server about it, and only that claim may record the answer. A mail in ``sent``,
``failed`` or held ``ambiguous`` is never sent again: not on redelivery, retry, restart,
rebalance, nor with any number of replicas.

Ambiguous mails. SMTP has no idempotency: a process killed after claiming a mail and
before recording the server's answer leaves the row in ``sending`` with a dead owner
(owners are alive while they hold their advisory lock, see ``owners``), and a
connection that breaks while the message is in flight leaves the same doubt. At
start-up, every few seconds, and whenever a consumed mail is found in ``sending``, such
rows become ``ambiguous``, a ``stepmail.delivery.ambiguous.v1`` event reports each one
and ``stepmail_sender_ambiguous_total{policy}`` counts it. Then
``SENDER_AMBIGUOUS_POLICY`` decides:

- ``hold`` (default, at most once): the mail stays ``ambiguous`` and is never sent
  again by stepmail; the event carries ``policy: "hold"`` so someone can look.
- ``resend`` (at least once): the event carries ``policy: "resend"`` and the mail is
  claimed again (``attempt`` + 1, ``resend`` true in the ledger) and sent from the
  envelope and MIME the ledger keeps until a mail's fate is known. The recipient may get
  it twice; nothing is lost. After ``max_attempts`` claims a mail is held instead.

A consumed mail in ``sending`` under another live owner (a rebalance moved its partition
while that process was still sending) is waited for until its outcome is recorded, so
the offset is never committed before the mail's fate is in the ledger.
"""

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from stepmail_common.clock import Clock
from stepmail_common.errors import PermanentError, RetriableError, is_retriable
from stepmail_sender import metrics
from stepmail_sender.domain import Delivery, Parcel, Policy, RenderedMail
from stepmail_sender.ledger import Ledger
from stepmail_sender.smtp import Reply, Verdict

log = logging.getLogger(__name__)

# States in which a mail's fate is known and nothing more will be done with it.
_SETTLED = frozenset({"sent", "failed", "suppressed"})

T = TypeVar("T")


class OwnerBusyError(RetriableError):
    """Another live process is sending this mail; try again once it recorded the outcome."""


class Transport(Protocol):
    """What the deliverer needs from SMTP (``smtp.SmtpTransport`` in production)."""

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply: ...


class Deliverer:
    """Claims, sends and records mails; finds and resolves ambiguous ones."""

    def __init__(
        self,
        ledger: Ledger,
        transport: Transport,
        clock: Clock,
        *,
        owner: int,
        policy: Policy,
        retries: int = 3,
        retry_backoff: float = 0.2,
        owner_wait: float = 30.0,
        poll_interval: float = 0.05,
        max_attempts: int = 5,
    ) -> None:
        self._ledger = ledger
        self._transport = transport
        self._clock = clock
        self.owner = owner
        self.policy: Policy = policy
        self._retries = retries
        self._backoff = retry_backoff
        self._owner_wait = owner_wait
        self._poll = poll_interval
        self._max_attempts = max_attempts
        # Mails this process is working on now; a row of ours in ``sending`` that is not
        # here was abandoned (an earlier handler crashed) and is as doubtful as a dead one.
        self._in_hand: collections.Counter[str] = collections.Counter()

    async def handle(self, mail: RenderedMail) -> Delivery:
        """Deliver a consumed mail; returns once its fate is in the ledger."""
        await self._ledger.accept(mail, self._clock.now())
        return await self._drive(mail.message_id, mail.parcel, wait=True)

    async def recover(self) -> int:
        """Resolve the mails left in ``sending`` by dead owners; returns how many."""
        resolved = 0
        for stuck in await self._ledger.orphans(self.owner):
            if stuck.owner == self.owner and self._in_hand[stuck.message_id]:
                continue
            marked = await self._declare_ambiguous(stuck, None)
            if marked is None:
                continue
            resolved += 1
            if marked.policy == "resend":
                await self._drive(marked.message_id, None, wait=False)
        return resolved

    async def _drive(self, message_id: str, parcel: Parcel | None, *, wait: bool) -> Delivery:
        """Claim and send until the ledger holds the mail's fate (or someone else has it)."""
        deadline = time.monotonic() + self._owner_wait
        waited = False
        while True:
            self._in_hand[message_id] += 1
            try:
                claimed = await self._ledger.claim(message_id, self.owner, self._clock.now())
                if claimed is not None:
                    outcome = await self._attempt(claimed, parcel)
                    if outcome.state != "ambiguous" or outcome.policy != "resend":
                        return outcome
                    continue
            finally:
                self._in_hand[message_id] -= 1
                if not self._in_hand[message_id]:
                    del self._in_hand[message_id]
            row = await self._ledger.get(message_id)
            if row is None:
                raise PermanentError(f"message {message_id} is not in the ledger")
            if row.state in _SETTLED or (row.state == "ambiguous" and row.policy == "hold"):
                metrics.DUPLICATES_SKIPPED.inc()
                log.info(
                    "mail already handled; not sent again",
                    extra={"message_id": message_id, "state": row.state},
                )
                return row
            if row.state != "sending":
                continue  # claimable again (e.g. ambiguous under resend): retry the claim
            if not await self._owner_alive(row):
                await self._declare_ambiguous(row, None)
                continue
            if not wait:
                return row
            if not waited:
                waited = True
                metrics.OWNER_WAITS.inc()
                log.info(
                    "mail being sent by another live process; waiting",
                    extra={"message_id": message_id, "owner": row.owner},
                )
            if time.monotonic() >= deadline:
                raise OwnerBusyError(f"message {message_id} still in sending by {row.owner}")
            await asyncio.sleep(self._poll)

    async def _owner_alive(self, row: Delivery) -> bool:
        if row.owner is None:
            return False
        if row.owner == self.owner:
            return bool(self._in_hand[row.message_id])
        return await self._ledger.owner_alive(row.owner)

    async def _declare_ambiguous(self, stuck: Delivery, reason: str | None) -> Delivery | None:
        policy: Policy = self.policy if stuck.attempt < self._max_attempts else "hold"
        marked = await self._ledger.mark_ambiguous(stuck, policy, reason, self._clock.now())
        if marked is not None:
            metrics.AMBIGUOUS.labels(policy).inc()
            log.warning(
                "mail ambiguous: handed over with unknown outcome",
                extra={
                    "message_id": stuck.message_id,
                    "contact_id": stuck.contact_id,
                    "attempt": stuck.attempt,
                    "dead_owner": stuck.owner,
                    "policy": policy,
                },
            )
        return marked

    async def _attempt(self, claimed: Delivery, parcel: Parcel | None) -> Delivery:
        """Send the claimed attempt and record its outcome."""
        if parcel is None:
            parcel = await self._ledger.parcel(claimed.message_id)
        if parcel is None:
            # Only a resend loads the parcel, and the ledger keeps it until the fate is known.
            return await self._record(claimed, "failed", None, "parcel no longer stored")
        if claimed.resend:
            metrics.RESENDS.inc()
        try:
            message = parcel.message_bytes()
        except PermanentError as exc:
            return await self._record(claimed, "failed", None, str(exc))
        reply = await self._send_with_retries(parcel, message)
        if reply.verdict is Verdict.ACCEPTED:
            metrics.MAILS_SENT.inc()
            return await self._record(claimed, "sent", reply.code, reply.text)
        if reply.verdict is Verdict.UNKNOWN:
            marked = await self._retrying(lambda: self._declare_ambiguous(claimed, reply.text))
            if marked is None:
                return await self._lost_claim(claimed)
            return marked
        metrics.MAILS_FAILED.labels(reply.verdict.value).inc()
        return await self._record(claimed, "failed", reply.code, reply.text)

    async def _send_with_retries(self, parcel: Parcel, message: bytes) -> Reply:
        envelope = parcel.envelope
        for retry in range(self._retries + 1):
            started = time.perf_counter()
            reply = await self._transport.send(envelope.mail_from, envelope.rcpt_to, message)
            metrics.SMTP_SECONDS.labels(reply.verdict.value).observe(time.perf_counter() - started)
            if not reply.verdict.retriable or retry == self._retries:
                return reply
            metrics.SMTP_RETRIES.labels(reply.verdict.value).inc()
            await asyncio.sleep(self._backoff * 2**retry)
        raise AssertionError("unreachable")

    async def _record(
        self, claimed: Delivery, state: str, code: int | None, text: str | None
    ) -> Delivery:
        done = await self._retrying(
            lambda: self._ledger.finish(claimed, state, code, text, self._clock.now())
        )
        if done is None:
            return await self._lost_claim(claimed)
        log.info(
            "mail delivered" if state == "sent" else "mail failed",
            extra={
                "message_id": claimed.message_id,
                "contact_id": claimed.contact_id,
                "attempt": claimed.attempt,
                "smtp_code": code,
            },
        )
        return done

    async def _lost_claim(self, claimed: Delivery) -> Delivery:
        """Someone declared our attempt ambiguous while we sent it (lost owner lock)."""
        log.error(
            "claim lost before the outcome was recorded",
            extra={"message_id": claimed.message_id, "attempt": claimed.attempt},
        )
        row = await self._ledger.get(claimed.message_id)
        assert row is not None
        return row

    async def _retrying(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run a ledger write, retrying while the database is briefly unreachable.

        The SMTP answer exists only in memory here: give the database a while before
        giving up (the row then stays in ``sending`` and is later found ambiguous).
        """
        deadline = time.monotonic() + self._owner_wait
        delay = 0.1
        while True:
            try:
                return await step()
            except Exception as exc:
                if not is_retriable(exc) or time.monotonic() + delay >= deadline:
                    raise
                log.warning("ledger write failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
