"""The OpenAPI document: every error is documented as RFC 9457 problem+json."""

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from stepmail_common.problems import PROBLEM_JSON
from stepmail_ingest.schemas import ProblemDoc

_DESCRIPTIONS = {
    "400": "Bad request",
    "401": "Missing, unknown or revoked credentials, or a bad webhook signature",
    "403": "The API key lacks the scope",
    "404": "Not found",
    "409": "Conflict",
    "413": "Body larger than the limit; nothing was accepted",
    "422": "Invalid input; `errors[].field` names each wrong field; nothing was accepted",
    "429": "Rate limit of the key exceeded; see Retry-After",
    "503": "Broker or database unreachable; nothing was accepted; see Retry-After",
}


def install_openapi(app: FastAPI, bodies: Sequence[type[BaseModel]] = ()) -> None:
    """Replace the generated error responses with problem documents.

    ``bodies`` are the request models of routes that read their body by hand (so FastAPI
    does not see them): their schemas join the components the routes refer to.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        if bodies:
            _, defs = models_json_schema(
                [(model, "validation") for model in bodies],
                ref_template="#/components/schemas/{model}",
            )
            # as get_openapi() writes its own: keys whose value is None left out
            for name, schema in jsonable_encoder(defs["$defs"], exclude_none=True).items():
                components.setdefault(name, schema)
        components["Problem"] = ProblemDoc.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                for code, response in operation.get("responses", {}).items():
                    if code[0] in "45":
                        response["content"] = problem
                        response["description"] = _DESCRIPTIONS.get(code, response["description"])
                        if code in ("429", "503"):
                            response["headers"] = {
                                "Retry-After": {
                                    "description": "seconds to wait",
                                    "schema": {"type": "integer"},
                                }
                            }
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
