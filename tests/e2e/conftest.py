"""The platform fixture: every e2e module gets its own processes, topics and database."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import harness


@pytest.fixture(scope="module")
def platform(
    fresh_database, kafka_bootstrap: str, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[harness.Platform]:
    with harness.running(fresh_database, kafka_bootstrap, repo_root, tmp_path_factory) as running:
        yield running
