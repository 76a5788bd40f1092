"""Job definitions: what a worker serves, checked when the module defining them is imported.

```python
client = Client("my-app")

@client.define_job(id="job-2", name="Second job", version="0.0.1",
                   trigger=event_trigger(name="new.user", schema=NewUser))
async def second_job(payload: NewUser, io: IO, ctx: RunContext) -> None:
    await io.logger.log("New user created", {"userId": payload.userId})
```

A handler takes ``(payload, io, ctx)``. An ``async def`` handler runs on the worker's event
loop; a plain function runs in a thread and gets a blocking ``io``
(:class:`~tripwire.client.io.SyncIO`). When the trigger's schema is a pydantic model the
payload arrives parsed into it.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tripwire.client import convert
from tripwire.client.errors import JobDefinitionError
from tripwire.client.io import (
    IO,
    THREAD_EXITS,
    Execution,
    Suspend,
    SyncIO,
    error_info,
    json_value,
)
from tripwire.client.models import Event, Job, Run, Trigger
from tripwire.v1 import job_pb2, worker_service_pb2

__all__ = [
    "Handler",
    "JobDefinition",
    "JobDefinitionError",
    "JobRegistry",
    "RunContext",
    "define_job",
    "execute_run",
    "validate_cron",
]

#: ``(payload, io, ctx)``; a coroutine function or a plain one.
Handler = Callable[[Any, Any, "RunContext"], Any]

_SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
# semver.org's own expression.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)
_LOG_LEVELS = ("LOG", "ERROR", "WARN", "INFO", "DEBUG")
# concurrency_limit and max_duration_seconds are uint32 in the hello's Job.
_MAX_UINT32 = 2**32 - 1

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (what, lowest, highest, names numbered from `lowest`)
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),  # 0 and 7 are both Sunday
)
_CRON_ITEM = re.compile(r"(?P<base>\*|(?P<lo>\w+)(?:-(?P<hi>\w+))?)(?:/(?P<step>\d+))?", re.ASCII)


def _cron_value(text: str, lowest: int, highest: int, names: tuple[str, ...]) -> int:
    if text.isdigit():  # ASCII only: _CRON_ITEM matches nothing else
        number = int(text)
    elif text.upper() in names:
        number = names.index(text.upper()) + lowest
    else:
        raise ValueError(f"{text!r} is not a number" + (" or a name" if names else ""))
    if not lowest <= number <= highest:
        raise ValueError(f"{number} is outside {lowest}-{highest}")
    return number


# As the server: longer is refused before any parsing.
MAX_CRON_LENGTH = 1024


def validate_cron(cron: str) -> None:
    """Raise JobDefinitionError unless ``cron`` is a plausible 5-field expression.

    A light syntactic check (the server parses it for real): each field is a comma list of
    ``*``, ``N`` or ``N-M``, each optionally ``/step``, with numbers in the field's range and
    month and weekday names (``JAN``, ``MON``) where they make sense.
    """
    if isinstance(cron, str) and len(cron) > MAX_CRON_LENGTH:
        raise JobDefinitionError(
            f"cron is {len(cron)} characters, over the server's limit of {MAX_CRON_LENGTH}"
        )
    fields = cron.split() if isinstance(cron, str) else []
    if len(fields) != 5:
        raise JobDefinitionError(
            f"cron needs 5 fields (minute hour day-of-month month day-of-week), got {cron!r}"
        )
    for text, (what, lowest, highest, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            match = _CRON_ITEM.fullmatch(item)
            try:
                if match is None:
                    raise ValueError(f"{item!r} is not *, N, N-M or one of those with /step")
                lo, hi, step = match["lo"], match["hi"], match["step"]
                if lo is not None:
                    first = _cron_value(lo, lowest, highest, names)
                    if hi is not None and _cron_value(hi, lowest, highest, names) < first:
                        raise ValueError(f"range {item!r} runs backwards")
                if step is not None and int(step) == 0:
                    raise ValueError("a step must be at least 1")
            except ValueError as exc:
                raise JobDefinitionError(f"cron {cron!r}: {what} field: {exc}") from None


@dataclass(frozen=True, slots=True)
class RunContext:
    """What a handler knows about the run it executes (its ``ctx`` argument).

    ``data`` is the context object the server sent (``run``, ``job``, ``event``,
    ``environment``, ``account``, ...); the typed fields are read from the run request.
    """

    run: Run
    event: Event
    job: Job | None
    worker_id: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run.id

    @property
    def attempt(self) -> int:
        """The dispatch number of this execution (1 on the first; replays count up)."""
        return self.run.attempt

    @property
    def environment(self) -> Any:
        return self.data.get("environment")

    @property
    def account(self) -> Any:
        return self.data.get("account")


@dataclass(frozen=True, slots=True)
class JobDefinition:
    """One job version a worker serves, with its handler.

    Calling it calls the handler, so a decorated function stays usable in tests.
    """

    id: str
    version: str
    trigger: Trigger
    handler: Handler = field(repr=False)
    name: str = ""
    concurrency_limit: int = 0
    max_duration_seconds: int = 0
    retry: Mapping[str, Any] | None = None
    log_level: str = "INFO"
    enabled: bool = True

    def __post_init__(self) -> None:
        _check(self)

    @property
    def is_async(self) -> bool:
        """True for a coroutine function, which runs on the loop; False runs in a thread."""
        # An object whose __call__ is async counts too. A plain decorator around a
        # coroutine function does not: it may run the coroutine itself (a thread
        # is then right); one that hands the coroutine back fails saying so.
        call = getattr(self.handler, "__call__", None)  # noqa: B004
        return inspect.iscoroutinefunction(self.handler) or inspect.iscoroutinefunction(call)

    def __call__(self, payload: Any, io: Any, ctx: RunContext) -> Any:
        handler: Handler = self.handler
        return handler(payload, io, ctx)

    def parse_payload(self, payload: Any) -> Any:
        """The payload as the handler gets it: parsed into the trigger's pydantic model,
        as JSON (a strict model takes an ISO 8601 string for a datetime, as its JSON
        Schema, which the server checked, says it may)."""
        model = self.trigger.model
        if model is None:
            return payload
        return model.model_validate_json(json.dumps(payload, allow_nan=False))

    def to_proto(self) -> job_pb2.Job:
        """The ``tripwire.v1.Job`` sent in the worker's hello."""
        job = job_pb2.Job(
            id=self.id,
            name=self.name,
            version=self.version,
            trigger=self.trigger.to_proto(),
            enabled=self.enabled,
            concurrency_limit=self.concurrency_limit,
            max_duration_seconds=self.max_duration_seconds,
            log_level=convert.enum_value(job_pb2.LogLevel, self.log_level, "LOG_LEVEL_"),
        )
        if self.retry is not None:
            job.retry.CopyFrom(convert.retry_to_pb(self.retry))
        return job


def _check(job: JobDefinition) -> None:
    if not isinstance(job.id, str) or not _SLUG.fullmatch(job.id):
        raise JobDefinitionError(
            f"job id {job.id!r} is not a slug: lowercase letters, digits, '.', '_' and '-', "
            "at most 128 characters, starting with a letter or digit"
        )
    if not isinstance(job.version, str) or not _SEMVER.fullmatch(job.version):
        raise JobDefinitionError(
            f"job {job.id}: version {job.version!r} is not a semantic version such as 1.0.0"
        )
    if not isinstance(job.trigger, Trigger):
        raise JobDefinitionError(
            f"job {job.id}: trigger must come from event_trigger(), cron_trigger(), "
            f"interval_trigger() or invoke_trigger(), got {job.trigger!r}"
        )
    if job.trigger.kind == "cron":
        validate_cron(job.trigger.cron)
    try:  # as the worker's hello will send it: a filter or schema that is not JSON fails now
        job.trigger.to_proto()
    except (TypeError, ValueError) as exc:
        raise JobDefinitionError(f"job {job.id}: trigger: {exc}") from None
    if not isinstance(job.name, str):
        raise JobDefinitionError(f"job {job.id}: name must be a string, got {job.name!r}")
    if not isinstance(job.enabled, bool):  # a variable's "false" would read as true
        raise JobDefinitionError(
            f"job {job.id}: enabled must be True or False, got {job.enabled!r}"
        )
    for what in ("concurrency_limit", "max_duration_seconds"):
        value = getattr(job, what)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UINT32:
            raise JobDefinitionError(
                f"job {job.id}: {what} must be an integer from 0 to {_MAX_UINT32}, got {value!r}"
            )
    if not isinstance(job.log_level, str) or job.log_level.upper() not in _LOG_LEVELS:
        raise JobDefinitionError(
            f"job {job.id}: log_level {job.log_level!r} is not one of {', '.join(_LOG_LEVELS)}"
        )
    if job.retry is not None:
        try:  # the server's rules too, so a policy it would refuse fails now
            convert.retry_to_pb(job.retry)
        except (TypeError, ValueError) as exc:
            raise JobDefinitionError(f"job {job.id}: {exc}") from None
    _check_handler(job.id, job.handler)


def _check_handler(job_id: str, handler: object) -> None:
    if not callable(handler):
        raise JobDefinitionError(f"job {job_id}: the handler must be callable, got {handler!r}")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # some builtins have no signature; nothing to check
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise JobDefinitionError(
            f"job {job_id}: the handler must accept (payload, io, ctx), "
            f"but {getattr(handler, '__qualname__', handler)!r} takes {signature}"
        ) from None


def define_job(
    *,
    id: str,
    version: str,
    trigger: Trigger,
    name: str = "",
    concurrency_limit: int = 0,
    max_duration_seconds: int = 0,
    retry: Mapping[str, Any] | None = None,
    log_level: str = "INFO",
    enabled: bool = True,
) -> Callable[[Handler], JobDefinition]:
    """A decorator turning a handler into a checked :class:`JobDefinition` (no registry)."""

    def decorate(handler: Handler) -> JobDefinition:
        return JobDefinition(
            id=id,
            version=version,
            trigger=trigger,
            handler=handler,
            name=name,
            concurrency_limit=concurrency_limit,
            max_duration_seconds=max_duration_seconds,
            retry=dict(retry) if retry is not None else None,
            log_level=log_level.upper() if isinstance(log_level, str) else log_level,
            enabled=enabled,
        )

    return decorate


async def execute_run(
    jobs: Mapping[str, JobDefinition],
    request: worker_service_pb2.RunRequest,
    execution: Execution,
    worker_id: str,
) -> worker_service_pb2.RunResult | None:
    """Run the handler for one run request; the ``run_result`` to send, or None when the
    execution was suspended (the server resumes the run later) or stopped."""
    result = worker_service_pb2.RunResult(run_id=execution.run_id, attempt=execution.attempt)
    try:
        job = _job_for(jobs, request)
        ctx = RunContext(
            run=convert.run_from_pb(request.run),
            event=convert.event_from_pb(request.event),
            job=convert.job_from_pb(request.job) if request.HasField("job") else None,
            worker_id=worker_id,
            data=_as_dict(convert.from_value(request.ctx)),
        )
        payload = job.parse_payload(convert.from_value(request.event.payload))
        if job.is_async:
            output = await job.handler(payload, IO(execution), ctx)
        else:
            loop = asyncio.get_running_loop()
            call = contextvars.copy_context().run  # a thread of its own, with its context
            sync_io = SyncIO(execution, loop)
            try:
                output = await loop.run_in_executor(
                    execution.executor, call, job.handler, payload, sync_io, ctx
                )
            except THREAD_EXITS as exc:
                result.error.CopyFrom(error_info(exc))
                return None if execution.halted else result
            if inspect.iscoroutine(output):  # a plain function handing back a coroutine
                output.close()
                raise TypeError(
                    "the handler returned a coroutine, which a plain (non-async) handler "
                    "cannot run: define it with async def, and a decorator around it too"
                )
        result.output.CopyFrom(json_value(output, what="the handler's return value"))
    except Suspend:
        return None
    except asyncio.CancelledError as exc:
        if execution.halted or _cancelling():
            raise  # the worker stops this run (cancel, abandon, lost stream, shutdown)
        # The handler's own, e.g. from awaiting a task it cancelled: the run fails.
        result.error.CopyFrom(error_info(exc))
        result.error.message = result.error.message or "a CancelledError escaped the handler"
    except (Exception, SystemExit) as exc:
        # SystemExit: the handler's own sys.exit(), on the loop; let through, it would
        # stop this worker, and every worker the run went to next.
        result.error.CopyFrom(error_info(exc))
    except BaseExceptionGroup as group:  # e.g. from a TaskGroup in the handler
        if group.subgroup(Suspend) is not None:
            return None
        raise
    return None if execution.halted else result


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _job_for(
    jobs: Mapping[str, JobDefinition], request: worker_service_pb2.RunRequest
) -> JobDefinition:
    job_id = request.run.job_id or request.job.id
    version = request.run.job_version or request.job.version
    job = jobs.get(job_id)
    if job is None or (version and version != job.version):
        served = ", ".join(f"{j.id}@{j.version}" for j in jobs.values())
        raise LookupError(f"this worker serves {served}, not {job_id}@{version}")
    return job


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class JobRegistry:
    """The jobs of one client, by id; a second definition of an id is an error."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobDefinition] = {}

    def add(self, job: JobDefinition) -> JobDefinition:
        if not isinstance(job, JobDefinition):
            raise TypeError(f"expected a JobDefinition, got {type(job).__name__}")
        if job.id in self._jobs:
            raise JobDefinitionError(
                f"job id {job.id!r} is already defined on this client "
                f"(version {self._jobs[job.id].version}); each id may be defined once"
            )
        self._jobs[job.id] = job
        return job

    def define(
        self,
        *,
        id: str,
        version: str,
        trigger: Trigger,
        name: str = "",
        concurrency_limit: int = 0,
        max_duration_seconds: int = 0,
        retry: Mapping[str, Any] | None = None,
        log_level: str = "INFO",
        enabled: bool = True,
    ) -> Callable[[Handler], JobDefinition]:
        """Like :func:`define_job`, also adding the job to this registry."""
        if id in self._jobs:  # fail before the handler is even looked at
            self.add(self._jobs[id])
        make = define_job(
            id=id,
            version=version,
            trigger=trigger,
            name=name,
            concurrency_limit=concurrency_limit,
            max_duration_seconds=max_duration_seconds,
            retry=retry,
            log_level=log_level,
            enabled=enabled,
        )

        def decorate(handler: Handler) -> JobDefinition:
            return self.add(make(handler))

        return decorate

    def get(self, id: str) -> JobDefinition | None:
        return self._jobs.get(id)

    def __iter__(self) -> Iterator[JobDefinition]:
        return iter(tuple(self._jobs.values()))

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, id: object) -> bool:
        return id in self._jobs

    def __repr__(self) -> str:
        return f"JobRegistry({sorted(self._jobs)})"
