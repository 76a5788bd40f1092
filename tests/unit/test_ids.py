"""Server-minted ids are ULIDs: 26 Crockford digits, time first."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tripwire.server import ids
from ulid import ULID


def test_ulids_parse_and_carry_the_time() -> None:
    before = time.time_ns() // 1_000_000
    value = ids.new_ulid()
    after = time.time_ns() // 1_000_000
    parsed = ULID.from_str(value)
    assert len(value) == 26 and str(parsed) == value
    assert before <= parsed.milliseconds <= after


def test_ulids_are_unique_and_sort_in_the_order_they_were_made() -> None:
    # Thousands per millisecond: monotonic within one, time-ordered across.
    values = [ids.new_ulid() for _ in range(20_000)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert all(
        ULID.from_str(a).milliseconds <= ULID.from_str(b).milliseconds
        for a, b in itertools.pairwise(values)
    )


def test_within_a_millisecond_the_next_id_is_one_more(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_795_000_000_000 * 1_000_000)
    first, second = ids.new_ulid(), ids.new_ulid()
    assert int(ULID.from_str(second)) == int(ULID.from_str(first)) + 1


def test_a_clock_stepping_back_keeps_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_795_000_000_000 * 1_000_000)
    first = ids.new_ulid()
    monkeypatch.setattr(time, "time_ns", lambda: 1_794_000_000_000 * 1_000_000)
    assert ids.new_ulid() > first


def test_exhausted_randomness_borrows_the_next_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    millis = 1_795_000_000_000
    monkeypatch.setattr(time, "time_ns", lambda: millis * 1_000_000)
    monkeypatch.setattr(ids, "_last_millis", millis)
    monkeypatch.setattr(ids, "_last_random", 2**80 - 1)
    value = ULID.from_str(ids.new_ulid())
    assert value.milliseconds == millis + 1


@given(st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10))
def test_encoding_matches_the_reference(millis: int, randomness: bytes) -> None:
    value = millis << 80 | int.from_bytes(randomness, "big")
    assert ids.encode(value) == str(ULID.from_bytes(value.to_bytes(16, "big")))


def test_prefixes() -> None:
    assert ids.new_run_id().startswith("run_") and ids.new_task_id().startswith("task_")
