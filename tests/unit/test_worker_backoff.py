"""Reconnect backoff: capped, fully jittered exponential, reset after a healthy stream."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from tripwire.client.worker import Backoff, backoff_delay, heartbeat_loop

from .test_worker_fakes import FakeSleep, within

attempts = st.integers(min_value=0, max_value=10_000)
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
bases = st.floats(min_value=0.001, max_value=10.0)
caps = st.floats(min_value=0.001, max_value=600.0)


@given(attempt=attempts, r=unit, base=bases, cap=caps)
def test_a_delay_is_within_the_cap_and_the_exponential_ceiling(
    attempt: int, r: float, base: float, cap: float
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, rand=lambda: r)
    assert 0.0 <= delay <= cap
    assert delay <= base * 2.0 ** min(attempt, 64)


@given(attempt=attempts, r=unit)
def test_the_jitter_spans_the_whole_range_below_the_ceiling(attempt: int, r: float) -> None:
    ceiling = backoff_delay(attempt, rand=lambda: 1.0)
    assert ceiling == min(5.0, 0.1 * 2.0 ** min(attempt, 64))
    assert backoff_delay(attempt, rand=lambda: r) == r * ceiling
    assert backoff_delay(attempt, rand=lambda: 0.0) == 0.0


def test_the_default_ceiling_doubles_from_a_tenth_of_a_second_to_five() -> None:
    ceilings = [backoff_delay(n, rand=lambda: 1.0) for n in range(9)]
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]


def test_real_jitter_varies() -> None:
    delays = {backoff_delay(5) for _ in range(50)}
    assert len(delays) > 1 and all(0 <= d <= 3.2 for d in delays)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@given(healthy_for=st.floats(min_value=0.0, max_value=1000.0), failures=st.integers(1, 20))
def test_the_backoff_resets_only_after_a_healthy_period(healthy_for: float, failures: int) -> None:
    clock = Clock()
    backoff = Backoff(base=0.1, cap=5.0, healthy_after=30.0, clock=clock, rand=lambda: 1.0)
    for _ in range(failures):
        backoff.next_delay()
    assert backoff.attempt == failures
    backoff.connected()
    clock.now += healthy_for
    delay = backoff.next_delay()
    if healthy_for >= 30.0:
        assert delay == 0.1 and backoff.attempt == 1
    else:
        assert delay == min(5.0, 0.1 * 2.0**failures) and backoff.attempt == failures + 1


def test_a_short_lived_connection_keeps_the_backoff_growing() -> None:
    clock = Clock()
    backoff = Backoff(healthy_after=30.0, clock=clock, rand=lambda: 1.0)
    delays = []
    for _ in range(4):
        backoff.connected()
        clock.now += 1.0
        delays.append(backoff.next_delay())
    assert delays == [0.1, 0.2, 0.4, 0.8]


async def test_the_heartbeat_loop_sends_once_per_interval() -> None:
    sleep, sent = FakeSleep(), asyncio.Queue[int]()
    beats = asyncio.create_task(heartbeat_loop(lambda: sent.put_nowait(1), 2.5, sleep))
    for _ in range(3):
        delay, release = await sleep.next()
        assert delay == 2.5 and sent.qsize() == 0
        release.set_result(None)
        await within(sent.get())
    beats.cancel()
    await asyncio.wait({beats})
    assert beats.cancelled()
