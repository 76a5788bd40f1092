"""Settings from flags and TRIPWIRE_* variables."""

from __future__ import annotations

import pytest
from tripwire.server.config import Settings, parse_api_keys, settings_from


def test_defaults() -> None:
    settings = settings_from([], {})
    assert settings.address == "127.0.0.1:50051" and settings.db_path == "./tripwire.db"
    assert not settings.auth_enabled


@pytest.mark.parametrize("key", ["k1 ", "k 1", "kéy", "k\t1"])
def test_an_api_key_no_client_could_present_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="the API key for environment 'prod' holds a space"):
        Settings(api_keys={key: "prod"})


def test_an_api_key_may_end_in_base64_padding() -> None:
    assert parse_api_keys(["c2VjcmV0LWtleQ===prod"]) == {"c2VjcmV0LWtleQ==": "prod"}


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


@pytest.mark.parametrize("bad", ["nokey", "=env", "key=", "", " , ", "a=prod,a=dev"])
def test_bad_api_keys(bad: str) -> None:
    # Keys given that yield none must not turn auth off; a key maps to one environment.
    with pytest.raises(ValueError, match=r"KEY=ENV|two environments"):
        parse_api_keys([bad])


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["s3cr3t-no-env"], "the 1st API key is not KEY=ENV"),
        (["a=prod", "s3cr3t="], "the 2nd API key is not KEY=ENV"),
        (["s3cr3t=prod,b=qa,s3cr3t=dev"], "the 3rd API key is also given for another environment"),
    ],
)
def test_an_api_key_refused_is_named_by_its_place_never_by_its_text(
    items: list[str], message: str
) -> None:
    # The message reaches terminals and logs.
    with pytest.raises(ValueError, match=message) as err:
        parse_api_keys(items)
    assert "s3cr3t" not in str(err.value)


@pytest.mark.parametrize("value", ["", " ", ","])
def test_tripwire_api_keys_set_but_empty_is_refused_not_taken_for_no_keys(value: str) -> None:
    # A secret that did not render must not open the server to anyone.
    with pytest.raises(ValueError, match=r"TRIPWIRE_API_KEYS: .*\(unset it to run without"):
        settings_from([], {"TRIPWIRE_API_KEYS": value})
    assert settings_from([], {}).api_keys == {}


def test_the_same_key_twice_for_one_environment_is_fine() -> None:
    assert parse_api_keys(["a=prod", "a=prod,b=dev"]) == {"a": "prod", "b": "dev"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"address": "nohost"},
        {"address": ":80"},
        {"max_batch": 0},
        {"max_batch_bytes": 0},
        {"max_batch_bytes": 33 * 1024 * 1024},  # its reply could outgrow our own 64 MiB
        {"heartbeat_interval": 5.0, "lease": 5.0},
        {"lease": float("inf")},
        {"lease": 5_000_000.0},  # past what the welcome message can carry
        {"heartbeat_interval": float("nan")},
        {"schedule_grace": -5.0},
        {"schedule_grace": float("nan")},
        {"shutdown_grace": float("inf")},
        {"db_path": ""},
        {"db_path": ":memory:"},
        {"event_loop": "trio"},
        {"retention_days": -1.0},
        {"retention_days": 0.01},  # under an hour
        {"retention_days": 40_000.0},
        {"retention_days": float("nan")},
        {"retention_days": float("inf")},
    ],
)
def test_invalid_settings(overrides: dict) -> None:
    with pytest.raises(ValueError):
        Settings(**overrides)


@pytest.mark.parametrize("var", ["TRIPWIRE_DB", "TRIPWIRE_ADDRESS", "TRIPWIRE_LEASE"])
@pytest.mark.parametrize("value", ["", "  "])
def test_a_variable_set_but_empty_is_refused_not_taken_for_the_default(
    var: str, value: str
) -> None:
    # TRIPWIRE_DB= started the server on ./tripwire.db, wherever it was started.
    with pytest.raises(ValueError, match=f"^{var} is set but empty: give it a value, or unset"):
        settings_from([], {var: value})
    # A flag still wins over it, as over any variable.
    flag = {"TRIPWIRE_DB": "--db", "TRIPWIRE_ADDRESS": "--address", "TRIPWIRE_LEASE": "--lease"}
    given = {"TRIPWIRE_DB": "x.db", "TRIPWIRE_ADDRESS": "127.0.0.1:0", "TRIPWIRE_LEASE": "30"}
    settings_from([flag[var], given[var]], {var: value})


def test_a_bad_variable_is_named() -> None:
    with pytest.raises(ValueError, match="TRIPWIRE_MAX_BATCH must be a whole number, got 'abc'"):
        settings_from([], {"TRIPWIRE_MAX_BATCH": "abc"})
    with pytest.raises(ValueError, match="TRIPWIRE_LEASE must be a number, got '15s'"):
        settings_from([], {"TRIPWIRE_LEASE": "15s"})


def test_the_batch_byte_limit_from_variable_and_flag() -> None:
    assert settings_from([], {}).max_batch_bytes == 3 * 1024 * 1024
    env = {"TRIPWIRE_MAX_BATCH_BYTES": "2000000"}
    assert settings_from([], env).max_batch_bytes == 2_000_000
    assert settings_from(["--max-batch-bytes", "1000"], env).max_batch_bytes == 1000


def test_a_port_over_65535_is_refused() -> None:
    with pytest.raises(ValueError, match="0 to 65535"):
        Settings(address="127.0.0.1:70000")


def test_the_event_loop_from_variable_and_flag() -> None:
    assert settings_from([], {}).event_loop == "uvloop"
    env = {"TRIPWIRE_EVENT_LOOP": "asyncio"}
    assert settings_from([], env).event_loop == "asyncio"
    assert settings_from(["--event-loop", "uvloop"], env).event_loop == "uvloop"
    with pytest.raises(ValueError, match="--event-loop must be uvloop or asyncio, got 'tokio'"):
        settings_from(["--event-loop", "tokio"], {})


def test_the_name_length_limit_from_variable_and_flag() -> None:
    assert settings_from([], {}).max_name_length == 256
    env = {"TRIPWIRE_MAX_NAME_LENGTH": "64"}
    assert settings_from([], env).max_name_length == 64
    assert settings_from(["--max-name-length", "32"], env).max_name_length == 32
    with pytest.raises(ValueError, match=r"^--max-name-length must be positive, got 0$"):
        settings_from(["--max-name-length", "0"], {})
    with pytest.raises(ValueError, match=r"^--max-payload-bytes must be positive, got -1$"):
        settings_from(["--max-payload-bytes", "-1"], {})


def test_retention_from_a_flag_or_a_variable() -> None:
    assert Settings().retention_days == 0
    assert settings_from(["--retention-days", "30"], {}).retention_days == 30
    assert settings_from([], {"TRIPWIRE_RETENTION_DAYS": "0.5"}).retention_days == 0.5
    assert settings_from([], {"TRIPWIRE_RETENTION_DAYS": str(1 / 24)}).retention_days == 1 / 24
    with pytest.raises(ValueError, match=r"--retention-days must be 0 \(keep everything\) or 1/24"):
        settings_from(["--retention-days", "0.001"], {})


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            [],
            {"TRIPWIRE_MAX_PAYLOAD_BYTES": "0"},
            "TRIPWIRE_MAX_PAYLOAD_BYTES must be positive, got 0",
        ),
        (["--max-batch", "0"], {}, "--max-batch must be positive, got 0"),
        ([], {"TRIPWIRE_MAX_BATCH_BYTES": "0"}, "TRIPWIRE_MAX_BATCH_BYTES must be positive, got 0"),
        (
            ["--max-batch-bytes", "40000000"],
            {},
            "--max-batch-bytes must be at most 33554432 (32 MiB, half the 64 MiB message limit), "
            "got 40000000",
        ),
        (
            ["--max-payload-bytes", "200000000"],
            {},
            "--max-payload-bytes must be at most 33554432",
        ),
        (
            [],
            {"TRIPWIRE_LEASE": "3"},
            "--heartbeat-interval must be positive and shorter than TRIPWIRE_LEASE, and "
            "TRIPWIRE_LEASE at most 86400 s (one day); got 5 and 3",
        ),
        (["--schedule-grace", "-1"], {}, "--schedule-grace must be 0 to 86400 s, got -1"),
        (
            [],
            {"TRIPWIRE_SHUTDOWN_GRACE": "nan"},
            "TRIPWIRE_SHUTDOWN_GRACE must be 0 to 86400 s, got nan",
        ),
        ([], {"TRIPWIRE_RETENTION_DAYS": "0.001"}, "TRIPWIRE_RETENTION_DAYS must be 0"),
        ([], {"TRIPWIRE_EVENT_LOOP": "tokio"}, "TRIPWIRE_EVENT_LOOP must be uvloop or asyncio"),
        ([], {"TRIPWIRE_ADDRESS": "nohost"}, "TRIPWIRE_ADDRESS must be HOST:PORT, got 'nohost'"),
        (["--db", ":memory:"], {}, "--db must be a file path"),
    ],
)
def test_a_bad_setting_is_named_as_it_was_given_with_its_value(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        settings_from(argv, env)
    assert str(err.value).startswith(message), str(err.value)
