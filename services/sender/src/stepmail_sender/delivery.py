"""Delivering a rendered mail exactly once where SMTP allows it, and the ambiguous policy.

The ledger row of a mail (keyed by ``message_id``) moves
``accepted -> sending -> sent | failed``, and ``sending -> ambiguous`` when the outcome
of a handover cannot be known; a consumed mail new to the ledger is recorded in
``sending`` at once. Only the process whose conditional ``UPDATE`` (or recording
``INSERT``) put the row in ``sending`` (recording itself as ``owner`` and bumping
``attempt``) talks to the SMTP server about it, and only that claim may record the
answer. A mail in ``sent``, ``failed`` or held ``ambiguous`` is never sent again: not on
redelivery, retry, restart, rebalance, nor with any number of replicas.

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
  claimed again (``attempt`` + 1, ``resend`` true in the ledger) and sent once more. The
  recipient may get it twice; nothing is lost. After ``max_attempts`` claims a mail is
  held instead.

Parcels (envelope and MIME). The ledger does not store a mail's parcel when it is
consumed: most mails are sent at once and never need it again, and ~10 KB a mail is
most of what the ledger would write. A parcel is stored when the mail must go later:
``deferred`` (a retry) and ``ambiguous`` under ``resend`` when the doubt arises in this
process. The mails of a process killed mid-send are not lost either way: their batch's
offsets were not committed, so their records come back, parcels included, to whichever
process consumes the partition next, which applies the policy and resends from the
record (the recovery loop resends only what the ledger holds a parcel for).

Failures. A 4xx reply or a connection failure (nothing handed over) records the mail
``deferred`` with its next attempt after an exponential back-off with jitter (and its
parcel); the retry loop claims it again when due, so a retry never holds up the
partition. Past ``retry_max_age`` it is
``failed`` (``bounce: soft``). A 5xx reply is ``failed`` at once; a hard bounce (5.1.x,
or 550/551/553 naming an unknown mailbox) also suppresses the address. The enhanced
status code (``dsn``) and the reply text, addresses redacted, are kept.

Suppression. Every claim first looks up the suppression list (by keyed hash of the
address, and by contact id and mail kind): a suppressed recipient's mail becomes
``suppressed`` and is never handed over.

Concurrency. ``handle_many`` delivers a consumed batch in windows of ``window`` mails:
one statement claims a window, its mails go out concurrently over the connection pool
(under the throttles), one transaction records their outcomes. A process killed
mid-window leaves at most ``window`` mails ambiguous.

A consumed mail in ``sending`` under another live owner (a rebalance moved its partition
while that process was still sending) is waited for until its outcome is recorded, so
the offset is never committed before the mail's fate is in the ledger.
"""

import asyncio
import collections
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from opentelemetry import trace

from stepmail_common import telemetry
from stepmail_common.clock import Clock
from stepmail_common.errors import PermanentError, RetriableError, is_retriable
from stepmail_sender import metrics
from stepmail_sender.domain import Delivery, Outcome, Parcel, Policy, RenderedMail
from stepmail_sender.ledger import Ledger
from stepmail_sender.smtp import Reply, Verdict, dsn_of, is_hard_bounce
from stepmail_sender.throttle import Throttle

log = logging.getLogger(__name__)
tracer = trace.get_tracer("stepmail.sender")

Traces = Mapping[str, dict[str, str]]

# States in which a mail's fate is known and nothing more will be done with it.
_SETTLED = frozenset({"sent", "failed", "suppressed", "deferred"})


def _failure_class(row: Delivery) -> str:
    if row.smtp_code is None:
        return "connection" if row.state == "deferred" else "other"
    return f"{row.smtp_code // 100}xx"


T = TypeVar("T")


class OwnerBusyError(RetriableError):
    """Another live process is sending this mail; try again once it recorded the outcome."""


class Transport(Protocol):
    """What the deliverer needs from a transport (SMTP pool or an ESP's HTTP API)."""

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply: ...


Signer = Callable[[bytes], bytes]
# Header lines prepended to a mail at handover, made from its ledger row.
Tagger = Callable[[Delivery], bytes]


def sendgrid_unique_args(delivery: Delivery) -> bytes:
    """``X-SMTPAPI`` with stepmail's ids as SendGrid unique_args: SendGrid removes the
    header and returns the arguments on every Event Webhook event of the mail."""
    args = {"stepmail_message_id": delivery.message_id, "stepmail_contact_id": delivery.contact_id}
    return b"X-SMTPAPI: " + json.dumps({"unique_args": args}).encode("ascii") + b"\r\n"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Back-off of deferred mails: ``base * 2**(attempt-1)``, capped, jittered, up to an age."""

    base: float = 60.0
    cap: float = 3600.0
    max_age: float = 2 * 86400.0

    def delay(self, attempt: int) -> float:
        full: float = min(self.cap, self.base * 2.0 ** max(0, min(attempt - 1, 30)))
        # "Equal jitter": never sooner than half the back-off, spread over the other half.
        return full / 2 + random.uniform(0, full / 2)


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
        retry: RetryPolicy | None = None,
        owner_wait: float = 30.0,
        poll_interval: float = 0.05,
        max_attempts: int = 5,
        window: int = 32,
        signer: Signer | None = None,
        tagger: Tagger | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self._ledger = ledger
        self._transport = transport
        self._clock = clock
        self.owner = owner
        self.policy: Policy = policy
        self._retry = retry or RetryPolicy()
        self._window = max(1, window)
        # Up to four slices in flight, of at least eight mails each (fewer, larger
        # statements beat more overlap on small windows).
        self._slice = -(-self._window // max(1, min(4, self._window // 8)))
        self._signer = signer
        self._tagger = tagger
        self._throttle = throttle
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

    async def handle_many(self, mails: Sequence[RenderedMail]) -> None:
        """Deliver a consumed batch; returns once every mail's fate is in the ledger.

        The batch goes in slices that overlap: while one slice is on the SMTP
        connections, the next is recorded and claimed, so neither the database nor the
        connections wait for the other. The slices in flight hold at most ``window``
        mails together, which stays the most a SIGKILL can leave ambiguous.
        """
        unique: dict[str, RenderedMail] = {}
        for mail in mails:
            unique.setdefault(mail.message_id, mail)
        pending = list(unique.values())
        size = self._slice
        gate = asyncio.Semaphore(self._window // size)

        async def deliver(chunk: list[RenderedMail]) -> None:
            async with gate:
                await self._deliver_window(
                    [m.message_id for m in chunk],
                    {m.message_id: m.parcel for m in chunk},
                    wait=True,
                    traces={m.message_id: m.trace for m in chunk if m.trace},
                    new=chunk,
                )

        # Every slice runs to its end (none is cancelled half-way through a handover);
        # then the first failure, if any, is the batch's.
        results = await asyncio.gather(
            *(deliver(pending[i : i + size]) for i in range(0, len(pending), size)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def retry_due(self, limit: int = 200) -> int:
        """Claim and send deferred mails whose time has come; returns how many were due."""
        due = await self._ledger.due_deferred(self._now(), limit)
        for start in range(0, len(due), self._window):
            chunk = due[start : start + self._window]
            await self._deliver_window(chunk, None, wait=False)
        metrics.RETRIES_PENDING.set(await self._ledger.count_deferred())
        return len(due)

    def _now(self) -> datetime:
        return self._clock.now()

    async def _deliver_window(
        self,
        message_ids: list[str],
        parcels: dict[str, Parcel] | None,
        *,
        wait: bool,
        traces: Traces | None = None,
        new: Sequence[RenderedMail] = (),
    ) -> None:
        """Claim a window, send it concurrently, record its outcomes in one statement.

        ``new`` are consumed mails: those the ledger does not know yet are recorded as
        claimed at once (one statement), and only the others are claimed by message id
        (one more). ``traces`` (by
        message id) puts each mail's handover and delivery events in the trace of the
        record that brought it.
        """
        traces = traces or {}
        # In hand before the first claim: the recovery loop must not take our own claims
        # for abandoned ones.
        for message_id in message_ids:
            self._in_hand[message_id] += 1
        try:
            claimed = []
            if new:
                claimed = await self._retrying(
                    lambda: self._ledger.claim_new(new, self.owner, self._now(), traces)
                )
            fresh = {c.message_id for c in claimed}
            known = [m for m in message_ids if m not in fresh]
            if known:
                claimed += await self._retrying(
                    lambda: self._ledger.claim_many(known, self.owner, self._now(), traces)
                )
            for row in claimed:
                if row.state == "suppressed":
                    metrics.SUPPRESSED.labels(row.reason or "unknown").inc()
            sending = [c for c in claimed if c.state == "sending"]
            if parcels is None or any(c.resend for c in sending):
                stored = await self._ledger.parcels([c.message_id for c in sending])
                parcels = {**stored, **(parcels or {})}
            results = await self._send_window(sending, parcels, traces)
            outcomes = [(c, o) for c, o in results if isinstance(o, Outcome)]
            recorded = await self._retrying(
                lambda: self._ledger.finish_many(outcomes, self._now(), traces, parcels)
            )
            self._observe(recorded)
            lost = {c.message_id for c, _ in outcomes} - {d.message_id for d in recorded}
            for claim_lost in (c for c, _ in outcomes if c.message_id in lost):
                await self._lost_claim(claim_lost)
            unknown = [(c, r) for c, r in results if isinstance(r, Reply)]
        finally:
            for message_id in message_ids:
                self._in_hand[message_id] -= 1
                if not self._in_hand[message_id]:
                    del self._in_hand[message_id]
        # The rare paths one by one: handovers of unknown outcome, and mails this window
        # could not claim (redelivered, being sent elsewhere, ambiguous under resend).
        for claimed_row, reply in unknown:
            parcel = parcels.get(claimed_row.message_id)
            marked = await self._retrying(
                functools.partial(self._declare_ambiguous, claimed_row, reply.text, parcel)
            )
            if marked is not None and marked.policy == "resend":
                await self._drive(marked.message_id, parcel, wait=False)
        taken = {c.message_id for c in claimed}
        others = [m for m in message_ids if m not in taken]
        if others and wait:
            await asyncio.gather(
                *(self._drive(m, (parcels or {}).get(m), wait=True) for m in others)
            )

    async def _send_window(
        self, sending: list[Delivery], parcels: dict[str, Parcel], traces: Traces
    ) -> list[tuple[Delivery, Outcome | Reply]]:
        """Send the claimed mails concurrently; a ``Reply`` result is an unknown outcome."""
        by_domain: dict[str, list[Delivery]] = collections.defaultdict(list)
        results: list[tuple[Delivery, Outcome | Reply]] = []
        ready: list[tuple[Delivery, Parcel]] = []
        for row in sending:
            parcel = parcels.get(row.message_id)
            if parcel is None:
                results.append((row, Outcome("failed", None, "parcel no longer stored")))
                continue
            ready.append((row, parcel))
        messages: dict[str, bytes] = {}
        for (row, parcel), message in zip(ready, await self._compose_all(ready), strict=True):
            if isinstance(message, Outcome):
                results.append((row, message))
            else:
                messages[row.message_id] = message
                by_domain[parcel.rcpt_domain if self._throttle else ""].append(row)

        async def one(row: Delivery) -> None:
            parcel = parcels[row.message_id]
            carrier = traces.get(row.message_id)
            sent = await self._send_one(row, parcel, messages[row.message_id], carrier)
            results.append((row, sent))

        async def domain_group(domain: str, rows: list[Delivery]) -> None:
            tasks: list[asyncio.Task[None]] = []
            i = 0
            while i < len(rows):
                n = (
                    await self._throttle.take(domain, len(rows) - i)
                    if self._throttle
                    else len(rows)
                )
                tasks.extend(asyncio.create_task(one(r)) for r in rows[i : i + n])
                i += n
            await asyncio.gather(*tasks)

        await asyncio.gather(*(domain_group(d, rows) for d, rows in by_domain.items()))
        return results

    def _compose(self, claimed: Delivery, parcel: Parcel) -> bytes | Outcome:
        """The bytes handed over (signed, then tagged), or why the mail cannot be made."""
        try:
            message = parcel.message_bytes()
            if self._signer is not None:
                message = self._signer(message)
            if self._tagger is not None:
                # After signing: an ESP strips its own header, which must not be signed.
                message = self._tagger(claimed) + message
        except PermanentError as exc:
            return Outcome("failed", None, str(exc))
        return message

    async def _compose_all(self, mails: Sequence[tuple[Delivery, Parcel]]) -> list[bytes | Outcome]:
        """Compose mails; with a signer, in one hand-off to a worker thread for them all.

        RSA signing takes most of a millisecond and OpenSSL lets go of the GIL meanwhile:
        in a thread, the event loop keeps the other mails moving. One hand-off per window
        rather than per mail spares the executor's queue, futures and wake-ups per mail.
        """
        if self._signer is None or not mails:
            return [self._compose(claimed, parcel) for claimed, parcel in mails]
        return await asyncio.to_thread(
            lambda: [self._compose(claimed, parcel) for claimed, parcel in mails]
        )

    async def _send_one(
        self,
        claimed: Delivery,
        parcel: Parcel,
        message: bytes,
        carrier: dict[str, str] | None = None,
    ) -> Outcome | Reply:
        """One handover in a client span, in the mail's trace (``carrier``) when known.

        Without a tracer provider no span is made: even the API's no-op span costs more
        per mail than the rest of the bookkeeping, and there is nothing to record it.
        """
        if not telemetry.recording():
            return await self._hand_over(claimed, parcel, message)
        with tracer.start_as_current_span(
            "handover",
            context=telemetry.context_from_carrier(carrier),
            kind=trace.SpanKind.CLIENT,
            attributes={
                "stepmail.message_id": claimed.message_id,
                "stepmail.attempt": claimed.attempt,
            },
        ) as span:
            result = await self._hand_over(claimed, parcel, message)
            if isinstance(result, Reply):
                span.set_attribute("stepmail.handover.verdict", result.verdict.value)
            else:
                span.set_attribute("stepmail.handover.outcome", result.state)
                if result.code is not None:
                    span.set_attribute("stepmail.smtp.code", result.code)
            return result

    async def _hand_over(
        self, claimed: Delivery, parcel: Parcel, message: bytes
    ) -> Outcome | Reply:
        if claimed.resend:
            metrics.RESENDS.inc()
        conns = self._throttle.connections(parcel.rcpt_domain) if self._throttle else None
        started = time.perf_counter()
        if conns is None:
            reply = await self._transport.send(
                parcel.envelope.mail_from, parcel.envelope.rcpt_to, message
            )
        else:
            async with conns:
                reply = await self._transport.send(
                    parcel.envelope.mail_from, parcel.envelope.rcpt_to, message
                )
        metrics.SMTP_SECONDS.labels(reply.verdict.value).observe(time.perf_counter() - started)
        if reply.verdict is Verdict.UNKNOWN:
            return reply
        return self._outcome(claimed, reply)

    def _outcome(self, claimed: Delivery, reply: Reply) -> Outcome:
        """What the ledger records for a reply whose meaning is known."""
        if reply.verdict is Verdict.ACCEPTED:
            return Outcome("sent", reply.code, reply.text)
        dsn = dsn_of(reply.text)
        if reply.verdict.retriable:
            now = self._now()
            delay = self._retry.delay(claimed.attempt)
            age = (now - claimed.created_at).total_seconds()
            if age + delay <= self._retry.max_age:
                return Outcome(
                    "deferred",
                    reply.code,
                    reply.text,
                    dsn=dsn,
                    next_attempt_at=now + timedelta(seconds=delay),
                )
            return Outcome("failed", reply.code, reply.text, bounce="soft", dsn=dsn)
        hard = is_hard_bounce(reply.code, reply.text)
        return Outcome("failed", reply.code, reply.text, bounce="hard" if hard else None, dsn=dsn)

    def _observe(self, recorded: Sequence[Delivery]) -> None:
        now = self._now()
        for row in recorded:
            if row.state == "sent":
                metrics.MAILS_SENT.inc()
                metrics.DELIVERY_SECONDS.observe(max(0.0, (now - row.created_at).total_seconds()))
            elif row.state == "deferred":
                metrics.DEFERRED.labels(_failure_class(row)).inc()
            elif row.state == "failed":
                metrics.MAILS_FAILED.labels(_failure_class(row)).inc()
                if row.bounce == "hard":
                    metrics.SUPPRESSED.labels("bounced").inc()

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
                parcel = await self._ledger.parcel(marked.message_id)
                # Without a stored parcel, the mail's Kafka record (never committed, since
                # its fate was not recorded) brings it back to whoever consumes it.
                if parcel is not None:
                    await self._drive(marked.message_id, parcel, wait=False)
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

    async def _declare_ambiguous(
        self, stuck: Delivery, reason: str | None, parcel: Parcel | None = None
    ) -> Delivery | None:
        policy: Policy = self.policy if stuck.attempt < self._max_attempts else "hold"
        marked = await self._ledger.mark_ambiguous(stuck, policy, reason, self._clock.now(), parcel)
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
        """Send the claimed attempt (or settle a suppressed one) and record its outcome."""
        if claimed.state == "suppressed":
            metrics.SUPPRESSED.labels(claimed.reason or "unknown").inc()
            return claimed
        if parcel is None:
            parcel = await self._ledger.parcel(claimed.message_id)
        if parcel is None:
            # The ledger keeps the parcel until the fate is known; erasure may have taken it.
            return await self._record(claimed, Outcome("failed", None, "parcel no longer stored"))
        message = (await self._compose_all([(claimed, parcel)]))[0]
        if isinstance(message, Outcome):
            return await self._record(claimed, message, parcel)
        result = await self._send_one(claimed, parcel, message)
        if isinstance(result, Reply):
            marked = await self._retrying(
                lambda: self._declare_ambiguous(claimed, result.text, parcel)
            )
            if marked is None:
                return await self._lost_claim(claimed)
            return marked
        return await self._record(claimed, result, parcel)

    async def _record(
        self, claimed: Delivery, outcome: Outcome, parcel: Parcel | None = None
    ) -> Delivery:
        done = await self._retrying(
            lambda: self._ledger.finish(claimed, outcome, self._now(), parcel)
        )
        if done is None:
            return await self._lost_claim(claimed)
        self._observe([done])
        log.info(
            "mail outcome recorded",
            extra={
                "message_id": claimed.message_id,
                "contact_id": claimed.contact_id,
                "attempt": claimed.attempt,
                "state": outcome.state,
                "smtp_code": outcome.code,
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
