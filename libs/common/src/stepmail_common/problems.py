"""RFC 9457 problem details: every HTTP error of every service is one of these."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stepmail_common.errors import RETRIABLE_TYPES, is_retriable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 5


class Problem(Exception):
    """An HTTP error to answer as ``application/problem+json``."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str = "about:blank",
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.errors = errors
        self.headers = headers


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": problem.type, "title": problem.title, "status": problem.status}
    if problem.detail:
        body["detail"] = problem.detail
    if instance:
        body["instance"] = instance
    if problem.errors:
        body["errors"] = problem.errors
    return JSONResponse(
        body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    return ".".join(parts) or "body"


def install_problem_handlers(app: FastAPI) -> None:
    """Map validation errors, HTTP errors, ``Problem`` and crashes to problem documents."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": _field(tuple(err.get("loc", ()))), "detail": str(err.get("msg", "invalid"))}
            for err in exc.errors()
        ]
        fields = ", ".join(sorted({e["field"] for e in errors}))
        return problem_response(
            Problem(
                422,
                "Request body is invalid",
                f"Invalid field(s): {fields}",
                type_="urn:stepmail:problem:validation",
                errors=errors,
            ),
            request.url.path,
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(
            Problem(exc.status_code, str(exc.detail), headers=headers), request.url.path
        )

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if not is_retriable(exc):  # e.g. a StepmailError subclass that says so
            return await on_crash(request, exc)
        log.warning(
            "dependency unavailable",
            extra={"path": request.url.path, "error": exc.__class__.__name__},
        )
        unavailable = Problem(
            503,
            "Service unavailable",
            "A dependency (broker or database) is unreachable; nothing was accepted. Retry later.",
            type_="urn:stepmail:problem:unavailable",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
        return problem_response(unavailable, request.url.path)

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
        return problem_response(Problem(500, "Internal error"), request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Dependency failures are answered by the exception middleware (a 503, not re-raised);
    # anything else reaches the server-error handler (a 500, logged with its traceback).
    for exc_type in RETRIABLE_TYPES:
        app.add_exception_handler(exc_type, on_unavailable)
    app.add_exception_handler(Exception, on_crash)
