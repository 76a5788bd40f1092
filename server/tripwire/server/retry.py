"""Task retry policy, with Trigger.dev v2's defaults and backoff formula.

The formula follows v2's `calculateRetryAt` (core/retry.ts) rather than a textbook
exponential backoff, so that workers ported from v2 see the same delays: the exponent
lags one failure behind, which makes the first two retries both wait about `min`.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from .errors import InvalidArgument

MAX_LIMIT = 100


@dataclass(frozen=True)
class RetryPolicy:
    limit: int = 5
    factor: float = 1.8
    min_timeout_ms: int = 1000
    max_timeout_ms: int = 60000
    randomize: bool = True

    def validate(self, field: str, given: Collection[str] | None = None) -> None:
        """Raise InvalidArgument naming `field.<attribute>` for the first bad attribute.
        `given`: the attributes the caller set (the others are defaults), if known."""
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidArgument(f"{field}.limit", f"must be between 1 and {MAX_LIMIT}")
        if not math.isfinite(self.factor) or self.factor < 1:
            raise InvalidArgument(f"{field}.factor", "must be a finite number >= 1")
        if self.min_timeout_ms < 0:
            raise InvalidArgument(f"{field}.min_timeout_ms", "must be >= 0")
        if self.min_timeout_ms > self.max_timeout_ms:
            if given is not None and "max_timeout_ms" not in given:
                raise InvalidArgument(
                    f"{field}.min_timeout_ms",
                    f"is {self.min_timeout_ms}, over the default max_timeout_ms "
                    f"({self.max_timeout_ms}): set max_timeout_ms too",
                )
            raise InvalidArgument(
                f"{field}.max_timeout_ms",
                f"must be >= min_timeout_ms ({self.min_timeout_ms})",
            )


def next_delay_ms(policy: RetryPolicy, attempts_failed: int, rand: float) -> int | None:
    """Delay before the next attempt, or None when the policy allows no more attempts.

    `attempts_failed` counts the attempts that have failed so far (1 after the first
    failure); `limit` is the total number of attempts, as in v2. `rand` is a uniform
    sample in [0, 1), passed in so that the result is reproducible.
    """
    if attempts_failed >= policy.limit:
        return None
    # v2 calls calculateRetryAt(policy, attempts - 1) and raises factor to
    # max(that - 1, 0); written in terms of failures, the exponent is failures - 2.
    exponent = max(attempts_failed - 2, 0)
    scale = 1 + rand if policy.randomize else 1.0
    # v2 floors the base at 1 ms, so a zero minimum still backs off.
    try:
        raw = scale * max(policy.min_timeout_ms, 1) * policy.factor**exponent
    except OverflowError:
        # A large factor with a late attempt exceeds a float; the cap applies anyway.
        return policy.max_timeout_ms
    if raw >= policy.max_timeout_ms:
        return policy.max_timeout_ms
    return min(_round_half_up(raw), policy.max_timeout_ms)


def _round_half_up(x: float) -> int:
    # JavaScript's Math.round rounds halves up; Python's round() rounds them to even.
    return math.floor(x + 0.5)
