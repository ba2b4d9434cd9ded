"""The tracker's pure parts: one-click bodies, bot detection."""

import pytest

from stepmail_tracker.bots import looks_automated
from stepmail_tracker.unsubscribe import method_of

BOUNDARY = "----stepmail"


def _multipart(name: str, value: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        f"{value}\r\n--{BOUNDARY}--\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "method"),
    [
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click", "one-click"),
        (
            "application/x-www-form-urlencoded; charset=utf-8",
            b"List-Unsubscribe=One-Click",
            "one-click",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            _multipart("List-Unsubscribe", "One-Click"),
            "one-click",
        ),
        ("application/x-www-form-urlencoded", b"confirm=page", "page"),
        (f"multipart/form-data; boundary={BOUNDARY}", _multipart("confirm", "page"), "page"),
        ("multipart/form-data", b"garbage", "page"),
        (None, b"", "page"),
    ],
)
def test_method_of_an_unsubscribe_post(content_type, body, method):
    assert method_of(content_type, body) == method


@pytest.mark.parametrize(
    ("agent", "machine"),
    [
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15", False),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0 Safari/537.36", False),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
        ("Barracuda Sentinel (EE)", True),
        ("python-httpx/0.28.1", True),
        ("", True),
        (None, True),
    ],
)
def test_obvious_machines_are_flagged(agent, machine):
    assert looks_automated(agent) is machine
