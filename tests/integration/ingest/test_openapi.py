"""The served OpenAPI document, fuzzed by schemathesis against a running ingest process."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from stepmail_devstack.processes import free_port
from stepmail_devstack.services import ServiceProcess

pytestmark = pytest.mark.integration

# What the issue asks: no 5xx and every response as documented (status, type, schema).
# Not positive_data_acceptance: some rules (IANA zones, evidence for consent) are not
# expressible in JSON Schema, so schema-valid data may rightly be refused with 422.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
ADMIN = "sm_schemathesis_admin_0123456789abcdef"


@pytest.fixture(scope="module")
def ingest_url(fresh_database, kafka_bootstrap: str, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    env = {
        "DATABASE_URL": fresh_database("ingest_api"),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": f"s{uuid.uuid4().hex[:8]}.",
        "KAFKA_TOPIC_PARTITIONS": "1",
        "HTTP_PORT": str(port),
        "INGEST_BOOTSTRAP_API_KEY": ADMIN,
        "INGEST_RATE_LIMIT_PER_SECOND": "100000",
        "PYTHONUNBUFFERED": "1",
        "PATH": "/usr/bin:/bin",
    }
    log: Path = tmp_path_factory.mktemp("ingest") / "ingest.log"
    service = ServiceProcess("ingest", port, env, log_path=log)
    service.start()
    try:
        service.wait_ready()
        yield service.base_url
    finally:
        service.terminate(10)


def test_every_endpoint_and_error_is_documented(ingest_url: str):
    doc = httpx.get(f"{ingest_url}/openapi.json").json()
    paths = doc["paths"]
    for path in [
        "/v1/events",
        "/v1/events:batch",
        "/v1/contacts",
        "/v1/contacts/{contact_id}",
        "/v1/segment/track",
        "/v1/segment/identify",
        "/v1/segment/batch",
        "/v1/shopify/webhooks",
        "/v1/webhooks/{source}",
        "/v1/admin/api-keys",
        "/v1/admin/api-keys/{key_id}",
        "/v1/admin/webhook-sources",
        "/v1/admin/webhook-sources/{name}",
    ]:
        assert path in paths
    post = paths["/v1/events"]["post"]["responses"]
    for code in ("401", "403", "413", "422", "429", "503"):
        assert "application/problem+json" in post[code]["content"]


def test_schemathesis_finds_no_server_error(ingest_url: str):
    schema = schemathesis.openapi.from_url(f"{ingest_url}/openapi.json")
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {ADMIN}"}

    for operation in schema.get_all_operations():
        op = operation.ok()  # type: ignore[union-attr]

        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=op.as_strategy())
        def check(case: schemathesis.Case) -> None:
            try:
                case.call_and_validate(base_url=ingest_url, headers=headers, checks=CHECKS)
            except Exception as exc:
                failures.append(
                    f"{case.operation.method.upper()} {case.operation.path}: {exc}"[:2000]
                )

        check()
    assert not failures, "\n\n".join(failures[:5])
