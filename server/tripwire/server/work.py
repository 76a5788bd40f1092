"""The worker protocol's domain side: sessions, tasks, logs, results, leases."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument, NotFound
from .events import (
    MAX_ID_LENGTH,
    MAX_TIME_MS,
    DeliveryOptions,
    EventDraft,
    Limits,
    check_kept,
    check_not_a_fire_id,
    check_text,
    prepare,
)
from .jobs import JobService, retry_policy
from .matching import JobIndex
from .models import Event, Job, LogEntry, NewEvent, Run, TaskAsk, TaskKind
from .tasks import LOG_RANK, MAX_STORED_INT, MAX_TASK_KEY_LENGTH, TaskOutcome, idempotency_key

if TYPE_CHECKING:
    from .store import Store

MAX_CAPACITY = 10_000
# The error a task or run gets in place of an output over the payload limit:
# stored, and every replay would send it again.
TOO_LARGE = "OutputTooLarge"
CUT_NOTE = " [cut to the payload limit]"


def too_large(what: str, size: int, limit: int) -> dict[str, str]:
    return {
        "type": TOO_LARGE,
        "message": f"{what} is {size} bytes, over the limit of {limit} bytes",
        "stack": "",
    }


def cut_error(error: dict[str, str], size: int, limit: int, what: str) -> dict[str, str]:
    """An error over the payload limit, cut to fit: unlike an output, it still says
    what went wrong, and a retry may well not repeat it. Its type keeps at most
    200 bytes, message and stack share the rest; a limit too small even for that
    gets the OutputTooLarge error instead."""

    def cut(text: str, budget: int) -> str:
        data = text.encode()
        if len(data) <= budget:
            return text
        return data[: max(budget - len(CUT_NOTE), 0)].decode(errors="ignore") + CUT_NOTE

    kind = cut(error.get("type", ""), min(200, limit // 4))
    budget = (limit - len(kind.encode()) - 16) // 2  # 16: the fields' tags and lengths
    cut_down = {
        **error,
        "type": kind,
        "message": cut(error.get("message", ""), budget),
        "stack": cut(error.get("stack", ""), budget),
    }
    if budget < 2 * len(CUT_NOTE) or sum(len(v.encode()) for v in cut_down.values()) > limit:
        return too_large(what, size, limit)
    return cut_down


@dataclass(frozen=True)
class TaskInput:
    """A task request as the stream delivered it, before validation."""

    key: str
    parent_id: str
    kind: str
    name: str
    params: Any
    retry: dict[str, Any] | None
    # SEND_EVENT(S): the parsed events and options.
    events: tuple[EventDraft, ...] = ()
    options: DeliveryOptions = field(default_factory=DeliveryOptions)
    # The wire size of `params`.
    params_bytes: int = 0


class WorkService:
    def __init__(
        self,
        store: Store,
        index: JobIndex,
        jobs: JobService,
        limits: Limits,
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self.index = index
        self.jobs = jobs
        self.limits = limits
        self.clock = clock

    async def hello(
        self, env: str, worker_id: str, jobs: Sequence[Job], capacity: int
    ) -> list[Job]:
        if not worker_id:
            raise InvalidArgument("hello.worker_id", "is required")
        check_text(worker_id, "hello.worker_id", MAX_ID_LENGTH)  # GetRun and tables show it
        if not 1 <= capacity <= MAX_CAPACITY:
            raise InvalidArgument("hello.capacity", f"must be between 1 and {MAX_CAPACITY}")
        if not jobs:
            raise InvalidArgument("hello.jobs", "must name at least one job to serve")
        first: dict[tuple[str, str], int] = {}
        for i, job in enumerate(jobs):
            if (at := first.setdefault((job.id, job.version), i)) != i:
                raise InvalidArgument(
                    f"hello.jobs[{i}]",
                    f"version {job.version} of job {job.id!r} is already hello.jobs[{at}]",
                )
        # All or nothing: a bad hello, or one the store fails, stores none of its jobs.
        # SetJobEnabled is the operator's switch: a worker (re)connecting with a
        # version that exists must not turn it back on.
        return await self.jobs.register_all(env, jobs, "hello.jobs", keep_enabled=True)

    async def job(self, env: str, job_id: str, version: str) -> Job:
        latest = self.index.get(env, job_id)
        if latest is not None and latest.job.version == version:
            return latest.job  # the index changes with every write to a job: never stale
        found = await self.store.get_job(env, job_id, version)  # an older version: rare
        if found is None:
            raise NotFound(f"version {version} of job {job_id!r} not found")
        return found

    async def request_task(self, env: str, run: Run, attempt: int, asked: TaskInput) -> TaskOutcome:
        ask = self._validate(env, run.id, asked)
        job = await self.job(env, run.job_id, run.job_version)
        return await self.store.request_task(env, run.id, attempt, ask, job.retry, self.clock())

    def _validate(self, env: str, run_id: str, asked: TaskInput) -> TaskAsk:
        if not asked.key:
            raise InvalidArgument("task.key", "is required: every io call needs a cache key")
        for field_name, value in (("key", asked.key), ("name", asked.name)):
            if len(value) > MAX_TASK_KEY_LENGTH:
                raise InvalidArgument(
                    f"task.{field_name}", f"is longer than {MAX_TASK_KEY_LENGTH} characters"
                )
        try:
            kind = TaskKind(asked.kind)
        except ValueError:
            raise InvalidArgument(
                "task.kind", "must be RUN, SEND_EVENT, SEND_EVENTS or WAIT"
            ) from None
        if asked.retry is not None:
            if kind is not TaskKind.RUN:
                # Stored, it would show as the task's policy, though nothing retries it.
                raise InvalidArgument("task.retry", f"only a RUN task is retried, not {kind.value}")
            retry_policy(asked.retry, "task.retry")
        limit = self.limits.max_payload_bytes
        # The events of SEND_EVENT(S) are limited one by one, like SendEvents'.
        if kind not in (TaskKind.SEND_EVENT, TaskKind.SEND_EVENTS) and asked.params_bytes > limit:
            raise InvalidArgument(
                "task.params", f"is {asked.params_bytes} bytes, over the limit of {limit} bytes"
            )
        events: tuple[Any, ...] = ()
        if kind in (TaskKind.SEND_EVENT, TaskKind.SEND_EVENTS):
            if not asked.events:
                raise InvalidArgument(
                    "task.params.event" if kind is TaskKind.SEND_EVENT else "task.params.events",
                    "is required"
                    if kind is TaskKind.SEND_EVENT
                    else "must hold at least one event",
                )
            if len(asked.events) > self.limits.max_batch:
                raise InvalidArgument(
                    "task.params.events",
                    f"{len(asked.events)} events exceed the batch limit of {self.limits.max_batch}",
                )
            # The id defaults to one derived from the task, so a replay that reaches
            # the server again (it cannot: the task is cached) still sends nothing new.
            base = idempotency_key(run_id, asked.parent_id, asked.key)
            now = self.clock()
            prepared, wheres = [], []
            for i, draft in enumerate(asked.events):
                default = base if kind is TaskKind.SEND_EVENT else f"{base}:{i}"
                where = (
                    "task.params.event"
                    if kind is TaskKind.SEND_EVENT
                    else f"task.params.events[{i}]"
                )
                draft = EventDraft(**{**draft.__dict__, "id": draft.id or default})
                event = prepare(draft, asked.options, now, self.limits, where)
                check_not_a_fire_id(self.index, env, event.id, f"{where}.id")
                prepared.append(event)
                wheres.append(where)
            events = tuple(prepared)

            def kept(i: int, event: Event, new: NewEvent) -> None:
                check_kept(event, new, self.limits, wheres[i])

        if kind is TaskKind.WAIT:
            seconds = asked.params.get("seconds") if isinstance(asked.params, dict) else None
            latest = (MAX_TIME_MS - self.clock()) / 1000  # a Timestamp ends in 9999
            if (
                not isinstance(seconds, int | float)
                or isinstance(seconds, bool)
                or not 0 <= seconds <= latest  # NaN and infinity fail too
            ):
                raise InvalidArgument(
                    "task.params.seconds",
                    "must be a number of seconds >= 0 that ends before the year 10000",
                )
        return TaskAsk(
            asked.key,
            asked.parent_id,
            kind,
            asked.name,
            asked.params,
            asked.retry,
            events,
            kept if events else None,
        )

    async def check_suspended(self, env: str, run_id: str, attempt: int) -> bool:
        """True if `attempt` suspended the run and none has started since; else
        StaleAttempt."""
        await self.store.check_attempt(env, run_id, attempt, suspended=True)
        return True

    async def complete_task(
        self,
        env: str,
        run_id: str,
        attempt: int,
        task_id: str,
        output: Any,
        error: dict[str, str] | None,
        size: int = 0,
        *,
        final: bool = False,
        next_try_offset: int = 0,
        suspended: bool = False,
    ) -> TaskOutcome:
        """`size`: the wire size of the outcome. An output over the payload limit
        fails the task instead, finally: retrying would only make it again; an
        error over it is cut to fit. `final`: `error` is not retried.
        `next_try_offset`: the worker's, kept with the task for its next try.
        `suspended`: the attempt may have suspended the run since it started the task."""
        if not task_id:
            raise InvalidArgument("task_complete.task_id", "is required")
        if next_try_offset > MAX_STORED_INT:
            raise InvalidArgument(
                "task_complete.next_try_offset", f"must be at most {MAX_STORED_INT}"
            )
        limit = self.limits.max_payload_bytes
        if size > limit and error is not None:
            error = cut_error(error, size, limit, "task error")
        elif size > limit:
            final = True
            output, error = None, too_large("task output", size, limit)
        return await self.store.complete_task(
            env,
            run_id,
            attempt,
            task_id,
            output,
            error,
            self.clock(),
            random.random(),
            final,
            next_try_offset,
            suspended=suspended,
        )

    async def log(
        self,
        env: str,
        run_id: str,
        attempt: int,
        seq: int,
        level: str,
        message: str,
        data: Any,
        size: int = 0,
        *,
        suspended: bool = False,
    ) -> None:
        """`size`: the wire size of message and data. `suspended`: the attempt may
        have suspended the run since (a line from a function still running)."""
        if not 1 <= seq <= MAX_STORED_INT:
            raise InvalidArgument("log.seq", f"must be 1 to {MAX_STORED_INT}")
        if size > self.limits.max_payload_bytes:
            raise InvalidArgument(
                "log",
                f"message and data are {size} bytes, "
                f"over the limit of {self.limits.max_payload_bytes} bytes",
            )
        if level not in LOG_RANK:
            raise InvalidArgument("log.level", "must be LOG, ERROR, WARN, INFO or DEBUG")
        entry = LogEntry(seq=seq, level=level, message=message, data=data, time=self.clock())
        await self.store.append_log(env, run_id, attempt, entry, suspended=suspended)

    async def finish(
        self,
        env: str,
        run_id: str,
        attempt: int,
        output: Any,
        error: dict[str, str] | None,
        size: int = 0,
    ) -> Run:
        """`size`: the wire size of the outcome. An output over the payload limit
        makes the run a FAILURE saying so; an error over it is cut to fit."""
        limit = self.limits.max_payload_bytes
        if size > limit and error is not None:
            error = cut_error(error, size, limit, "run error")
        elif size > limit:
            output, error = None, too_large("run output", size, limit)
        return await self.store.finish_run(env, run_id, attempt, output, error, self.clock())
