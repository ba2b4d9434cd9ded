"""What every service's FastAPI app has: health, readiness, metrics, problems, request metrics."""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from opentelemetry import propagate, trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepmail_common import telemetry
from stepmail_common.problems import Problem, install_problem_handlers

log = logging.getLogger(__name__)
tracer = trace.get_tracer("stepmail.http")

ReadinessCheck = Callable[[], Awaitable[object]]


# FastAPI's own OpenTelemetry spans are off (``FastAPI(telemetry=FASTAPI_TELEMETRY)``):
# they record the raw path and query, which hold the tracker's tokens, and they start
# only with an SDK tracer, while ``RequestTracing`` also passes a caller's trace on when
# nothing is exported.
FASTAPI_TELEMETRY: TelemetryConfig = {"tracing": False}

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes: frequent, and of no interest in a trace.
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def _method(scope: Scope) -> str:
    """The request method, or ``_OTHER``: a client must not be able to mint label values."""
    method = str(scope["method"])
    return method if method in _METHODS else "_OTHER"


def _route(scope: Scope) -> str | None:
    route = scope.get("route")
    return None if route is None else str(getattr(route, "path", None) or "") or None


class RequestTracing:
    """A server span per request that continues the caller's ``traceparent``, if any.

    Named ``<method> <route template>`` (never the raw path, which may hold tokens). With
    the no-op tracer (no exporter configured) it still carries an incoming trace on to the
    events the request publishes.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACED:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        if not telemetry.recording():
            await self._pass_on(carrier, scope, receive, send)
            return
        method = _method(scope)
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracer.start_as_current_span(
            method,
            context=propagate.extract(carrier) if carrier else None,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.scheme": scope.get("scheme", "http")},
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = _route(scope)
                if route is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)

    async def _pass_on(
        self, carrier: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """No span is recorded: only continue the caller's trace, if it sent one."""
        if not carrier:
            await self.app(scope, receive, send)
            return
        with telemetry.attached(propagate.extract(carrier)):
            await self.app(scope, receive, send)


class RequestMetrics:
    """Counts requests and their latency by method, route template and status.

    A plain ASGI middleware: the route template comes from the ``route`` the router put in
    the scope (bounded labels; never the raw path, which may hold tokens or ids).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = _route(scope) or "unmatched"
            method = _method(scope)
            telemetry.HTTP_REQUESTS.labels(method, template, str(status)).inc()
            telemetry.HTTP_SECONDS.labels(method, template).observe(time.perf_counter() - started)


def ops_router(checks: dict[str, ReadinessCheck]) -> APIRouter:
    """``/healthz`` (the process lives), ``/readyz`` (dependencies answer), ``/metrics``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        ready = True
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), timeout=2.0)
                results[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                ready = False
                results[name] = exc.__class__.__name__
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": results},
            status_code=200 if ready else 503,
        )

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def install_common(app: FastAPI, checks: dict[str, ReadinessCheck]) -> None:
    """Add the ops routes, the problem handlers and per-route request metrics."""
    install_problem_handlers(app)
    app.include_router(ops_router(checks))

    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestTracing)


def supervise(coro: Coroutine[Any, Any, None], name: str) -> "asyncio.Task[None]":
    """Run a background loop; if it dies, the process stops so the orchestrator restarts it."""

    def done(task: "asyncio.Task[None]") -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.critical("background task died; stopping", exc_info=exc, extra={"task": name})
            os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(done)
    return task


async def cancel_and_wait(task: "asyncio.Task[None]", grace: float = 30.0) -> None:
    """Give a task that was asked to stop ``grace`` seconds, then cancel it."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=grace)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception:  # noqa: BLE001, S110 - already logged by supervise()
        pass


class BackgroundWorker(Protocol):
    """A loop with a lifecycle, such as ``EventConsumer``."""

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


async def start_background(
    stack: AsyncExitStack, worker: BackgroundWorker, name: str, grace: float = 30.0
) -> "asyncio.Task[None]":
    """Start ``worker`` under supervision; on exit of ``stack`` ask it to stop, then wait."""
    return (await start_together(stack, [(worker, name)], grace))[0]


async def start_together(
    stack: AsyncExitStack,
    workers: Sequence[tuple[BackgroundWorker, str]],
    grace: float = 30.0,
) -> "list[asyncio.Task[None]]":
    """Start several workers at once, then run each under supervision.

    Consumers join their groups in ``start``; a first join waits out the broker's initial
    rebalance delay (seconds), so joining together makes a restarted pod ready sooner.
    """
    async with asyncio.TaskGroup() as starting:
        for worker, _ in workers:
            starting.create_task(worker.start())
    tasks = []
    for worker, name in workers:
        task = supervise(worker.run(), name)

        async def stop(
            worker: BackgroundWorker = worker, task: "asyncio.Task[None]" = task
        ) -> None:
            await worker.stop()
            await cancel_and_wait(task, grace)

        stack.push_async_callback(stop)
        tasks.append(task)
    return tasks


def dependency_checks(app: FastAPI, *, database: bool = True) -> dict[str, ReadinessCheck]:
    """Readiness of ``app.state.pool`` (unless ``database`` is False) and ``app.state.producer``."""

    async def database_ready() -> None:
        await app.state.pool.fetchval("SELECT 1")

    async def broker_ready() -> None:
        await app.state.producer.ping()

    checks: dict[str, ReadinessCheck] = {"broker": broker_ready}
    if database:
        checks["database"] = database_ready
    return checks


def admin_guard(token: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency that admits ``Authorization: Bearer <token>`` (compared in constant time)."""
    expected = hashlib.sha256(token.encode()).digest()

    async def guard(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        actual = hashlib.sha256(given.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(actual, expected):
            raise Problem(
                401,
                "Unauthorized",
                "Send the admin token as 'Authorization: Bearer <token>'.",
                type_="urn:stepmail:problem:unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="stepmail"'},
            )

    return guard
