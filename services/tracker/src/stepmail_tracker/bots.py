"""Telling a machine (privacy proxy, link scanner, prefetcher, script) from a person.

A machine's open or click is still recorded, flagged with a short, bounded reason, so
stats count people only and analysts can see what was filtered and why.
"""

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCANNER = re.compile(
    r"barracuda|proofpoint|mimecast|safelinks|safe ?links|trendmicro|symantec|fortiguard|"
    r"messagelabs|ironport|forcepoint|sophos|cloudmark|appriver|zscaler",
    re.IGNORECASE,
)
_MAIL_PROXY = re.compile(r"googleimageproxy|yahoomailproxy|ymailproxy", re.IGNORECASE)
_BOT = re.compile(
    r"bot\b|bot/|crawler|spider|scanner|preview|prefetch|headless|"
    r"curl/|wget/|python-requests|python-httpx|aiohttp|go-http-client|java/|okhttp|"
    r"facebookexternalhit|slackbot|slurp",
    re.IGNORECASE,
)
# Apple Mail Privacy Protection fetches with exactly this user agent.
_BARE_MOZILLA = "Mozilla/5.0"


def user_agent_reason(user_agent: str | None) -> str | None:
    """Why a user agent is a machine's, or ``None`` when it looks like a person's client."""
    if not user_agent or not user_agent.strip():
        return "no-user-agent"
    agent = user_agent.strip()
    if agent == _BARE_MOZILLA:
        return "privacy-proxy"
    if _SCANNER.search(agent):
        return "link-scanner"
    if _MAIL_PROXY.search(agent):
        return "mail-proxy"
    if _BOT.search(agent):
        return "bot"
    return None


def looks_automated(user_agent: str | None) -> bool:
    """True for a missing user agent or one that names a bot, scanner, proxy or library."""
    return user_agent_reason(user_agent) is not None


def in_networks(address: str | None, networks: Sequence[IPNetwork]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in networks)


def machine_reason(
    *,
    user_agent: str | None,
    client_ip: str | None,
    proxy_networks: Sequence[IPNetwork],
    sent_at: datetime | None,
    now: datetime,
    window_seconds: float,
) -> str | None:
    """The first reason an open or click is a machine's, or ``None`` for a person."""
    reason = user_agent_reason(user_agent)
    if reason is not None:
        return reason
    if in_networks(client_ip, proxy_networks):
        return "proxy-network"
    if sent_at is not None and (now - sent_at).total_seconds() < window_seconds:
        return "too-soon-after-delivery"
    return None
