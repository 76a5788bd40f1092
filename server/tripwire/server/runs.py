"""Runs: lookups, cancellation and watching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .errors import InvalidArgument, NotFound, Unavailable
from .hub import Hub
from .models import LogEntry, Page, Run, RunChanges, RunStatus, Task

if TYPE_CHECKING:
    from .store import Store


Details = tuple[Run, list[Task], list[LogEntry]]


class RunService:
    def __init__(self, store: Store, hub: Hub, clock: Callable[[], int]) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        # Watches of one run share what they read of it, while any watches it.
        self._views: dict[tuple[str, str], _RunView] = {}

    async def get(self, env: str, run_id: str) -> Run:
        if not run_id:
            raise InvalidArgument("id", "is required")
        run = await self.store.get_run(env, run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        return run

    async def details(self, env: str, run_id: str) -> Details:
        run = await self.get(env, run_id)
        tasks, logs = await self.store.run_details(run_id)
        return run, tasks, logs

    async def _shared_details(self, view: _RunView, env: str, run_id: str) -> Details:
        """The run's details, as a watch needs them: read since its latest change
        (notified after its commit), by this call or by one of another watch of the
        run, which every watch woken by that change shares. Each read takes only
        what changed since the one before (see _RunView)."""
        wanted = self.hub.stamp(run_id)
        while view.stamp is None or view.stamp < wanted:
            if view.reading is None:
                view.reading = asyncio.ensure_future(self._catch_up(view, env, run_id))
            await asyncio.shield(view.reading)
        assert view.run is not None
        return view.run, list(view.tasks.values()), list(view.logs)

    async def _catch_up(self, view: _RunView, env: str, run_id: str) -> None:
        try:
            stamp = self.hub.stamp(run_id)
            run = await self.get(env, run_id)
            changes = await self.store.run_changes(run_id, view.marks, view.log_mark)
            view.apply(run, changes, stamp)
        finally:
            view.reading = None

    async def find(
        self,
        env: str,
        *,
        job_id: str,
        event_id: str,
        status: str,
        limit: int,
        before: tuple[str, int] | None,
    ) -> Page[Run]:
        return await self.store.list_runs(
            env, job_id=job_id, event_id=event_id, status=status, limit=limit, before=before
        )

    async def cancel(self, env: str, run_id: str) -> Run:
        if not run_id:
            raise InvalidArgument("id", "is required")
        return await self.store.cancel_run(env, run_id, self.clock(), "cancelled by CancelRun")

    async def watch(self, env: str, run_id: str) -> AsyncIterator[Run | Task | LogEntry]:
        """The run, its tasks and logs now, then each change, until the run is terminal."""
        with self.hub.watch(run_id) as changes, self._view(env, run_id) as view:
            run, tasks, logs = await self._shared_details(view, env, run_id)
            yield run
            seen_tasks = {}
            for task in tasks:
                seen_tasks[task.id] = task.mark()
                yield task
            # By number, not "above the last": a replay may store a line under a
            # lower number (see worker_service.proto, 5.). The view keeps lines as
            # they were stored; a new watch gets them by number, as GetRun does.
            seen_logs = set()
            for entry in sorted(logs, key=lambda line: line.seq):
                seen_logs.add(entry.seq)
                yield entry
            while not run.status.terminal:
                closing = await changes.get() is None
                while not changes.empty():  # a burst of changes makes one read
                    closing = changes.get_nowait() is None or closing
                if closing:
                    raise Unavailable("the server is shutting down; watch again later")
                latest, tasks, logs = await self._shared_details(view, env, run_id)
                moved = (latest.status, latest.updated_at, latest.attempt) != (
                    run.status,
                    run.updated_at,
                    run.attempt,
                )
                # A run that (re)started comes before what it did since (EXECUTING,
                # then its first lines); any other move comes after what made it (a
                # task's WAITING before the run's, the last lines before the end).
                started = moved and latest.status is RunStatus.EXECUTING
                if started:
                    yield latest
                for task in tasks:
                    if seen_tasks.get(task.id) != (mark := task.mark()):
                        seen_tasks[task.id] = mark
                        yield task
                for entry in logs:
                    if entry.seq not in seen_logs:
                        seen_logs.add(entry.seq)
                        yield entry
                if moved and not started:
                    yield latest
                run = latest
                del tasks, logs  # not held while waiting (a copy per watch)

    @contextmanager
    def _view(self, env: str, run_id: str) -> Iterator[_RunView]:
        key = (env, run_id)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = _RunView()
        view.watches += 1
        try:
            yield view
        finally:
            view.watches -= 1
            if not view.watches:
                del self._views[key]


class _RunView:
    """A watched run as its watches last read it, kept while any watch it: each
    change reads only the tasks whose mark moved and the lines stored since
    (Store.run_changes), so a run of 10,000 tasks does not cost a read of all of
    them, and of all its lines, per change."""

    def __init__(self) -> None:
        self.watches = 0
        # The hub's stamp when the latest read began (None: nothing read yet).
        self.stamp: int | None = None
        self.reading: asyncio.Future[None] | None = None
        self.run: Run | None = None
        self.tasks: dict[str, Task] = {}  # by id, in position order
        self.marks: dict[str, tuple[object, ...]] = {}
        self.logs: list[LogEntry] = []
        self.log_mark = 0
        self._last_position = -1

    def apply(self, run: Run, changes: RunChanges, stamp: int) -> None:
        self.run, self.stamp, self.marks = run, stamp, changes.marks
        in_order = True
        for task in changes.tasks:  # by position
            if task.id not in self.tasks:
                in_order = in_order and task.position > self._last_position
                self._last_position = max(self._last_position, task.position)
            self.tasks[task.id] = task
        if not in_order:
            self.tasks = dict(sorted(self.tasks.items(), key=lambda item: item[1].position))
        self.logs += changes.logs
        self.log_mark = changes.log_mark
