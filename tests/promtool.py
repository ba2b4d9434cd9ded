"""promtool (Debian's ``prometheus`` package, installed by ``make promtool``) for tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def path() -> str:
    """promtool's path; skips the test when it is missing, except in CI, where it fails."""
    found = shutil.which("promtool")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("promtool is missing: `make promtool` (as root) installs it")
    pytest.skip("promtool is missing: `make promtool` (as root) installs it")


def run(
    *args: str | Path, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [path(), *map(str, args)],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
