"""The event routes' requests, read by hand: the hottest path of ingest.

FastAPI's parameter machinery (dependency solving, header, query and cookie parsing
for each level, the body through the standard library's JSON parser) cost more than
the event itself. The event routes take the ``Request`` and call these, which keep
FastAPI's rules and answers: the body is decoded first (a JSON error is a 422 before
authentication), then the key is checked (401, 403, 429), then the header and the body
are validated together, every wrong field named in one 422. Their OpenAPI description
is given with the route (``openapi_extra``), and ``HandReadRoute`` runs them without
FastAPI's per-request machinery, which has nothing left to do for them.
"""

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, TypeVar

import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError
from starlette.routing import request_response

IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENCY_DESCRIPTION = (
    "dedupes for INGEST_IDEMPOTENCY_HOURS (48 h); same key and body = same answer"
)

M = TypeVar("M", bound=BaseModel)


class _Missing:
    """No body at all (FastAPI's ``Undefined``)."""


MISSING: Final = _Missing()

_KEY: TypeAdapter[str] = TypeAdapter(
    Annotated[str, StringConstraints(min_length=1, max_length=200)]
)


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, as FastAPI decides it."""
    if not content_type:
        # FastAPI's strict content type: without the header, the body is not JSON.
        return False
    main, _, sub = content_type.partition(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def decode_body(raw: bytes, content_type: str | None) -> object:
    """The decoded JSON body, ``MISSING`` when empty, the bytes when not declared JSON.

    orjson decodes; the standard library is asked again only when orjson refuses, so
    what it accepts beyond strict JSON (``NaN``) stays accepted as before.
    """
    if not raw:
        return MISSING
    if not _is_json(content_type):
        return raw
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from exc
    except UnicodeDecodeError as exc:
        raise HTTPException(400, "There was an error parsing the body") from exc


def idempotency_key(request: Request, errors: list[dict[str, Any]]) -> str | None:
    """The ``Idempotency-Key`` header (1 to 200 characters); a bad one is added to ``errors``."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    try:
        return _KEY.validate_python(value)
    except ValidationError as exc:
        errors.extend(
            {**err, "loc": ("header", IDEMPOTENCY_HEADER, *err["loc"])} for err in exc.errors()
        )
        return None


def parse_valid(model: type[M], raw: bytes, content_type: str | None) -> M | None:
    """``raw`` parsed and validated as ``model`` in one pass, or ``None`` when it is not
    valid JSON of it: then ``decode_body`` and ``body_as`` make FastAPI's answer."""
    if not raw or not _is_json(content_type):
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None


def body_as(model: type[M], body: object, errors: list[dict[str, Any]]) -> M:
    """``body`` validated as ``model``; raises every error so far, the body's included."""
    if isinstance(body, _Missing):
        errors.append({"type": "missing", "loc": ("body",), "msg": "Field required"})
        raise RequestValidationError(errors)
    try:
        parsed = model.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        errors.extend({**err, "loc": ("body", *err["loc"])} for err in exc.errors())
        raise RequestValidationError(errors) from None
    if errors:
        raise RequestValidationError(errors)
    return parsed


def openapi_extra(model: type[BaseModel]) -> dict[str, Any]:
    """What FastAPI would document for a route taking ``model`` as its body, an
    ``Idempotency-Key`` header and a bearer API key, all read by hand."""
    return {
        "security": [{"HTTPBearer": []}],
        "parameters": [
            {
                "description": IDEMPOTENCY_DESCRIPTION,
                "in": "header",
                "name": IDEMPOTENCY_HEADER,
                "required": False,
                "schema": {
                    "anyOf": [
                        {"maxLength": 200, "minLength": 1, "type": "string"},
                        {"type": "null"},
                    ],
                    "description": IDEMPOTENCY_DESCRIPTION,
                    "title": "Idempotency-Key",
                },
            }
        ],
        "requestBody": {
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
            "required": True,
        },
    }


Endpoint = Callable[[Request], Awaitable[Response]]


class HandReadRoute(APIRoute):
    """A route whose endpoint takes only the ``Request`` and returns its ``Response``,
    run as Starlette runs an endpoint: FastAPI's per-request machinery (two exit stacks,
    dependency solving, the response model) has nothing to do for it and is skipped.
    Documented like any route, with ``openapi_extra``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        if (
            dependant.dependencies
            or dependant.path_params
            or dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or dependant.body_params
            or dependant.request_param_name is None
        ):
            raise TypeError(f"{path}: a hand-read endpoint takes only the Request")
        self.app = request_response(endpoint)


def post_hand_read(app: FastAPI, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
    """``@app.post(path, **kwargs)`` for an endpoint that reads its request by hand."""

    def register(endpoint: Endpoint) -> Endpoint:
        app.router.add_api_route(
            path, endpoint, methods=["POST"], route_class_override=HandReadRoute, **kwargs
        )
        return endpoint

    return register
