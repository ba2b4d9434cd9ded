"""Telling an obvious machine (link scanner, prefetcher, script) from a person."""

import re

_MACHINE = re.compile(
    r"bot\b|bot/|crawler|spider|scanner|preview|prefetch|headless|"
    r"curl/|wget/|python-requests|python-httpx|aiohttp|go-http-client|java/|okhttp|"
    r"barracuda|proofpoint|mimecast|safelinks|trendmicro|symantec|fortiguard|"
    r"facebookexternalhit|slackbot|slurp",
    re.IGNORECASE,
)


def looks_automated(user_agent: str | None) -> bool:
    """True for a missing user agent or one that names a bot, scanner or HTTP library."""
    if not user_agent or not user_agent.strip():
        return True
    return _MACHINE.search(user_agent) is not None
