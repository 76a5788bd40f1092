"""Task retry policy: v2's defaults and backoff formula."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tripwire.server.errors import InvalidArgument
from tripwire.server.jobs import retry_policy
from tripwire.server.retry import RetryPolicy, next_delay_ms

DEFAULT = RetryPolicy()
FIXED = replace(DEFAULT, randomize=False)


def test_defaults_are_v2s() -> None:
    assert DEFAULT == RetryPolicy(
        limit=5, factor=1.8, min_timeout_ms=1000, max_timeout_ms=60000, randomize=True
    )


@pytest.mark.parametrize(
    ("attempts_failed", "rand", "delay"),
    [
        # The exponent lags one failure behind (v2), so the first two retries wait ~min.
        (1, 0.0, 1000),
        (2, 0.0, 1000),
        (3, 0.0, 1800),
        (4, 0.0, 3240),
        (1, 0.5, 1500),
        (2, 0.5, 1500),
        (3, 0.5, 2700),
        (4, 0.5, 4860),
        (4, 0.999999, 6480),
        (5, 0.0, None),
        (6, 0.5, None),
        (100, 0.5, None),
    ],
)
def test_default_policy_delays(attempts_failed: int, rand: float, delay: int | None) -> None:
    assert next_delay_ms(DEFAULT, attempts_failed, rand) == delay


@pytest.mark.parametrize("rand", [0.0, 0.3, 0.99])
def test_without_randomize_rand_is_ignored(rand: float) -> None:
    assert [next_delay_ms(FIXED, n, rand) for n in range(1, 6)] == [1000, 1000, 1800, 3240, None]


def test_delay_is_capped_at_max() -> None:
    policy = RetryPolicy(limit=20, factor=2, min_timeout_ms=1000, max_timeout_ms=30000)
    delays = [next_delay_ms(policy, n, 0.0) for n in range(1, 20)]
    assert delays[:8] == [1000, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
    assert set(delays[6:]) == {30000}
    assert next_delay_ms(policy, 20, 0.0) is None


def test_huge_factor_does_not_overflow() -> None:
    policy = RetryPolicy(limit=100, factor=1e300, max_timeout_ms=5000, randomize=False)
    assert next_delay_ms(policy, 99, 0.0) == 5000


def test_rounds_halves_up_like_javascript() -> None:
    policy = RetryPolicy(factor=2.5, min_timeout_ms=1, max_timeout_ms=100, randomize=False)
    assert next_delay_ms(policy, 3, 0.0) == 3  # 2.5 rounds to 3 in JS, to 2 in Python


def test_zero_minimum_still_backs_off_by_one_ms() -> None:
    policy = RetryPolicy(min_timeout_ms=0, max_timeout_ms=10, randomize=False)
    assert next_delay_ms(policy, 1, 0.0) == 1


def test_limit_one_means_no_retry() -> None:
    assert next_delay_ms(RetryPolicy(limit=1), 1, 0.0) is None


@pytest.mark.parametrize(
    ("policy", "path"),
    [
        (RetryPolicy(limit=0), "task.retry.limit"),
        (RetryPolicy(limit=-1), "task.retry.limit"),
        (RetryPolicy(limit=101), "task.retry.limit"),
        (RetryPolicy(factor=0.9), "task.retry.factor"),
        (RetryPolicy(factor=float("nan")), "task.retry.factor"),
        (RetryPolicy(factor=float("inf")), "task.retry.factor"),
        (RetryPolicy(min_timeout_ms=-1), "task.retry.min_timeout_ms"),
        (RetryPolicy(min_timeout_ms=2000, max_timeout_ms=1000), "task.retry.max_timeout_ms"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_validate_rejects(policy: RetryPolicy, path: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        policy.validate("task.retry")
    assert info.value.field == path


def test_a_minimum_over_the_default_maximum_names_the_field_given() -> None:
    with pytest.raises(InvalidArgument) as info:
        retry_policy({"min_timeout_ms": 120_000}, "job.retry")
    assert info.value.field == "job.retry.min_timeout_ms"
    assert "over the default max_timeout_ms (60000): set max_timeout_ms too" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        retry_policy({"min_timeout_ms": 120_000, "max_timeout_ms": 60_000}, "job.retry")
    assert info.value.field == "job.retry.max_timeout_ms"
    assert retry_policy({"min_timeout_ms": 120_000, "max_timeout_ms": 120_000}, "r").limit == 5


@pytest.mark.parametrize(
    "policy",
    [
        DEFAULT,
        RetryPolicy(limit=1, factor=1, min_timeout_ms=0, max_timeout_ms=0),
        RetryPolicy(limit=100, factor=10, min_timeout_ms=5, max_timeout_ms=5),
    ],
)
def test_validate_accepts(policy: RetryPolicy) -> None:
    policy.validate("task.retry")


POLICIES = st.builds(
    lambda limit, factor, lo, span, randomize: RetryPolicy(limit, factor, lo, lo + span, randomize),
    st.integers(1, 100),
    st.floats(1, 10),
    st.integers(0, 100_000),
    st.integers(0, 1_000_000),
    st.booleans(),
)
RAND = st.floats(0, 1, exclude_max=True)
FAST = settings(max_examples=300, deadline=None)


@FAST
@given(POLICIES, st.integers(1, 120), RAND)
def test_delays_stay_within_bounds(policy: RetryPolicy, attempts_failed: int, rand: float) -> None:
    policy.validate("p")
    delay = next_delay_ms(policy, attempts_failed, rand)
    if attempts_failed >= policy.limit:
        assert delay is None
        return
    assert delay is not None
    assert min(max(policy.min_timeout_ms, 1), policy.max_timeout_ms) <= delay
    assert policy.min_timeout_ms <= delay <= policy.max_timeout_ms
    if not policy.randomize:
        assert delay == next_delay_ms(policy, attempts_failed, 0.0)


@FAST
@given(POLICIES, RAND)
def test_delays_never_decrease_and_stop_at_the_limit(policy: RetryPolicy, rand: float) -> None:
    delays = [next_delay_ms(policy, n, rand) for n in range(1, policy.limit + 3)]
    retries = delays[: policy.limit - 1]
    assert None not in retries
    assert all(d is None for d in delays[policy.limit - 1 :])
    assert retries == sorted(retries)  # type: ignore[type-var]
