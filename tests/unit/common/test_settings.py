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


def test_consumers_off_the_mails_path_wait_as_long_as_kafkas_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert CommonSettings().kafka_feedback_fetch_max_wait_ms == 500
    monkeypatch.setenv("KAFKA_FEEDBACK_FETCH_MAX_WAIT_MS", "1000")
    settings = CommonSettings()
    assert settings.kafka_feedback_fetch_max_wait_ms == 1000
    assert settings.kafka_fetch_max_wait_ms == 150


@pytest.mark.parametrize("name", ["KAFKA_FETCH_MAX_WAIT_MS", "KAFKA_FEEDBACK_FETCH_MAX_WAIT_MS"])
@pytest.mark.parametrize("value", ["0", "-1", "30001"])
def test_a_fetch_wait_out_of_range_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        CommonSettings()


def test_batches_are_compressed_with_zstd_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CommonSettings().kafka_compression == "zstd"
    monkeypatch.setenv("KAFKA_COMPRESSION", "none")
    assert CommonSettings().kafka_compression == "none"


def test_an_unknown_compression_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_COMPRESSION", "brotli")
    with pytest.raises(ValidationError, match="kafka_compression"):
        CommonSettings()
