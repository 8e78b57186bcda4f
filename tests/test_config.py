"""Settings fail fast, naming the variable and what it expects."""

from __future__ import annotations

import pytest

from cival.config import Settings, SettingsError, load_settings


def test_defaults_are_the_embedded_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CIVAL_DATABASE_URL", "CIVAL_REDIS_URL", "CIVAL_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.is_sqlite
    assert settings.effective_database_url == "sqlite+aiosqlite:///var/cival.sqlite3"
    assert settings.redis_url == ""


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CIVAL_PORT", "eighty", "CIVAL_PORT"),
        ("CIVAL_PORT", "70000", "CIVAL_PORT"),
        ("CIVAL_DATABASE_URL", "mysql://x", "CIVAL_DATABASE_URL"),
        ("CIVAL_REDIS_URL", "http://cache", "CIVAL_REDIS_URL"),
        ("CIVAL_LOG_LEVEL", "chatty", "CIVAL_LOG_LEVEL"),
    ],
)
def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(expected + ":")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("given", "effective"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:///tmp/x.db", "sqlite+aiosqlite:///tmp/x.db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
    ],
)
def test_database_url_gets_its_async_driver(given: str, effective: str) -> None:
    assert Settings(database_url=given).effective_database_url == effective


def test_amounts_in_json_settings_must_be_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVAL_PAPER_STARTING_BALANCES", '{"USDT": 10000.1}')
    with pytest.raises(SettingsError, match="CIVAL_PAPER_STARTING_BALANCES.*JSON strings"):
        load_settings()
    monkeypatch.setenv("CIVAL_PAPER_STARTING_BALANCES", '{"USDT": "10000.1", "BTC": 1}')
    assert str(load_settings().paper_starting_balances["USDT"]) == "10000.1"
