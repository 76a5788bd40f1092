"""The timer loop: delayed events, cron/interval schedules, waits and retries, timeouts.

It sleeps until the earliest due time the store knows, or until the hub says
something new may be due sooner; it never polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .hub import Hub

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)
BATCH = 500
# After a failed round (a store error: disk full, I/O), the next one waits this
# long, doubling up to the cap, so a lasting fault neither spins nor stops timers.
RETRY_FIRST = 0.5
RETRY_CAP = 30.0


async def run_timers(
    store: Store, hub: Hub, clock: Callable[[], int], grace_ms: int, stop: asyncio.Event
) -> None:
    retry = RETRY_FIRST
    while not stop.is_set():
        hub.timers_changed.clear()
        hub.timer_due = None  # a timer added during the round wakes the next one
        try:
            due = await _round(store, clock(), grace_ms)
        except Exception:
            log.exception("timer round failed; the next one in %.1f s", retry)
            await _first_of(stop, within=retry)
            retry = min(retry * 2, RETRY_CAP)
            continue
        retry = RETRY_FIRST
        hub.timer_due = due
        timeout = None if due is None else max(0.0, (due - clock()) / 1000) + 0.001
        await _first_of(hub.timers_changed, stop, within=timeout)


async def _round(store: Store, now: int, grace_ms: int) -> int | None:
    """Everything due by `now`; returns when the next timer is due, if any."""
    while len(await store.deliver_due(now, BATCH)) == BATCH:
        pass
    fired = await store.fire_schedules(now, grace_ms)
    if fired:
        log.info("fired %d scheduled runs", len(fired))
    # Time-outs first: a waiting run past its deadline ends here, rather than be
    # woken, dispatched and cancelled again in the same round.
    timed_out = await store.time_out_due(now)
    if timed_out:
        log.info("%d runs timed out", len(timed_out))
    await store.wake_due(now)
    return await store.next_timer()


async def _first_of(*events: asyncio.Event, within: float | None) -> None:
    """Until one of `events` is set, or `within` seconds have passed."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
