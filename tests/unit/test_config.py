"""Settings from flags and TRIPWIRE_* variables."""

from __future__ import annotations

import pytest
from tripwire.server.config import Settings, parse_api_keys, settings_from


def test_defaults() -> None:
    settings = settings_from([], {})
    assert settings.address == "127.0.0.1:50051" and settings.db_path == "./tripwire.db"
    assert not settings.auth_enabled


def test_environment_then_flags() -> None:
    env = {
        "TRIPWIRE_ADDRESS": "0.0.0.0:7000",
        "TRIPWIRE_DB": "/tmp/x.db",
        "TRIPWIRE_API_KEYS": "k1=prod,k2=dev",
    }
    settings = settings_from([], env)
    assert settings.address == "0.0.0.0:7000" and settings.db_path == "/tmp/x.db"
    assert settings.api_keys == {"k1": "prod", "k2": "dev"}
    flagged = settings_from(["--address", "127.0.0.1:0", "--api-key", "k3=qa"], env)
    assert flagged.address == "127.0.0.1:0" and flagged.api_keys == {"k3": "qa"}


@pytest.mark.parametrize("bad", ["nokey", "=env", "key=", ""])
def test_bad_api_keys(bad: str) -> None:
    if bad == "":
        assert parse_api_keys([bad]) == {}
        return
    with pytest.raises(ValueError, match="KEY=ENV"):
        parse_api_keys([bad])


@pytest.mark.parametrize(
    "overrides",
    [
        {"address": "nohost"},
        {"address": ":80"},
        {"max_batch": 0},
        {"heartbeat_interval": 5.0, "lease": 5.0},
    ],
)
def test_invalid_settings(overrides: dict) -> None:
    with pytest.raises(ValueError):
        Settings(**overrides)
