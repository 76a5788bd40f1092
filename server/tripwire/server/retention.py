"""Retention: events and runs finished longer ago than the retention are deleted.

A pass walks the events oldest first, a step (one short transaction) at a
time, and deletes each event that was delivered or cancelled before the
cutoff and whose runs all ended before it, with those runs, their tasks and
their logs. Pending events and events with a run still active (queued,
executing, waiting for days) are kept, whatever their age. A pass runs at
start and then every PASS_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)
PASS_SECONDS = 600.0
DAY_MS = 86_400_000


@dataclass(frozen=True)
class PassResult:
    events: int = 0
    runs: int = 0


async def purge_pass(store: Store, cutoff: int, step: int | None = None) -> PassResult:
    """Delete everything finished before `cutoff` (ms), `step` events examined
    per transaction (by default, as many as the store takes in one short one)."""
    events = runs = new = 0
    after: int | None = 0
    while after is not None:
        if step is None:
            done = await store.purge(cutoff, after, new_in_a_row=new)
        else:
            done = await store.purge(cutoff, after, step, new)
        events, runs, after = events + done.events, runs + done.runs, done.next_seq
        new = done.new_in_a_row
    return PassResult(events, runs)


async def run_retention(
    store: Store,
    clock: Callable[[], int],
    retention_days: float,
    stop: asyncio.Event,
    every: float = PASS_SECONDS,
) -> None:
    retention_ms = round(retention_days * DAY_MS)
    while not stop.is_set():
        try:
            done = await purge_pass(store, clock() - retention_ms)
        except Exception:  # the store failed (disk full, I/O): try again next pass
            log.exception("retention pass failed; the next one in %.0f s", every)
        else:
            if done.events:
                log.info(
                    "retention: deleted %d events and %d runs finished over %g days ago",
                    done.events,
                    done.runs,
                    retention_days,
                )
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
