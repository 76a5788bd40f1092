"""Identifiers: ULIDs (sortable by creation time), prefixed for the kinds we mint.

Minted on the hot path of every event and run (twice per event), so made
here directly: 48 bits of milliseconds and 80 random bits in Crockford
base32, as the ULID spec lays them out. Within one millisecond they are
monotonic, as the spec's monotonic variant says: the next id is the previous
one plus one, so ids minted by this process sort in the order they were made.
The random bits come from `random` (seeded from the OS, reseeded in a forked
child); ids need to be unique, not secret, and a system call per id would
cost more than everything else here.
"""

from __future__ import annotations

import random
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits (10 bits) per lookup.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1

_last_millis = -1
_last_random = 0


def encode(value: int) -> str:
    """A 128-bit value as 26 Crockford base32 digits (the first holds the top 3 bits).

    Spelled out rather than looped: this runs twice per event."""
    p = _PAIRS
    return (
        p[value >> 120]
        + p[(value >> 110) & 1023]
        + p[(value >> 100) & 1023]
        + p[(value >> 90) & 1023]
        + p[(value >> 80) & 1023]
        + p[(value >> 70) & 1023]
        + p[(value >> 60) & 1023]
        + p[(value >> 50) & 1023]
        + p[(value >> 40) & 1023]
        + p[(value >> 30) & 1023]
        + p[(value >> 20) & 1023]
        + p[(value >> 10) & 1023]
        + p[value & 1023]
    )


def new_ulid() -> str:
    global _last_millis, _last_random
    millis = time.time_ns() // 1_000_000
    if millis > _last_millis:
        _last_millis, _last_random = millis, random.getrandbits(_RANDOM_BITS)
    elif _last_random < _RANDOM_MAX:
        _last_random += 1  # same millisecond (or the clock stepped back): keep order
    else:  # 2**80 ids in one millisecond: borrow the next one
        _last_millis, _last_random = _last_millis + 1, random.getrandbits(_RANDOM_BITS)
    return encode(_last_millis << _RANDOM_BITS | _last_random)


def new_event_id() -> str:
    return new_ulid()


def new_run_id() -> str:
    return f"run_{new_ulid()}"


def new_task_id() -> str:
    return f"task_{new_ulid()}"
