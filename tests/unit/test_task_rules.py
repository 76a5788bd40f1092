"""Task keys and the log level gate."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tripwire.server.tasks import LOG_RANK, idempotency_key, log_recorded


def test_idempotency_key_is_sha256_of_run_parent_and_key() -> None:
    expected = hashlib.sha256(b"run_1:task_2:send").hexdigest()
    assert idempotency_key("run_1", "task_2", "send") == expected


@given(st.text(), st.text(), st.text(), st.text())
def test_different_parents_or_keys_give_different_ids(run: str, a: str, b: str, key: str) -> None:
    if a != b and ":" not in a + b:
        assert idempotency_key(run, a, key) != idempotency_key(run, b, key)


@pytest.mark.parametrize(
    ("message", "job", "recorded"),
    [
        ("LOG", "LOG", True),
        ("ERROR", "LOG", False),
        ("ERROR", "WARN", True),
        ("WARN", "ERROR", False),
        ("INFO", "INFO", True),
        ("DEBUG", "INFO", False),
        ("DEBUG", "DEBUG", True),
        ("ERROR", "DEBUG", True),
    ],
)
def test_log_gate_compares_the_message_level(message: str, job: str, recorded: bool) -> None:
    # v2 compared a constant with the job level, so "warn" dropped even errors.
    assert log_recorded(message, job) is recorded


@given(st.sampled_from(list(LOG_RANK)), st.sampled_from(list(LOG_RANK)))
def test_raising_the_job_level_never_drops_a_line(message: str, job: str) -> None:
    more = max(LOG_RANK, key=LOG_RANK.__getitem__)
    if log_recorded(message, job):
        assert log_recorded(message, more)
