"""An unsubscribe made while the contact's later mails are already rendered: none is sent."""

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stepmail_common.events import CloudEvent
from stepmail_devstack.catcher import CatcherProcess
from stepmail_devstack.processes import free_port
from stepmail_devstack.services import (
    SERVICE_NAMES,
    ServiceProcess,
    platform_env,
    signup_event,
    start_platform,
    stop_services,
)
from tests.e2e import harness

pytestmark = pytest.mark.e2e

SCENARIO = {
    "id": "tracker-e2e-drip",
    "name": "配信停止テスト",
    "mail_kind": "marketing",
    "trigger": {"event": "signup"},
    "steps": [
        {"id": "first", "wait": "0s", "send": {"template": "welcome"}},
        {"id": "second", "wait": "2s", "send": {"template": "welcome"}},
    ],
}


@pytest.fixture(scope="module")
def held_platform(
    fresh_database, kafka_bootstrap: str, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[harness.Platform, ServiceProcess]]:
    """Every service but the sender, which the test starts when it chooses."""
    log_dir = tmp_path_factory.mktemp("logs")
    prefix = f"e2e{uuid.uuid4().hex[:8]}."
    catcher = CatcherProcess(free_port(), free_port())
    catcher.start()
    ports = {name: free_port() for name in SERVICE_NAMES}
    database = fresh_database("e2e")
    extra = {"KAFKA_TOPIC_PREFIX": prefix, "ORCHESTRATOR_SEND_WINDOW": ""}
    held = {name: port for name, port in ports.items() if name != "sender"}
    services: dict[str, ServiceProcess] = {}
    try:
        services = start_platform(
            database,
            kafka_bootstrap,
            catcher.smtp_url,
            repo_root,
            ports=held,
            extra_env=extra,
            log_dir=log_dir,
            ready_timeout=90,
        )
        env = platform_env(database, kafka_bootstrap, catcher.smtp_url, ports, repo_root, extra)
        sender = ServiceProcess(
            "sender", ports["sender"], env["sender"], cwd=repo_root, log_path=log_dir / "sender.log"
        )
        services["sender"] = sender
        yield harness.Platform(services, catcher, kafka_bootstrap, prefix), sender
    finally:
        stop_services(services.values())
        catcher.stop()


def test_unsubscribe_stops_mails_that_were_already_rendered(
    held_platform: tuple[harness.Platform, ServiceProcess],
):
    platform, sender = held_platform
    admin = {"Authorization": f"Bearer {platform.admin_token}"}
    put = httpx.put(
        f"{platform.url('orchestrator')}/v1/scenarios/{SCENARIO['id']}",
        json=SCENARIO,
        headers=admin,
        timeout=10,
    )
    assert put.status_code in (200, 201), put.text

    contact_id = f"c-{uuid.uuid4().hex[:8]}"
    address = f"taro.{uuid.uuid4().hex[:6]}@example.com"
    assert platform.post_event(signup_event(contact_id, address, "鈴木 太郎")).status_code == 202

    def both_rendered(records: list) -> bool:
        return len(_drip_mails(records, contact_id)) == 2

    records = asyncio.run(
        harness.read_topic(
            platform.kafka_bootstrap, platform.topic("mail-rendered"), both_rendered, within=60
        )
    )
    mails = _drip_mails(records, contact_id)
    unsubscribe_url = re.search(r"List-Unsubscribe: <(http[^>]+/u/[^>]+)>", mails[0].data["mime"])
    assert unsubscribe_url, "the rendered mail has a List-Unsubscribe URL"

    one_click = {"List-Unsubscribe": "One-Click"}
    first = httpx.post(unsubscribe_url.group(1), data=one_click, timeout=10)
    replay = httpx.post(unsubscribe_url.group(1), data=one_click, timeout=10)
    assert first.status_code == replay.status_code == 200
    assert "location" not in first.headers

    sender.start()
    sender.wait_ready(90)
    for mail in mails:
        message_id = mail.data["message_id"]

        def verdict(message_id: str = message_id) -> dict | None:
            return _final(platform.delivery(message_id))

        delivery = harness.wait_for(
            verdict,
            60,
            f"the ledger's verdict on step {mail.data['step']['id']}",
        )
        assert delivery["state"] == "suppressed", delivery
    assert platform.mails_to(address) == []


def _drip_mails(records: list, contact_id: str) -> list[CloudEvent]:
    events = [CloudEvent.from_json(r.value) for r in records if r.key == contact_id.encode()]
    return sorted(
        (e for e in events if e.data["scenario"]["id"] == SCENARIO["id"]),
        key=lambda e: e.data["step"]["index"],
    )


def _final(delivery: dict | None) -> dict | None:
    if delivery and delivery.get("state") in ("sent", "suppressed", "failed"):
        return delivery
    return None
