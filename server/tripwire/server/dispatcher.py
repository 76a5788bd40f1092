"""Dispatch: QUEUED runs -> connected workers, within capacities and concurrency limits.

All state here is in memory and changed only on the event loop, in reaction
to the hub (runs queued or released) and to workers arriving and leaving: a
new run reaches an idle worker in the same loop iteration that learns of it,
with no polling. The database stays the source of truth: a claim is written
(in order, by the store's writer) before anything the worker sends for that
attempt, and only job versions some worker serves have their queue in memory
(loaded from the store when the first such worker arrives).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from .hub import EventsAtHand, RunListener
from .matching import JobIndex
from .models import Event, Run

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)
# A failed load of a job version's queue is tried again after this long,
# doubling up to the cap, while a worker still serves that version.
LOAD_RETRY_FIRST = 0.5
LOAD_RETRY_CAP = 30.0
# A version's stored queue is loaded this many runs at a time, the next page
# once fewer than LOAD_LOW_WATER of the loaded ones wait: a backlog of any
# size costs neither a long pause of the loop nor its size in memory.
LOAD_PAGE = 1000
LOAD_LOW_WATER = 250

Key = tuple[str, str, str]  # (env, job id, job version)
_ARRIVALS = itertools.count()
_NEW = 2**63  # past any run's seq


class WorkerLink(Protocol):
    """The stream side of a worker session."""

    def start_run(self, run: Run, event: Event | None) -> None:
        """Send the run request for `run` (already at its new attempt)."""

    def stop_run(self, run_id: str, attempt: int, reason: str, *, ended: bool) -> None:
        """Tell the worker to stop a run: `ended` -> cancel, else abandon."""


@dataclass(eq=False)
class Session:
    id: str
    env: str
    worker_id: str
    serves: frozenset[tuple[str, str]]
    capacity: int
    link: WorkerLink
    running: dict[str, int] = field(default_factory=dict)  # run id -> attempt
    draining: bool = False

    @property
    def free(self) -> int:
        return 0 if self.draining else self.capacity - len(self.running)


@dataclass
class _Queued:
    run: Run
    event: Event | None
    # The attempt the store has: the claim moves it to run.attempt + 1. Ahead of
    # run.attempt only after a dispatch whose claim could not be stored, so the
    # next dispatch skips the abandoned attempt's number.
    stored_attempt: int
    # The order runs came to the dispatcher in (see Dispatcher._age).
    arrival: int = field(default_factory=lambda: next(_ARRIVALS))


class _RunQueue:
    """A job version's queued runs, oldest first: by when they were created, then
    (runs created in the same millisecond) by their place in the store (the stored
    queue, and runs that come back: woken, due to retry, requeued after a lease),
    then new runs (not read back from the store, so without a seq yet) in the order
    they came."""

    def __init__(self) -> None:
        self._items: dict[str, _Queued] = {}
        self._order: list[tuple[int, int, int, str]] = []  # (*_age, run id)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._items

    def add(self, item: _Queued) -> None:
        self._items[item.run.id] = item
        heapq.heappush(self._order, (*_age(item), item.run.id))

    def discard(self, run_id: str) -> bool:
        """Forget a run (its entry in the order goes when it reaches the top)."""
        if self._items.pop(run_id, None) is None:
            return False
        if len(self._order) > 2 * len(self._items) + 64:
            self._order = [(*_age(item), item.run.id) for item in self._items.values()]
            heapq.heapify(self._order)
        return True

    def head(self) -> _Queued:
        self._settle()
        return self._items[self._order[0][3]]

    def pop(self) -> _Queued:
        self._settle()
        return self._items.pop(heapq.heappop(self._order)[3])

    def _settle(self) -> None:
        """Drop the entries at the top that stand for runs forgotten (or forgotten
        and added again: their entry is the one with their current arrival)."""
        while True:
            *_, arrival, run_id = self._order[0]
            item = self._items.get(run_id)
            if item is not None and item.arrival == arrival:
                return
            heapq.heappop(self._order)


def _age(item: _Queued) -> tuple[int, int, int]:
    """Created first, first out. A new run's seq is not known here (it is not read
    back from the store), so the time comes first: by seq alone, a new run would
    wait behind every stored run of another job, however much newer. The time is
    the server's clock: runs made while it ran ahead (until corrected) go after
    those made since, when they compete for a slot."""
    return (item.run.created_at, item.run.seq or _NEW, item.arrival)


class Dispatcher(RunListener):
    def __init__(self, store: Store, index: JobIndex, clock: Callable[[], int]) -> None:
        self.store = store
        self.index = index
        self.clock = clock
        # Per job version with a worker: its QUEUED runs, oldest first.
        self._queues: dict[Key, _RunQueue] = {}
        self._loading: set[asyncio.Task[None]] = set()
        # Per job version whose queue is being loaded: the attempt last handed out
        # of each run dispatched meanwhile. A load's snapshot, read in the store's
        # order, can predate the claim of a run dispatched from memory (a new
        # event's), which may even have finished by the time the snapshot comes;
        # its older attempt says it is stale.
        self._handed: dict[Key, dict[str, int]] = {}
        self._loads: dict[Key, int] = {}  # loads in flight per job version
        # Per job version whose stored queue is not all loaded: the seq of the last
        # run loaded. Its newer QUEUED runs wait in the store for the next page
        # (so that the oldest go first). While a page is read, _paging holds the
        # token of that load: only its answer counts (not one from before the
        # version's workers all left, whose `after` may be past runs since requeued).
        self._backlog: dict[Key, int] = {}
        self._paging: dict[Key, object] = {}
        self._sessions: dict[str, Session] = {}
        self._serving: dict[Key, list[Session]] = {}
        self._owner: dict[str, Session] = {}
        self._executing: dict[tuple[str, str], int] = {}  # (env, job id) -> runs executing
        self._job_of: dict[str, str] = {}  # run id -> job id, for executing runs
        # Runs a worker held when its stream ended: they count toward their job's
        # concurrency limit until they end or go back to the queue (lease expiry),
        # since the worker may still be running them.
        self._gone: dict[str, tuple[str, str]] = {}  # run id -> (env, job id)
        self._paused = False
        self.idle = asyncio.Event()  # set whenever no run is executing here
        self.idle.set()

    # -- hub events ---------------------------------------------------------------

    def queued(self, runs: Sequence[Run], events: EventsAtHand) -> None:
        keys = set()
        for run in runs:
            keys |= self._settle_gone(run.id)
            key = (run.env, run.job_id, run.job_version)
            if not self._serving.get(key):
                continue  # no worker for it: loaded from the store when one arrives
            last = self._backlog.get(key)
            if last is not None and not 0 < run.seq <= last:
                continue  # newer than the backlog still in the store: a later page
            queue = self._queues.setdefault(key, _RunQueue())
            if run.id in queue or run.id in self._owner:
                continue
            if run.attempt < self._handed.get(key, {}).get(run.id, 0):
                continue  # a load's stale snapshot: this run has been dispatched since
            # A copy: the caller's run (e.g. in a SendEvent reply) is not ours to change.
            queued = replace(run)
            queue.add(_Queued(queued, events.get((run.env, run.event_id)), run.attempt))
            keys.add(key)
        self._pump(keys)

    def released(self, run_ids: Sequence[str], stop_reason: str) -> None:
        keys: set[Key] = set()
        for run_id in run_ids:
            keys |= self._settle_gone(run_id)
            session = self._owner.get(run_id)
            if session is None:
                if stop_reason:  # ended while still queued: never hand it out
                    self._forget_queued(run_id)
                continue
            attempt = session.running[run_id]
            keys |= self._release(run_id)
            if stop_reason:
                session.link.stop_run(run_id, attempt, stop_reason, ended=True)
        self._pump(keys)

    def job_changed(self, env: str, job_id: str) -> None:
        # A raised or removed concurrency limit lets more of its queue go now.
        self._pump({key for key in self._queues if key[:2] == (env, job_id)})

    def backlog(
        self, env: str, job_id: str, version: str, last_seq: int | None, token: object = None
    ) -> None:
        key = (env, job_id, version)
        if key not in self._paging or self._paging[key] is not token:
            return  # a load from before its version's workers all left
        del self._paging[key]
        if last_seq is None or not self._serving.get(key):
            self._backlog.pop(key, None)
            return
        self._backlog[key] = last_seq
        # After the page's runs (told next): should none of them be queued here,
        # the next page must still come.
        asyncio.get_running_loop().call_soon(self._pump, {key})

    # -- sessions -------------------------------------------------------------------

    def add_session(self, session: Session) -> None:
        self._sessions[session.id] = session
        for job_id, version in session.serves:
            key = (session.env, job_id, version)
            serving = self._serving.setdefault(key, [])
            serving.append(session)
            if len(serving) == 1:
                self._load(key)
        self._pump({(session.env, *s) for s in session.serves})

    def _load(self, key: Key, after: int = 0) -> None:
        """Queue a page of what waited for a worker of this job version (the first
        page when its first worker arrives, the next as its queue runs low)."""
        token = self._paging[key] = object()

        async def load() -> None:
            delay = LOAD_RETRY_FIRST
            while self._paging.get(key) is token:  # still the load in charge
                try:
                    # They come back via backlog() and queued().
                    await self.store.announce_queued(
                        *key, after=after, limit=LOAD_PAGE, token=token
                    )
                    return
                except Exception:
                    log.exception(
                        "loading the queued runs of %s failed; again in %.1f s", key, delay
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LOAD_RETRY_CAP)

        task = asyncio.create_task(load())
        self._loading.add(task)
        self._handed.setdefault(key, {})
        self._loads[key] = self._loads.get(key, 0) + 1

        def done(task: asyncio.Task[None]) -> None:
            # After the snapshot came: it is delivered before the load's task resumes.
            self._loading.discard(task)
            self._loads[key] -= 1
            if not self._loads[key]:
                del self._loads[key], self._handed[key]

        task.add_done_callback(done)

    def _load_more(self, key: Key) -> None:
        """The next page, once the loaded queue runs low."""
        last = self._backlog.get(key)
        queue = self._queues.get(key)
        if last is None or key in self._paging or (queue and len(queue) >= LOAD_LOW_WATER):
            return
        self._load(key, after=last)

    def remove_session(self, session: Session) -> list[tuple[str, int]]:
        """Forget a session; returns the (run id, attempt) pairs it still held."""
        self._sessions.pop(session.id, None)
        for job_id, version in session.serves:
            key = (session.env, job_id, version)
            sessions = self._serving.get(key, [])
            if session in sessions:
                sessions.remove(session)
            if not sessions:  # nobody serves it now: the store keeps its queue
                self._serving.pop(key, None)
                self._queues.pop(key, None)
                self._backlog.pop(key, None)
                self._paging.pop(key, None)
        held = list(session.running.items())
        for run_id, _ in held:
            self._release(run_id, still_counted=True)
        return held

    def hold(self, runs: Sequence[Run]) -> None:
        """At start: the runs the workers of the server's last life held. Their
        streams broke with it, but they may still be running them: like a gone
        worker's, they count toward their job's concurrency limit, off every
        worker, until they end or go back to the queue (once a lease has passed)."""
        for run in runs:
            job = (run.env, run.job_id)
            self._gone[run.id] = job
            self._executing[job] = self._executing.get(job, 0) + 1

    def finished(self, run_id: str, attempt: int) -> None:
        """The worker ended or suspended that attempt itself: free its slot quietly.
        A newer attempt of the same run (dispatched since) keeps its slot."""
        session = self._owner.get(run_id)
        if session is not None and session.running.get(run_id) == attempt:
            self._pump(self._release(run_id))

    def owns(self, session: Session, run_id: str, attempt: int) -> bool:
        return session.running.get(run_id) == attempt

    async def close(self) -> None:
        for task in list(self._loading):
            task.cancel()
        await asyncio.gather(*self._loading, return_exceptions=True)

    def pause(self) -> None:
        """Stop handing out runs (shutdown)."""
        self._paused = True

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    # -- the core -------------------------------------------------------------------

    def _release(self, run_id: str, *, still_counted: bool = False) -> set[Key]:
        """Free the run's slot; returns the queues that may now move: the session's
        own (a free slot) and every queued version of the job (a free place under
        its concurrency limit, which counts all versions and workers). With
        `still_counted` (its worker is gone) the run keeps its place under the limit
        until `_settle_gone`."""
        session = self._owner.pop(run_id)
        session.running.pop(run_id, None)
        job = (session.env, self._job_of.pop(run_id))
        if not self._owner:
            self.idle.set()
        keys = {(session.env, *s) for s in session.serves}
        if still_counted:
            self._gone[run_id] = job
            return keys
        self._executing[job] -= 1
        return keys | {key for key in self._queues if key[:2] == job}

    def _settle_gone(self, run_id: str) -> set[Key]:
        """A gone worker's run ended or was queued again: it stops counting."""
        job = self._gone.pop(run_id, None)
        if job is None:
            return set()
        self._executing[job] -= 1
        return {key for key in self._queues if key[:2] == job}

    def _pump(self, keys: set[Key]) -> None:
        """Hand out what these queues can: one run at a time, the oldest at the head
        of any of them first, so that no job (on a worker serving several) and no
        version (under a limit counting them all) waits behind another's newer runs."""
        if self._paused:
            return
        # The queues that may move, by the age of their head: each is taken out
        # when it cannot move (its workers full, its job at its limit) and put back
        # with its next head after handing one out.
        heads = [
            (self._age(key), key)
            for key in keys
            if self._queues.get(key) and self._serving.get(key)
        ]
        heapq.heapify(heads)
        limits: dict[tuple[str, str], int] = {}
        while heads:
            _, key = heapq.heappop(heads)
            env, job_id, _ = key
            if (env, job_id) not in limits:
                compiled = self.index.get(env, job_id)
                limits[env, job_id] = compiled.job.concurrency_limit if compiled else 0
            limit = limits[env, job_id]
            session = max(self._serving[key], key=lambda s: s.free)
            if session.free <= 0 or (limit and self._executing.get((env, job_id), 0) >= limit):
                continue
            queue = self._queues[key]
            self._assign(session, queue.pop())
            if queue:
                heapq.heappush(heads, (self._age(key), key))
            else:
                del self._queues[key]
        for key in keys:
            if self._serving.get(key):
                self._load_more(key)

    def _age(self, key: Key) -> tuple[int, int, int]:
        """How old the run at the head of a queue is (see `_age`)."""
        return _age(self._queues[key].head())

    def _assign(self, session: Session, item: _Queued) -> None:
        run, now = item.run, self.clock()
        run.attempt += 1
        run.worker_id = session.worker_id
        # As the claim stores them: the run request shows them.
        run.updated_at = now
        if run.started_at is None:
            run.started_at = now
        session.running[run.id] = run.attempt
        self._owner[run.id] = session
        self._job_of[run.id] = run.job_id
        handed = self._handed.get((run.env, run.job_id, run.job_version))
        if handed is not None:
            handed[run.id] = run.attempt
        job = (run.env, run.job_id)
        self._executing[job] = self._executing.get(job, 0) + 1
        self.idle.clear()
        claim = self.store.claim(run.id, item.stored_attempt, run.attempt, session.worker_id, now)
        claim.add_done_callback(lambda f: self._claimed(f, session, item))
        session.link.start_run(run, item.event)

    def _forget_queued(self, run_id: str) -> None:
        for queue in self._queues.values():
            if queue.discard(run_id):
                return

    def _claimed(self, future: asyncio.Future[bool], session: Session, item: _Queued) -> None:
        if future.cancelled():
            return
        failure = future.exception()
        if failure is None and future.result():
            return
        run = item.run
        handed = self._handed.get((run.env, run.job_id, run.job_version))
        if failure is not None and handed is not None and handed.get(run.id) == run.attempt:
            # Never stored: the store still has the run QUEUED at item.stored_attempt,
            # so a load's snapshot of it is not stale (and may be all that brings it back).
            del handed[run.id]
        held = self._owner.get(run.id) is session and session.running.get(run.id) == run.attempt
        if held:
            keys = self._release(run.id)
        elif run.id in self._gone:
            # Its worker left before the claim failed: no requeue will ever match
            # this attempt (the store never had it), so it stops counting here.
            keys = self._settle_gone(run.id)
        elif failure is not None and run.id not in self._owner:
            keys = set()  # already finished by its worker, but the store never had it
        else:
            return
        if failure is None:
            # Ended (cancelled, aborted) between queueing and claiming.
            if held:
                session.link.stop_run(run.id, run.attempt, "the run has ended", ended=True)
            self._pump(keys)
            return
        # The claim was not stored: the store still has the run QUEUED at
        # item.stored_attempt. The abandoned attempt's number is not reused while
        # this server runs, so nothing a worker still sends for it can pass for the
        # next dispatch's. (After a crash it may be: worker_service.proto, 2.)
        log.error("claiming run %s failed; it stays queued", run.id, exc_info=failure)
        if held:
            session.link.stop_run(run.id, run.attempt, "the dispatch was not recorded", ended=False)
        key = (run.env, run.job_id, run.job_version)
        queue = self._queues.setdefault(key, _RunQueue()) if self._serving.get(key) else None
        if queue is not None and run.id not in queue:
            # A copy: the abandoned attempt's run request may still be on its way.
            queue.add(_Queued(replace(run), item.event, item.stored_attempt))
            keys.add(key)
        self._pump(keys)
