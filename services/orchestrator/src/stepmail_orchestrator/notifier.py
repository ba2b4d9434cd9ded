"""Signed webhooks to external systems (``notify`` steps: tell the CRM a lead is hot).

Each is signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``) with ``ORCHESTRATOR_WEBHOOK_SECRET``, retried with exponential
back-off on failure, and given up after ``MAX_ATTEMPTS`` (recorded, counted).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import httpx
import orjson

from stepmail_common.clock import Clock
from stepmail_common.loops import PeriodicLoop
from stepmail_common.signing import standard_webhook_key, standard_webhook_signature
from stepmail_orchestrator import metrics, repository

if TYPE_CHECKING:
    import asyncpg

MAX_ATTEMPTS = 8
FIRST_RETRY = timedelta(seconds=30)


class Notifier(PeriodicLoop):
    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        clock: Clock,
        secret: str,
        *,
        interval: float,
        client: httpx.AsyncClient | None = None,
        batch: int = 20,
    ) -> None:
        super().__init__(interval)
        self._pool = pool
        self._clock = clock
        self._key = standard_webhook_key(secret)
        self._client = client or httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        self._batch = batch

    async def finish(self) -> None:
        await self._client.aclose()

    async def run_once(self) -> bool:
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            due = await repository.due_notifications(conn, now, self._batch)
            for row in due:
                body = orjson.dumps(row["body"])
                msg_id = f"msg_{row['id'].hex}"
                stamp = int(now.timestamp())
                headers = {
                    "content-type": "application/json",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": standard_webhook_signature(self._key, msg_id, stamp, body),
                    "user-agent": "stepmail-orchestrator",
                }
                error: str | None = None
                try:
                    response = await self._client.post(row["url"], content=body, headers=headers)
                    if response.status_code >= 300:
                        error = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    error = exc.__class__.__name__
                attempts = row["attempts"] + 1
                if error is None:
                    await repository.notification_result(
                        conn, row["id"], delivered_at=now, next_at=None, failed_at=None, error=None
                    )
                    metrics.NOTIFICATIONS.labels("delivered").inc()
                elif attempts >= MAX_ATTEMPTS:
                    await repository.notification_result(
                        conn, row["id"], delivered_at=None, next_at=None, failed_at=now, error=error
                    )
                    metrics.NOTIFICATIONS.labels("failed").inc()
                else:
                    retry = now + FIRST_RETRY * 2 ** (attempts - 1)
                    await repository.notification_result(
                        conn,
                        row["id"],
                        delivered_at=None,
                        next_at=retry,
                        failed_at=None,
                        error=error,
                    )
                    metrics.NOTIFICATIONS.labels("retried").inc()
        return len(due) >= self._batch
