"""Server-minted ids are ULIDs: 26 Crockford digits, time first."""

from __future__ import annotations

import itertools
import time

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


def test_ulids_are_unique_and_sort_by_time() -> None:
    values = [ids.new_ulid() for _ in range(2000)]
    assert len(set(values)) == len(values)
    assert all(
        ULID.from_str(a).milliseconds <= ULID.from_str(b).milliseconds
        for a, b in itertools.pairwise(values)
    )


@given(st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10))
def test_encoding_matches_the_reference(millis: int, randomness: bytes) -> None:
    value = millis << 80 | int.from_bytes(randomness, "big")
    assert ids.encode(value) == str(ULID.from_bytes(value.to_bytes(16, "big")))


def test_prefixes() -> None:
    assert ids.new_run_id().startswith("run_") and ids.new_task_id().startswith("task_")
