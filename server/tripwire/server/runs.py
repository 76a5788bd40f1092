"""Runs: lookups, cancellation and watching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from .errors import InvalidArgument, NotFound, Unavailable
from .hub import Hub
from .models import LogEntry, Page, Run, Task

if TYPE_CHECKING:
    from .store import Store


Details = tuple[Run, list[Task], list[LogEntry]]


class RunService:
    def __init__(self, store: Store, hub: Hub, clock: Callable[[], int]) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        # Watches of one run share reads: per run, the read in flight, with the
        # hub's stamp of the run's latest change when it started.
        self._reads: dict[tuple[str, str], tuple[int, asyncio.Future[Details]]] = {}

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

    async def _shared_details(self, env: str, run_id: str) -> Details:
        """The run's details, as a watch woken by its changes needs them: read since
        its latest change (notified after its commit), by this call or by the one of
        another watch of the run, which every watch woken by that change shares."""
        key, stamp = (env, run_id), self.hub.stamp(run_id)
        current = self._reads.get(key)
        if current is None or current[0] != stamp:
            future = asyncio.ensure_future(self.details(env, run_id))
            current = self._reads[key] = (stamp, future)

            def done(_: object, entry: object = current) -> None:
                if self._reads.get(key) is entry:
                    del self._reads[key]

            future.add_done_callback(done)
        return await asyncio.shield(current[1])

    async def find(
        self,
        env: str,
        *,
        job_id: str,
        event_id: str,
        status: str,
        limit: int,
        before: int | None,
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
        with self.hub.watch(run_id) as changes:
            run, tasks, logs = await self.details(env, run_id)
            yield run
            seen_tasks = {}
            for task in tasks:
                seen_tasks[task.id] = _task_state(task)
                yield task
            # By number, not "above the last": a replay may store a line under a
            # lower number (see worker_service.proto, 5.).
            seen_logs = set()
            for entry in logs:
                seen_logs.add(entry.seq)
                yield entry
            while not run.status.terminal:
                closing = await changes.get() is None
                while not changes.empty():  # a burst of changes makes one read
                    closing = changes.get_nowait() is None or closing
                if closing:
                    raise Unavailable("the server is shutting down; watch again later")
                latest, tasks, logs = await self._shared_details(env, run_id)
                for task in tasks:
                    if seen_tasks.get(task.id) != _task_state(task):
                        seen_tasks[task.id] = _task_state(task)
                        yield task
                for entry in logs:
                    if entry.seq not in seen_logs:
                        seen_logs.add(entry.seq)
                        yield entry
                if (latest.status, latest.updated_at, latest.attempt) != (
                    run.status,
                    run.updated_at,
                    run.attempt,
                ):
                    yield latest
                run = latest
                del tasks, logs  # not held while waiting (a copy per watch)


def _task_state(task: Task) -> tuple[object, ...]:
    return (task.status, task.attempts, task.retry_at)
