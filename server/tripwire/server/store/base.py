"""The backend-neutral store interface. Nothing outside `store/` sees SQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..models import (
    Event,
    Job,
    KeptCheck,
    LogEntry,
    NewEvent,
    Page,
    Purged,
    Run,
    RunChanges,
    Task,
    TaskAsk,
)
from ..tasks import TaskOutcome


class Store(Protocol):
    """Every read and every atomic state change the server needs.

    Each write is one transaction: it happens completely or not at all, and
    when its coroutine returns it is durable.
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def wait_at_most(self, seconds: float) -> None:
        """Shutdown: writes wait `seconds` more at most for a lock or a resource
        another process holds (0: none), failing Unavailable past that."""
        ...

    # Events
    async def ingest(
        self,
        env: str,
        events: Sequence[NewEvent],
        now: int,
        check: Callable[[list[Event]], None] | None = None,
        kept: KeptCheck | None = None,
    ) -> list[Event]:
        """Store a batch atomically: dedup by id, deliver what is due, create its runs.
        `check` sees the result before the commit, `kept` each event a resend
        rescheduled keeping its stored payload or context; if either raises,
        nothing is stored."""
        ...

    async def deliver_due(self, now: int, limit: int = 500) -> list[Event]: ...
    async def next_timer(self) -> int | None: ...
    async def get_event(self, env: str, event_id: str) -> Event | None: ...
    async def event_runs(self, env: str, event_id: str) -> list[Run]: ...
    async def list_events(
        self, env: str, *, name: str, status: str, limit: int, before: tuple[str, int] | None
    ) -> Page[Event]: ...
    async def cancel_event(self, env: str, event_id: str, now: int) -> Event: ...

    # Runs
    async def get_run(self, env: str, run_id: str) -> Run | None: ...
    async def list_runs(
        self,
        env: str,
        *,
        job_id: str,
        event_id: str,
        status: str,
        limit: int,
        before: tuple[str, int] | None,
    ) -> Page[Run]: ...
    async def cancel_run(self, env: str, run_id: str, now: int, reason: str) -> Run: ...
    async def cancel_runs_for_event(
        self, env: str, event_id: str, now: int
    ) -> tuple[list[str], list[Run]]: ...

    # Jobs
    async def register_job(self, job: Job, now: int, *, keep_enabled: bool = False) -> Job: ...
    async def register_jobs(
        self, jobs: Sequence[Job], now: int, *, keep_enabled: bool = False
    ) -> list[Job]:
        """Register every version in one transaction (a worker's hello): all or none."""
        ...

    async def get_job(self, env: str, job_id: str, version: str | None) -> Job | None: ...
    async def job_versions(self, env: str, job_id: str) -> list[Job]: ...
    async def list_jobs(self, env: str, *, limit: int, after: str) -> Page[Job]: ...
    async def set_job_enabled(
        self, env: str, job_id: str, version: str | None, enabled: bool, now: int
    ) -> tuple[list[Job], list[str]]: ...
    async def invoke(
        self, env: str, job_id: str, event: NewEvent, now: int
    ) -> tuple[Run, bool]: ...

    async def run_details(self, run_id: str) -> tuple[list[Task], list[LogEntry]]: ...
    async def run_changes(
        self, run_id: str, marks: Mapping[str, tuple[object, ...]], log_mark: int
    ) -> RunChanges:
        """The run's tasks whose Task.mark() is not in `marks`, and its lines stored
        after `log_mark` (0: all of them): for a reader that already holds the
        rest, at the cost of the changes rather than of the whole run."""
        ...

    # Schedules and timers
    async def fire_schedules(self, now: int, grace_ms: int) -> list[Run]: ...
    async def wake_due(self, now: int) -> list[Run]: ...
    async def time_out_due(self, now: int) -> list[str]: ...

    # Dispatch and the worker protocol. Every write a worker's message causes
    # checks the fencing token (run EXECUTING at that attempt) first.
    async def announce_queued(
        self,
        env: str,
        job_id: str,
        version: str,
        *,
        after: int = 0,
        limit: int = 1000,
        token: object = None,
    ) -> int: ...
    async def orphans(self) -> list[Run]: ...
    def claim(
        self,
        run_id: str,
        stored_attempt: int,
        attempt: int,
        worker_id: str,
        now: int,
    ) -> asyncio.Future[bool]:
        """QUEUED at `stored_attempt` -> EXECUTING at `attempt`, ordered before any
        later write; False if the run is no longer QUEUED at that attempt. The
        first claim sets the deadline of the run's own job version."""
        ...

    async def requeue(self, runs: Sequence[tuple[str, int]], now: int) -> list[Run]: ...
    async def dispatch_context(self, env: str, run: Run) -> tuple[Event | None, list[Task]]: ...
    async def request_task(
        self,
        env: str,
        run_id: str,
        attempt: int,
        ask: TaskAsk,
        job_retry: dict[str, Any] | None,
        now: int,
    ) -> TaskOutcome: ...
    async def complete_task(
        self,
        env: str,
        run_id: str,
        attempt: int,
        task_id: str,
        output: Any,
        error: dict[str, str] | None,
        now: int,
        rand: float,
        final: bool = False,
        next_try_offset: int = 0,
        *,
        suspended: bool = False,
    ) -> TaskOutcome: ...
    async def append_log(
        self, env: str, run_id: str, attempt: int, entry: LogEntry, *, suspended: bool = False
    ) -> bool: ...
    async def check_attempt(
        self, env: str, run_id: str, attempt: int, *, suspended: bool = False
    ) -> Run:
        """The run if `attempt` may still write to it (as request_task, complete_task
        and append_log decide), read only; else StaleAttempt."""
        ...

    async def finish_run(
        self,
        env: str,
        run_id: str,
        attempt: int,
        output: Any,
        error: dict[str, str] | None,
        now: int,
    ) -> Run: ...

    # Retention
    async def purge(
        self, cutoff: int, after_seq: int = 0, limit: int = 50, new_in_a_row: int = 0
    ) -> Purged:
        """Delete, of the `limit` events after `after_seq` (oldest first), those
        delivered or cancelled before `cutoff` whose runs all ended before it, with
        their runs, tasks and logs, in one short transaction; says where to go on."""
        ...
