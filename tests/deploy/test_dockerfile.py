"""Offline checks of the Dockerfile and .dockerignore (the image is not built here)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"ingest": 8001, "orchestrator": 8002, "renderer": 8003, "sender": 8004, "tracker": 8005}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def stages(instructions: list[tuple[str, str]]) -> list[Stage]:
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            parts = args.split()
            base = re.sub(
                r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.append(Stage(base, name))
        elif not result and keyword == "ARG":
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            assert result, f"{keyword} before the first FROM"
            result[-1].instructions.append((keyword, args))
    return result


def test_multi_stage_with_the_same_python_in_both(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name
    assert runtime.name
    assert builder.name != runtime.name
    # The virtualenv is copied over: its interpreter path must exist in the runtime.
    assert builder.base == runtime.base
    assert re.fullmatch(r"python:3\.11[.\d]*-slim(-\w+)?", runtime.base), runtime.base


def test_no_latest_or_untagged_base_images(stages: list[Stage]) -> None:
    for stage in stages:
        if stage.base in {s.name for s in stages}:
            continue
        assert ":" in stage.base, stage.base
        assert not stage.base.endswith(":latest"), stage.base


def test_builder_installs_from_the_lock_file_with_pinned_uv(stages: list[Stage]) -> None:
    builder = stages[0]
    runs = " ".join(builder.args("RUN"))
    makefile = (ROOT / "Makefile").read_text()
    (uv_version,) = re.findall(r"^UV_VERSION := (\S+)$", makefile, flags=re.MULTILINE)
    assert f"uv=={uv_version}" in runs, "uv pinned like the Makefile"
    assert any("uv.lock" in c for c in builder.args("COPY"))
    syncs = [
        s for run in builder.args("RUN") for s in re.findall(r"uv sync(?:(?!&&|;|uv ).)*", run)
    ]
    assert syncs
    for sync in syncs:
        assert "--frozen" in sync, sync
        assert "--no-dev" in sync, sync
    assert "--no-editable" in syncs[-1], "the runtime stage has no source tree"
    args = " ".join(builder.args("ARG"))
    for service in SERVICES:
        assert f"--package stepmail-{service}" in args, service
    assert "stepmail-devstack" not in args, "the devstack does not belong in the image"


def test_builder_copies_every_workspace_member_it_installs(stages: list[Stage]) -> None:
    copies = " ".join(stages[0].args("COPY"))
    for member in ["libs/common", *(f"services/{s}" for s in SERVICES)]:
        assert (ROOT / member / "pyproject.toml").is_file(), member
        assert f"{member}/pyproject.toml" in copies, member
        assert f"{member}/src" in copies, member
    for manifest in ROOT.glob("*/*/pyproject.toml"):
        relative = manifest.relative_to(ROOT).parent.as_posix()
        if relative.split("/")[0] in {"libs", "services", "tools"}:
            assert f"{relative}/pyproject.toml" in copies, f"uv needs every member: {relative}"


def test_runtime_stage_is_non_root_and_has_no_build_tools(stages: list[Stage]) -> None:
    runtime = stages[-1]
    (user,) = runtime.args("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER must be a fixed numeric uid, got {user}"
    assert int(uid) >= 1000, f"USER must not be root or a system uid, got {user}"
    keywords = [k for k, _ in runtime.instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    runs = " ".join(runtime.args("RUN"))
    for tool in ("pip install", "uv ", "apt-get install", "gcc", "build-essential"):
        assert tool not in runs, f"runtime stage installs {tool.strip()}"
    assert any(a.startswith("--from=") for a in runtime.args("COPY"))
    assert f"--uid {uid}" in runs, "the user is created with the fixed uid"


def test_runtime_exposes_the_service_ports_and_runs_a_service(stages: list[Stage]) -> None:
    runtime = stages[-1]
    exposed = {int(p.split("/")[0]) for a in runtime.args("EXPOSE") for p in a.split()}
    assert set(SERVICES.values()) <= exposed
    (cmd,) = runtime.args("CMD")
    assert re.fullmatch(r'\["stepmail-(ingest|orchestrator|renderer|sender|tracker)"\]', cmd)
    env = " ".join(runtime.args("ENV"))
    assert "HTTP_HOST=0.0.0.0" in env
    assert "/healthz" in " ".join(runtime.args("HEALTHCHECK"))


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".git", ".venv", ".tools", ".devstack", "**/__pycache__", ".mypy_cache"):
        assert required in entries, required
    for needed in ("uv.lock", "pyproject.toml", "libs", "services"):
        assert needed not in entries, f"the build needs {needed}"
