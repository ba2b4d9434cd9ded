"""Telemetry without an exporter: nothing is exported, yet a caller's trace passes on;
request metrics cannot be given new label values by a client."""

import httpx
from fastapi import FastAPI
from opentelemetry import trace
from prometheus_client import REGISTRY

from stepmail_common import telemetry
from stepmail_common.webapp import FASTAPI_TELEMETRY, install_common

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _app() -> FastAPI:
    app = FastAPI(telemetry=FASTAPI_TELEMETRY)
    install_common(app, {})

    @app.post("/v1/things")
    async def things() -> dict[str, str]:
        # What an event published here would carry in its Kafka headers.
        return {k: v.decode() for k, v in telemetry.inject_headers()}

    return app


def test_without_an_endpoint_no_tracer_is_installed():
    before = trace.get_tracer_provider()
    assert telemetry.configure_tracing("ingest", None) is None
    assert telemetry.configure_tracing("ingest", "") is None
    assert trace.get_tracer_provider() is before


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://svc")


async def test_an_untraced_service_passes_the_callers_trace_on():
    async with _client() as client:
        response = await client.post(
            "/v1/things", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        )
        assert response.json()["traceparent"].startswith(f"00-{TRACE_ID}-")
        assert (await client.post("/v1/things")).json() == {}


async def test_a_made_up_method_is_counted_as_other():
    async with _client() as client:
        await client.request("BREW", "/v1/things")
        await client.request("BREW", "/coffee-pot")
    methods = {
        sample.labels["method"]
        for family in REGISTRY.collect()
        if family.name == "stepmail_http_requests"
        for sample in family.samples
    }
    assert "_OTHER" in methods
    assert "BREW" not in methods
    routes = {
        sample.labels["route"]
        for family in REGISTRY.collect()
        if family.name == "stepmail_http_requests"
        for sample in family.samples
        if sample.labels["method"] == "_OTHER"
    }
    assert routes <= {"/v1/things", "unmatched"}
