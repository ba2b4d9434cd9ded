"""The whole platform as real processes, for end-to-end tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stepmail_common.kafka import log_ends
from stepmail_devstack.catcher import CatcherProcess
from stepmail_devstack.processes import free_port
from stepmail_devstack.services import (
    DEV_INGEST_API_KEY,
    SERVICE_NAMES,
    ServiceProcess,
    start_platform,
    stop_services,
)
from stepmail_devstack.topic_reader import read_topic as read_topic

T = TypeVar("T")


@dataclass
class Platform:
    """Five services on free ports, their own topics (by prefix) and database."""

    services: dict[str, ServiceProcess]
    catcher: CatcherProcess
    kafka_bootstrap: str
    topic_prefix: str
    api_key: str = DEV_INGEST_API_KEY
    admin_token: str = "dev-admin-token"

    def url(self, service: str) -> str:
        return self.services[service].base_url

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def post_event(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url('ingest')}/v1/events",
            json=body,
            headers={"Authorization": f"Bearer {self.api_key}", **headers},
            timeout=10,
        )

    def mails_to(self, address: str) -> list[dict[str, Any]]:
        return [m for m in self.catcher.messages() if address in m["rcpt_to"]]

    def delivery(self, message_id: str) -> dict[str, Any] | None:
        response = httpx.get(f"{self.url('sender')}/v1/deliveries/{message_id}", timeout=5)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def enrollments(self, contact_id: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url('orchestrator')}/v1/contacts/{contact_id}/enrollments",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=5,
        )
        response.raise_for_status()
        enrollments: list[dict[str, Any]] = response.json()["enrollments"]
        return enrollments


@contextmanager
def running(
    fresh_database: Callable[[str], str],
    kafka_bootstrap: str,
    repo_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    accept_delay: float = 0.0,
    **extra_env: str,
) -> Iterator[Platform]:
    """The catcher (answering each mail ``accept_delay`` seconds late) and the five services
    on a fresh database, stopped on the way out."""
    prefix = f"e2e{uuid.uuid4().hex[:8]}."
    catcher = CatcherProcess(free_port(), free_port(), accept_delay=accept_delay)
    catcher.start()
    try:
        services = start_platform(
            fresh_database("e2e"),
            kafka_bootstrap,
            catcher.smtp_url,
            repo_root,
            ports={name: free_port() for name in SERVICE_NAMES},
            extra_env={"KAFKA_TOPIC_PREFIX": prefix, **extra_env},
            log_dir=tmp_path_factory.mktemp("logs"),
            ready_timeout=90,
        )
        try:
            yield Platform(services, catcher, kafka_bootstrap, prefix)
        finally:
            stop_services(services.values())
    finally:
        catcher.stop()


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        offsets = await log_ends(bootstrap, tps) if tps else {}
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await consumer.stop()
