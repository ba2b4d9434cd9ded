"""What keeps ingest's request path cheap: no thread hand-offs, ids made in bulk."""

import inspect
import uuid

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from stepmail_ingest.app import create_app
from stepmail_ingest.service import random_ids
from stepmail_ingest.settings import IngestSettings


def _calls(dependant: Dependant) -> list[object]:
    calls: list[object] = []
    for sub in dependant.dependencies:
        calls.append(sub.call)
        calls.extend(_calls(sub))
    return calls


def _runs_in_the_loop(call: object) -> bool:
    if inspect.iscoroutinefunction(call):
        return True
    # Security schemes are instances whose __call__ is async.
    return inspect.iscoroutinefunction(getattr(call, "__call__", None))  # noqa: B004


def test_every_dependency_and_endpoint_is_async():
    """FastAPI runs a plain ``def`` dependency or endpoint in a worker thread per request."""
    app = create_app(IngestSettings())
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert routes
    for route in routes:
        assert inspect.iscoroutinefunction(route.endpoint), route.path
        for call in _calls(route.dependant):
            assert _runs_in_the_loop(call), (route.path, call)


def test_random_ids_are_distinct_uuid4_strings():
    ids = list(random_ids(2000))
    assert len(ids) == len(set(ids)) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert list(random_ids(0)) == []
