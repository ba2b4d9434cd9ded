"""Two orchestrator processes on one database and one consumer group.

Timers are claimed row by row in Postgres, so replicas share the due steps without a
coordinator: every due step is fired by exactly one of them, also when one is killed
with SIGKILL between two waves and comes back.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from pathlib import Path

import httpx
import orjson

from stepmail_common.db import create_pool
from stepmail_devstack.processes import free_port
from stepmail_devstack.services import (
    DEV_INGEST_API_KEY,
    ServiceProcess,
    platform_env,
    stop_services,
)
from tests.e2e.harness import read_topic, wait_for

CONTACTS = 400
SCENARIO = """\
id: replicas
name: Two waves of timers
mail_kind: transactional
trigger:
  event: signup
steps:
  - id: first
    wait: 3s
    send: {template: welcome}
  - id: second
    wait: 4s
    send: {template: welcome}
"""


def _fired(orchestrator: ServiceProcess) -> float:
    """Send steps this process emitted, from its own /metrics."""
    text = httpx.get(f"{orchestrator.base_url}/metrics", timeout=5).text
    pattern = r'^stepmail_orchestrator_steps_due_total\{scenario="replicas"\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def _signups(prefix: str) -> dict[str, object]:
    return {
        "events": [
            {
                "type": "signup",
                "contact": {"id": f"{prefix}-{i}", "email": f"r{i}@example.com", "name": "R"},
            }
            for i in range(CONTACTS)
        ]
    }


def test_two_replicas_fire_every_due_step_exactly_once_through_a_sigkill(
    fresh_database, kafka_bootstrap: str, repo_root: Path, tmp_path: Path
) -> None:
    database_url = fresh_database("replicas")
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "replicas.yaml").write_text(SCENARIO)
    prefix = f"rep{uuid.uuid4().hex[:8]}."
    ports = {"ingest": free_port(), "orchestrator": free_port()}
    extra = {
        "KAFKA_TOPIC_PREFIX": prefix,
        "ORCHESTRATOR_SCENARIOS_DIR": str(scenarios),
        # Small claims, so that both replicas take part in each wave.
        "ORCHESTRATOR_TIMER_BATCH": "10",
        "ORCHESTRATOR_TIMER_INTERVAL_SECONDS": "0.05",
    }
    envs = platform_env(
        database_url, kafka_bootstrap, "smtp://127.0.0.1:1", ports, repo_root, extra
    )
    second_port = free_port()
    processes = [
        ServiceProcess(
            "ingest",
            ports["ingest"],
            envs["ingest"],
            cwd=repo_root,
            log_path=tmp_path / "ingest.log",
        ),
        ServiceProcess(
            "orchestrator",
            ports["orchestrator"],
            envs["orchestrator"],
            cwd=repo_root,
            log_path=tmp_path / "orchestrator-a.log",
        ),
        ServiceProcess(
            "orchestrator",
            second_port,
            {**envs["orchestrator"], "HTTP_PORT": str(second_port)},
            cwd=repo_root,
            log_path=tmp_path / "orchestrator-b.log",
        ),
    ]
    ingest, replica_a, replica_b = processes
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_ready(90)

        response = httpx.post(
            f"{ingest.base_url}/v1/events:batch",
            json=_signups(prefix.rstrip(".")),
            headers={"Authorization": f"Bearer {DEV_INGEST_API_KEY}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text

        def firsts_fired() -> bool:
            return _fired(replica_a) + _fired(replica_b) >= CONTACTS

        wait_for(firsts_fired, 30, "the first wave of due steps")
        assert _fired(replica_a) > 0, "replica a took part"
        assert _fired(replica_b) > 0, "replica b took part"
        replica_b.kill()
        replica_b.start()
        replica_b.wait_ready(90)

        try:
            records = asyncio.run(
                read_topic(
                    kafka_bootstrap,
                    f"{prefix}steps-due",
                    lambda got: len({r.key for r in got}) >= CONTACTS and len(got) >= 2 * CONTACTS,
                    within=60,
                )
            )
        except AssertionError as exc:
            state = asyncio.run(_state(database_url))
            logs = {
                p.log_path.name: (p.running, _troubles(p.log_path)) for p in processes if p.log_path
            }
            raise AssertionError(f"{exc}; database: {state}; running, troubles: {logs}") from exc
        # A moment more, so that a late double firing would be on the topic too.
        records = asyncio.run(
            read_topic(
                kafka_bootstrap, f"{prefix}steps-due", lambda got: len(got) >= len(records), 5
            )
        )
        fired = asyncio.run(_fired_in_database(database_url))
    finally:
        stop_services(processes)

    steps = [orjson.loads(r.value)["data"] for r in records]
    per_step = Counter((s["enrollment_id"], s["step"]["id"]) for s in steps)
    assert len(per_step) == 2 * CONTACTS
    # The outbox relay may publish a row again after a kill (at least once); the
    # message id is the same, so the renderer and sender treat it as one mail.
    assert len({s["message_id"] for s in steps}) == 2 * CONTACTS
    assert fired == {"first": CONTACTS, "second": CONTACTS}


async def _fired_in_database(database_url: str) -> dict[str, int]:
    pool = await create_pool(database_url, "orchestrator")
    try:
        rows = await pool.fetch("SELECT step_id, count(*) AS n FROM messages GROUP BY step_id")
    finally:
        await pool.close()
    return {r["step_id"]: r["n"] for r in rows}


async def _state(database_url: str) -> dict[str, object]:
    """What the orchestrator's tables hold, for a failure's message."""
    pool = await create_pool(database_url, "orchestrator")
    try:
        return {
            "messages": await _fired_in_database(database_url),
            "outbox rows": await pool.fetchval("SELECT count(*) FROM outbox"),
            "enrollments": [
                dict(r)
                for r in await pool.fetch(
                    "SELECT status, step_index, next_due_at <= now() AS due, count(*) AS n"
                    " FROM enrollments GROUP BY 1, 2, 3"
                )
            ],
            "sessions": [
                dict(r)
                for r in await pool.fetch(
                    "SELECT state, left(query, 60) AS query, count(*) AS n FROM pg_stat_activity"
                    " WHERE datname = current_database() GROUP BY 1, 2"
                )
            ],
        }
    finally:
        await pool.close()


def _troubles(log: Path) -> list[str]:
    """The last warnings and errors a service logged."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line[:300] for line in lines if re.search(r"warning|error|critical", line, re.I)][-5:]
