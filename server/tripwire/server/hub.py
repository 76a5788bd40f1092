"""Wake-ups between the store and the server's loops and streams.

The store calls these methods after a commit; they run the listeners on the
event loop (hopping onto it when called from another thread), so nothing
polls. The dispatcher subscribes to run changes; WatchRun streams subscribe
per run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .models import Event, Run

EventsAtHand = dict[tuple[str, str], Event]


class RunListener:
    """What the dispatcher hears. The default does nothing (no workers)."""

    def queued(self, runs: Sequence[Run], events: EventsAtHand) -> None:
        """These runs became QUEUED; `events` has the events the store had at hand,
        by (env, id): ids are unique within an environment only."""

    def released(self, run_ids: Sequence[str], stop_reason: str) -> None:
        """These runs left EXECUTING: free their slots. With a `stop_reason` they
        ended from outside (cancel, abort, timeout) and their workers must stop them."""

    def job_changed(self, env: str, job_id: str) -> None:
        """A version of this job was registered or switched: its limits may differ."""

    def backlog(
        self, env: str, job_id: str, version: str, last_seq: int | None, token: object = None
    ) -> None:
        """A page of a job version's QUEUED runs, read by the load `token`, is about to
        be told (queued()): more are stored after `last_seq`, or (None) none."""


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.get_ident()  # the loop's thread: Hub is made on it
        # Set when a delayed event, a schedule or a waiting run may be due sooner.
        self.timers_changed = asyncio.Event()
        # When the timer loop sleeps until (ms since the epoch); None while it runs a
        # round, or sleeps with nothing due: any new timer must wake it then.
        self.timer_due: int | None = None
        self.listener = RunListener()
        self._watchers: dict[str, set[asyncio.Queue[str | None]]] = {}
        # Per watched run, the number of its latest change (numbered across runs).
        self._stamps: dict[str, int] = {}
        self._changes = 0
        self._closed = False

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._thread:
            self._loop.call_soon(callback, *args)  # no self-pipe wake-up needed
            return
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    def timers(self) -> None:
        self._call(self.timers_changed.set)

    def timer_at(self, at: int) -> None:
        """A new timer at `at` (ms): wake the timer loop only if it sleeps past it."""
        self._call(self._timer_at_on_loop, at)

    def _timer_at_on_loop(self, at: int) -> None:
        if self.timer_due is None or at < self.timer_due:
            self.timers_changed.set()

    def queued(self, runs: Sequence[Run], events: EventsAtHand) -> None:
        self._call(self._queued_on_loop, list(runs), dict(events))

    def _queued_on_loop(self, runs: list[Run], events: EventsAtHand) -> None:
        self.listener.queued(runs, events)
        self._changed_on_loop([r.id for r in runs])

    def released(self, run_ids: Iterable[str], *, stop_reason: str = "") -> None:
        self._call(self._released_on_loop, list(run_ids), stop_reason)

    def _released_on_loop(self, run_ids: list[str], stop_reason: str) -> None:
        self.listener.released(run_ids, stop_reason)
        self._changed_on_loop(run_ids)

    def changed(self, run_ids: Iterable[str]) -> None:
        self._call(self._changed_on_loop, list(run_ids))

    def job_changed(self, env: str, job_id: str) -> None:
        self._call(self.listener.job_changed, env, job_id)

    def backlog(
        self, env: str, job_id: str, version: str, last_seq: int | None, token: object = None
    ) -> None:
        self._call(self.listener.backlog, env, job_id, version, last_seq, token)

    def _changed_on_loop(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            queues = self._watchers.get(run_id)
            if queues:
                self._changes += 1
                self._stamps[run_id] = self._changes
                for queue in queues:
                    queue.put_nowait(run_id)

    def stamp(self, run_id: str) -> int:
        """The number of the watched run's latest change: a read started while it
        is still the latest has seen every change notified so far."""
        return self._stamps.get(run_id, 0)

    def close_watches(self) -> None:
        """Shutdown: every watch, present and future, gets None (end the stream)."""
        self._closed = True
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    @contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Queue[str | None]]:
        """A queue that receives `run_id` whenever the run, its tasks or its logs
        change, and None when the server is shutting down."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        if self._closed:
            queue.put_nowait(None)
        self._watchers.setdefault(run_id, set()).add(queue)
        try:
            yield queue
        finally:
            watchers = self._watchers.get(run_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[run_id]
                    self._stamps.pop(run_id, None)
