"""Identifiers: ULIDs (sortable by creation time), prefixed for the kinds we mint.

Minted on the hot path of every event and run, so encoded here directly:
48 bits of milliseconds and 80 random bits in Crockford base32, as the ULID
spec lays them out.
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits (10 bits) per lookup.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]


def encode(value: int) -> str:
    """A 128-bit value as 26 Crockford base32 digits (the first holds the top 3 bits)."""
    return (
        _CROCKFORD[value >> 125]
        + _CROCKFORD[(value >> 120) & 31]
        + "".join(_PAIRS[(value >> shift) & 1023] for shift in range(110, -1, -10))
    )


def new_ulid() -> str:
    return encode((time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big"))


def new_event_id() -> str:
    return new_ulid()


def new_run_id() -> str:
    return f"run_{new_ulid()}"


def new_task_id() -> str:
    return f"task_{new_ulid()}"
