"""Process entry point shared by the services: ``python -m stepmail_<name> [serve|migrate]``."""

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from stepmail_common.settings import CommonSettings
from stepmail_common.telemetry import configure_logging, configure_tracing

S = TypeVar("S", bound=CommonSettings)


def main(
    service: str,
    settings_factory: Callable[[], S],
    create_app: Callable[[S], FastAPI],
    run_migrations: Callable[[S], Coroutine[Any, Any, None]],
) -> None:
    parser = argparse.ArgumentParser(prog=f"stepmail-{service}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args()
    settings = settings_factory()
    configure_logging(service, settings.log_level)
    if args.command == "migrate":
        asyncio.run(run_migrations(settings))
        return
    configure_tracing(service, settings.otel_exporter_otlp_endpoint)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=20,
        loop="uvloop",
        http="httptools",
    )
    uvicorn.Server(config).run()
