"""A person's click in a real browser: Debian's chromium opens the delivered mail's HTML,
clicks its tracked link, lands on the target, and the click reaches the engagement topic
and the step's stats.

Chromium is driven with Playwright but never downloaded by it: the test launches the
Debian package's binary (``make chromium`` installs it). Without it the test fails; only
``STEPMAIL_SKIP_BROWSER=1`` skips it.
"""

import asyncio
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from stepmail_devstack.services import SIGNUP_CONSENT
from tests.e2e import harness
from tests.integration.kafka_reader import parse_event

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Headless Chromium calls itself "HeadlessChrome", which the tracker rightly flags as a bot
# (and the stats leave out); a person's desktop Chrome says this.
PERSON_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)
SCENARIO_ID = "browser-click"
LANDING_TITLE = "ガイド / Guide"


def chromium_path() -> str:
    """Debian's chromium; a failure (or a skip, if asked for) when it is not installed."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if found:
        return found
    if os.environ.get("STEPMAIL_SKIP_BROWSER") == "1":
        pytest.skip("STEPMAIL_SKIP_BROWSER=1: the browser test is skipped")
    pytest.fail(
        "Debian's chromium is not installed: run `make chromium` as root"
        " (or set STEPMAIL_SKIP_BROWSER=1 to skip this test)"
    )


@dataclass
class Landing:
    """The link's target: a tiny HTTP server that records the paths it was asked for."""

    url: str
    paths: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def landing() -> Iterator[Landing]:
    visits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            visits.append(self.path)
            body = f"<!doctype html><title>{LANDING_TITLE}</title><h1>ようこそ</h1>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Landing(f"http://127.0.0.1:{server.server_address[1]}/guide", visits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def browser_platform(
    fresh_database, kafka_bootstrap: str, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[harness.Platform]:
    """The platform, with every click counted as a person's however soon after delivery."""
    with harness.running(
        fresh_database,
        kafka_bootstrap,
        repo_root,
        tmp_path_factory,
        TRACKER_MACHINE_WINDOW_SECONDS="0",
        ORCHESTRATOR_SEND_WINDOW="",
    ) as running:
        yield running


def _admin(platform: harness.Platform) -> dict[str, str]:
    return {"Authorization": f"Bearer {platform.admin_token}"}


def _put(platform: harness.Platform, service: str, path: str, body: dict[str, Any]) -> None:
    response = httpx.put(
        f"{platform.url(service)}{path}", json=body, headers=_admin(platform), timeout=10
    )
    assert response.status_code in (200, 201), response.text


def test_a_click_in_chromium_lands_on_the_target_and_is_counted(
    browser_platform: harness.Platform, landing: Landing
):
    executable = chromium_path()
    platform = browser_platform
    target = f"{landing.url}?from=mail"
    _put(
        platform,
        "renderer",
        f"/v1/templates/{SCENARIO_ID}",
        {
            "subject": "{{ contact.name | default('お客様') }} 様、ガイドをお届けします",
            "mail_kind": "marketing",
            "html": (
                "<p>{{ contact.name | default('お客様') }} 様</p>"
                f'<p><a id="guide" href="{target}">ガイドを読む / Read the guide</a></p>'
                '<p><a href="{{ unsubscribe_url }}">配信停止 / Unsubscribe</a></p>'
            ),
        },
    )
    _put(
        platform,
        "orchestrator",
        f"/v1/scenarios/{SCENARIO_ID}",
        {
            "id": SCENARIO_ID,
            "name": "ブラウザでのクリック",
            "mail_kind": "marketing",
            "topic": "news",
            "trigger": {"event": "guide.requested"},
            "steps": [{"id": "guide", "send": {"template": SCENARIO_ID}}],
        },
    )

    contact_id = f"c-{uuid.uuid4().hex[:8]}"
    address = f"hanako.{uuid.uuid4().hex[:6]}@example.com"
    accepted = platform.post_event(
        {
            "type": "guide.requested",
            "contact": {
                "id": contact_id,
                "email": address,
                "name": "山田 花子",
                "consent": SIGNUP_CONSENT,
            },
        }
    )
    assert accepted.status_code == 202, accepted.text
    delivered = harness.wait_for(lambda: platform.mails_to(address), 30, "the guide mail")
    html = platform.catcher.message(delivered[0]["id"])["html"]
    tracked_prefix = f"{platform.url('tracker')}/c/"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(user_agent=PERSON_USER_AGENT).new_page()
            page.set_content(html)
            link = page.locator("a#guide")
            href = link.get_attribute("href")
            assert href is not None
            assert href.startswith(tracked_prefix), "the link goes through the tracker"
            with page.expect_navigation(url=f"{landing.url}**"):
                link.click()
            landed_at = page.url
            landed_title = page.title()
        finally:
            browser.close()

    assert landed_at == target
    assert landed_title == LANDING_TITLE
    # Once, with its query intact (the browser may also ask for /favicon.ico).
    assert [p for p in landing.paths if p.startswith("/guide")] == ["/guide?from=mail"]

    def clicked(records: list) -> bool:
        return any(_clicked_by(r, contact_id) for r in records)

    records = asyncio.run(
        harness.read_topic(platform.kafka_bootstrap, platform.topic("engagement-events"), clicked)
    )
    event = parse_event(next(r for r in records if _clicked_by(r, contact_id)))
    assert event.data["link"]["url"] == target
    assert event.data["machine"] is False, event.data
    assert (event.data["scenario"]["id"], event.data["step"]["id"]) == (SCENARIO_ID, "guide")

    def counted() -> dict[str, Any] | None:
        response = httpx.get(
            f"{platform.url('orchestrator')}/v1/scenarios/{SCENARIO_ID}/stats",
            headers=_admin(platform),
            timeout=5,
        )
        response.raise_for_status()
        steps = [s for s in response.json()["steps"] if s["step"] == "guide"]
        return steps[0] if steps and steps[0]["clicked_unique"] == 1 else None

    step = harness.wait_for(counted, 30, "the click in the step's stats")
    assert (step["sent"], step["delivered"]) == (1, 1)
    assert step["click_rate"] == 1.0


def _clicked_by(record: Any, contact_id: str) -> bool:
    return bool(
        record.key == contact_id.encode()
        and b'"stepmail.engagement.clicked.v1"' in (record.value or b"")
    )


def test_without_chromium_the_browser_test_fails_unless_asked_to_skip(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(os, "access", lambda _path, _mode: False)
    monkeypatch.delenv("STEPMAIL_SKIP_BROWSER", raising=False)
    with pytest.raises(pytest.fail.Exception, match="make chromium"):
        chromium_path()
    monkeypatch.setenv("STEPMAIL_SKIP_BROWSER", "1")
    with pytest.raises(pytest.skip.Exception):
        chromium_path()
