"""The settings every service shares: what the environment may set, and what it may not."""

import pytest
from pydantic import ValidationError

from stepmail_common.settings import CommonSettings


def test_the_fetch_wait_defaults_to_the_embedded_brokers_and_takes_kafkas_longer_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert CommonSettings().kafka_fetch_max_wait_ms == 150
    monkeypatch.setenv("KAFKA_FETCH_MAX_WAIT_MS", "500")
    assert CommonSettings().kafka_fetch_max_wait_ms == 500


@pytest.mark.parametrize("value", ["0", "-1", "30001"])
def test_a_fetch_wait_out_of_range_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KAFKA_FETCH_MAX_WAIT_MS", value)
    with pytest.raises(ValidationError, match="KAFKA_FETCH_MAX_WAIT_MS"):
        CommonSettings()


def test_batches_are_compressed_with_zstd_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CommonSettings().kafka_compression == "zstd"
    monkeypatch.setenv("KAFKA_COMPRESSION", "none")
    assert CommonSettings().kafka_compression == "none"


def test_an_unknown_compression_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_COMPRESSION", "brotli")
    with pytest.raises(ValidationError, match="kafka_compression"):
        CommonSettings()
