"""The ``io`` a handler gets: cached tasks, server-sent events, durable waits and logs.

Every io call but logging is a *task* with a cache key. A task completed in an earlier
execution of the run comes back from the run request's cache without contacting the
server, so a resumed run replays its handler quickly up to where it stopped. Otherwise the
worker asks the server (``TaskRequest``) and follows its answer (``TaskResult``):

- RUNNING: run the function here and report its outcome (``TaskComplete``);
- COMPLETED: the output (events are sent and waits recorded by the server itself);
- WAITING: a retry backoff or an ``io.wait``: this execution stops (:class:`Suspend`
  unwinds the handler) and the server dispatches the run again when it is due;
- ERRORED: :class:`TaskError` is raised in the handler.

A ``run_task`` inside a ``run_task`` function is nested: its parent is the outer task, so
the same key under two parents names two tasks. One key used twice under the same parent
in one execution raises :class:`DuplicateKeyError`.

:class:`IO` is for ``async def`` handlers; :class:`SyncIO` is the blocking flavour that
plain-function handlers get in their thread (its calls hop to the event loop and wait).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
import traceback
import types
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar, Unpack

from google.protobuf import json_format, struct_pb2
from tripwire.client import convert
from tripwire.client._requests import (
    _arguments,
    event_input,
    known_options,
    send_options_message,
)
from tripwire.client.errors import InvalidArgument, TripwireError
from tripwire.client.models import Event
from tripwire.client.options import SendOptions, send_options
from tripwire.v1 import event_pb2, job_pb2, run_pb2, worker_service_pb2

__all__ = [
    "IO",
    "DuplicateKeyError",
    "Execution",
    "Logger",
    "Suspend",
    "SyncIO",
    "TaskError",
]

T = TypeVar("T")
Send = Callable[[worker_service_pb2.RunJobRequest], None]
Request = worker_service_pb2.RunJobRequest

# The server id of the task whose function is running ("" at the top level).
_parent: contextvars.ContextVar[str] = contextvars.ContextVar("tripwire_parent_task", default="")

_COMPLETED = run_pb2.TASK_STATUS_COMPLETED
_RUNNING = run_pb2.TASK_STATUS_RUNNING
_ERRORED = run_pb2.TASK_STATUS_ERRORED
_WAITING = run_pb2.TASK_STATUS_WAITING
_CANCELED = run_pb2.TASK_STATUS_CANCELED
# Room for this many log lines between two io boundaries (see Execution.log).
LINES_PER_BOUNDARY = 1_000_000
# Raised in a worker thread, these come from the code running there (a signal goes to
# the main thread): its task or run fails. Let onto the event loop, they would stop it.
THREAD_EXITS = (KeyboardInterrupt, SystemExit)


class RunEnded(RuntimeError):
    """An io call made, or still waiting, after the worker finished its run: io calls
    must be awaited inside the handler (a fire-and-forget one is never carried out)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id} has ended: io calls must be awaited inside the handler, "
            "one left running is not carried out"
        )


class Suspend(BaseException):
    """This execution of the run stops here; the server resumes the run when it is due.

    A BaseException so that ``except Exception`` in a handler does not swallow it.
    """


class TaskError(TripwireError):
    """A task failed for good (no retry left): raised where the handler awaited it."""

    def __init__(self, type: str, message: str, stack: str = "", *, key: str = "") -> None:
        self.type = type
        self.message = message
        self.stack = stack
        self.key = key
        where = f"task {key!r} failed: " if key else ""
        super().__init__(f"{where}{type}: {message}" if type else f"{where}{message}")


class DuplicateKeyError(TripwireError, ValueError):
    """A cache key was used twice in one execution of a run."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What an io call asks for, checked and converted before anything is sent."""

    kind: int
    key: str
    name: str
    params: struct_pb2.Value | None = None
    retry: job_pb2.RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a task function ended: an output or an error (with the exception, if local)."""

    output: struct_pb2.Value | None = None
    error: run_pb2.ErrorInfo | None = None
    exception: BaseException | None = None
    # The error is not retried: the function returned an output that cannot be sent
    # (not JSON, or too large), or reused a cache key in a nested io call, which
    # running it again would only do again.
    final: bool = False

    @classmethod
    def of(cls, result: Any) -> Outcome:
        try:
            return cls(output=json_value(result, what="task output"))
        except (TypeError, ValueError) as exc:
            return cls(error=error_info(exc), exception=exc, final=True)

    @classmethod
    def failure(cls, exc: BaseException) -> Outcome:
        return cls(error=error_info(exc), exception=exc, final=isinstance(exc, DuplicateKeyError))


@dataclass(frozen=True, slots=True)
class Step:
    """Where a task stands: ``run`` means the function must run now, else ``output``."""

    request_id: str
    task: run_pb2.Task
    run: bool = False
    output: Any = None
    # The execution's boundary count just after the task opened (see Execution.log).
    opened_at: int = 0


# The most a result may hold and still fit a message the server takes (64 MiB by
# default); a larger one would break the whole stream, so it fails here instead.
# (The server's payload limit, 1 MiB by default, is smaller: it answers an output
# over that with OutputTooLarge.)
MAX_RESULT_BYTES = 63 * 1024 * 1024


def json_value(obj: Any, *, what: str) -> struct_pb2.Value:
    """A handler's or task's result (or a log line's data) as a Value: what JSON has
    no type for is written as pydantic's JSON mode writes it, anywhere in it (a
    pydantic model, a datetime, a UUID, ...: see convert.jsonable), and so is one
    of this client's models (the ``Event`` io.send_event returns, say)."""
    value = convert.to_value(obj, what=what)
    size = value.ByteSize()
    if size > MAX_RESULT_BYTES:
        # `what` is a request field (task.params) or says what the value is.
        subject = f"{what}:" if what.startswith("task.") else what
        raise convert.not_json(
            ValueError(f"{subject} is {size} bytes, more than a message to the server can carry")
        )
    return value


def printable(text: str) -> str:
    """``text`` as a protobuf string can hold it: a lone surrogate (what Python makes of
    an undecodable file name) becomes its escape, instead of failing the message."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# An error's type, message and stack each keep at most this many bytes, so that the
# error fits a message to the server whatever the exception says; the server cuts
# them further, to its payload limit.
MAX_ERROR_TEXT_BYTES = MAX_RESULT_BYTES // 4
CUT_NOTE = " [cut: too long for a message to the server]"


def error_text(text: str) -> str:
    """``text`` as an error's field carries it: printable, and cut to
    MAX_ERROR_TEXT_BYTES (saying so)."""
    text = printable(text)
    if len(text) * 4 <= MAX_ERROR_TEXT_BYTES:  # short enough in any encoding
        return text
    data = text.encode()
    if len(data) <= MAX_ERROR_TEXT_BYTES:
        return text
    return data[: MAX_ERROR_TEXT_BYTES - len(CUT_NOTE)].decode(errors="ignore") + CUT_NOTE


def error_info(exc: BaseException) -> run_pb2.ErrorInfo:
    """An exception as the protocol carries it: class name, message and traceback."""
    stack = "".join(traceback.format_exception(exc))
    return run_pb2.ErrorInfo(
        type=error_text(type(exc).__name__), message=error_text(str(exc)), stack=error_text(stack)
    )


# -- task specs ------------------------------------------------------------------------


#: The longest cache key, or task name, the server takes (both come back with every
#: replay of the run).
MAX_KEY_LENGTH = 1024


# The checks of an io call's arguments name the fields of the TaskRequest the server
# would name (task.key, task.params.event.name), as client.send_event's do its
# request's; raised as InvalidArgument (see _arguments).


def _key(key: str, field: str = "task.key") -> str:
    if not isinstance(key, str):
        raise TypeError(f"{field}: must be a string, got {type(key).__name__}")
    if not key:
        raise ValueError(f"{field}: is required: every io call needs a cache key")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"{field}: is longer than {MAX_KEY_LENGTH} characters")
    return key


def task_function(fn: object) -> None:
    """Raise TypeError unless ``fn`` can be run_task's function: called with no
    arguments, again on each retry. Checked before the task is asked for, so that a
    call that can only fail neither stores a task nor spends its retries failing."""
    if inspect.isawaitable(fn):
        if inspect.iscoroutine(fn):
            fn.close()  # never to be awaited: no "never awaited" warning on top
        raise TypeError(
            f"run_task: fn must be a function called with no arguments, got a "
            f"{type(fn).__name__} object: pass the function, not its call "
            "(lambda: fetch(user_id), or the coroutine function itself)"
        )
    if not callable(fn):
        raise TypeError(
            f"run_task: fn must be a function called with no arguments, got {type(fn).__name__}"
        )
    if isinstance(fn, types.FunctionType):  # the common case, a lambda: read its
        # code, at a tenth of what inspect.signature costs on every io call
        code = fn.__code__
        if code.co_argcount <= len(fn.__defaults__ or ()) and code.co_kwonlyargcount <= len(
            fn.__kwdefaults__ or {}
        ):
            return
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some builtins have no signature; nothing to check
    try:
        signature.bind()
    except TypeError:
        raise TypeError(
            "run_task: fn must be a function called with no arguments, but "
            f"{getattr(fn, '__qualname__', fn)!r} takes {signature}: pass its arguments "
            "in a lambda (lambda: fetch(user_id))"
        ) from None


def run_spec(key: str, name: str | None, retry: Mapping[str, Any] | None, params: Any) -> TaskSpec:
    with _arguments():
        if name and not isinstance(name, str):
            raise TypeError(f"task.name: must be a string, got {type(name).__name__}")
        if name and len(name) > MAX_KEY_LENGTH:
            raise ValueError(f"task.name: is longer than {MAX_KEY_LENGTH} characters")
        checked_key = _key(key)
        policy = None if retry is None else convert.retry_to_pb(retry, field="task.retry")
    # Converting params may run the application's own code (a pydantic model's
    # serializers), whose errors are its own; only what the conversion refuses is.
    try:
        value = None if params is None else json_value(params, what="task.params")
    except (TypeError, ValueError) as exc:
        if not convert.refused(exc):
            raise
        raise InvalidArgument(str(exc)) from exc
    return TaskSpec(
        kind=run_pb2.TASK_KIND_RUN, key=checked_key, name=name or key, params=value, retry=policy
    )


def _event_json(event: Mapping[str, Any], field: str) -> dict[str, Any]:
    message = event_input(event, field)
    if not event.get("id"):
        message.ClearField("id")  # the server derives the id from the task's key
    return json_format.MessageToDict(message)


def _send_options(method: str, given: SendOptions | None, more: SendOptions) -> SendOptions:
    """The options of a send, from a dict, keywords or both, taken as client.send_event
    takes them: not a dict, or an option misspelt, is a TypeError."""
    options = send_options(given, more)
    known_options(method, options, SendOptions)
    return options


def _options_json(options: SendOptions) -> dict[str, Any]:
    as_json = json_format.MessageToDict(send_options_message(options, "task.params.options"))
    if "deliverAfter" in as_json:  # int64 is a string in proto JSON; a number reads better
        as_json["deliverAfter"] = int(as_json["deliverAfter"])
    return as_json


def send_event_spec(key: str, event: Mapping[str, Any], options: dict[str, Any]) -> TaskSpec:
    params = {"event": _event_json(event, "task.params.event"), "options": options}
    # Cut to the longest task name: a name over it is the event's to be refused for.
    name = f"send event {event.get('name')}"[:MAX_KEY_LENGTH]
    # Sized as run_task's params: a message too large for the server would end the stream.
    value = json_value(params, what="task.params")
    return TaskSpec(run_pb2.TASK_KIND_SEND_EVENT, _key(key), name, value)


def send_events_spec(
    key: str, events: Sequence[Mapping[str, Any]], options: dict[str, Any]
) -> TaskSpec:
    if isinstance(events, (str, bytes, Mapping)) or not isinstance(events, Iterable):
        raise TypeError("task.params.events: must be a list of events")
    as_json = [_event_json(e, f"task.params.events[{i}]") for i, e in enumerate(events)]
    if not as_json:
        raise ValueError("task.params.events: must hold at least one event")
    params = {"events": as_json, "options": options}
    name = f"send {len(as_json)} events"
    value = json_value(params, what="task.params")
    return TaskSpec(run_pb2.TASK_KIND_SEND_EVENTS, _key(key), name, value)


def wait_spec(key: str, seconds: float) -> TaskSpec:
    with _arguments():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"task.params.seconds: must be a number, got {seconds!r}")
        # A longer wait ends after the year 9999 from any now; NaN fails this too.
        if not 0 <= seconds <= convert.LAST_SECOND:
            big = not isinstance(seconds, float) and abs(seconds) >= 10**20
            shown = ("more" if seconds > 0 else "less") if big else repr(seconds)
            raise ValueError(
                "task.params.seconds: must be a number of seconds >= 0 that ends before "
                f"the year 10000, got {shown}"
            )
        params = convert.to_value({"seconds": seconds}, what="task.params")
        return TaskSpec(run_pb2.TASK_KIND_WAIT, _key(key), f"wait {seconds}s", params)


def _events_output(output: Any, key: str) -> list[Event]:
    if isinstance(output, dict) and isinstance(output.get("events"), list):
        output = output["events"]
    return [_event_output(e, key) for e in (output if isinstance(output, list) else [output])]


def _event_output(output: Any, key: str) -> Event:
    """A send task's cached output (an Event in its JSON form) as the client's
    ``Event``, as ``client.send_event`` returns it."""
    try:
        if not isinstance(output, dict):
            raise TypeError(f"got {type(output).__name__}")
        message = json_format.ParseDict(output, event_pb2.Event(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise TaskError(
            "InvalidOutput", f"the stored output of a send task is not an event: {exc}", key=key
        ) from None
    return convert.event_from_pb(message)


# -- one execution ---------------------------------------------------------------------


class Execution:
    """The task and log state of one execution (run id + attempt) of a run.

    Lives on the event loop. ``send`` puts a message on the worker's stream; the worker
    routes this run's ``task_result`` and ``rejected`` messages to :meth:`resolve` and
    :meth:`reject`, and calls :meth:`halt` on ``cancel``, ``abandon`` or a lost stream.
    Once halted it sends nothing more; once ended (the worker is done with the run), io
    calls the handler left running fail with :class:`RunEnded`. Once suspended (the
    server made the run wait: an ``io.wait``, a retry's backoff) it starts nothing new,
    but a task function already running beside the io call that suspended it (under
    ``asyncio.gather``) still reports its outcome and log lines, which the server keeps
    until the run is dispatched again: that function is not run a second time.
    """

    def __init__(
        self,
        run_id: str,
        attempt: int,
        cached_tasks: Iterable[run_pb2.Task],
        send: Send,
        *,
        executor: Executor | None = None,
        lease_held: Callable[[], bool] = lambda: True,
    ) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.executor = executor
        # False once the server may have given the run to another worker (this one
        # was paused past its lease): no task function starts then.
        self._lease_held = lease_held
        self.halted = False
        self.suspended = False
        self.ended = False
        # Halted before it ended: the worker stopped it (suspended, cancelled,
        # abandoned, its stream lost), rather than its handler returning.
        self.stopped = False
        self._send = send
        cached = list(cached_tasks)
        self._cache = {(task.parent_id, task.key): task for task in cached}
        # Parent task id -> its tasks by id, as last heard of (cached, then answers).
        self._children: dict[str, dict[str, run_pb2.Task]] = {}
        for task in cached:
            self._remember(task)
        self._claimed: set[tuple[str, str]] = set()
        self._pending: dict[str, asyncio.Future[worker_service_pb2.TaskResult]] = {}
        # Log lines are numbered (io boundaries so far) * LINES_PER_BOUNDARY + (lines
        # since the last one): a replay, which skips the functions of cached tasks
        # but crosses the same boundaries, gives every line its first number again.
        self._boundaries = 0
        self._lines = 0
        # Where the try of each task whose function runs here starts (late lines).
        self._opened_at: dict[str, int] = {}
        self._late_lines = 0

    def _boundary(self, count: int = 1) -> None:
        """A task opened, or settled (COMPLETED or ERRORED) for this execution."""
        self._boundaries += count
        self._lines = 0

    def _remember(self, task: run_pb2.Task) -> None:
        self._children.setdefault(task.parent_id, {})[task.id] = task

    def _inside(self, task: run_pb2.Task) -> int:
        """The boundaries counted for the tasks inside ``task``: each one's open and
        settle, its earlier tries, and what is inside it in turn."""
        return sum(
            2 + _earlier(child) + self._inside(child)
            for child in self._children.get(task.id, {}).values()
        )

    def _settled(self, task: run_pb2.Task, ran: bool) -> None:
        """``task`` settled (COMPLETED or ERRORED): the count moves on by what a replay
        taking it from the cache counts for it (its open being counted already): its
        earlier tries, the tasks inside it, its settle. Of that, what this execution
        crossed for it is not counted again: when its function ran here (``ran``), the
        earlier tries (counted as it came back RUNNING) and the tasks it opened, each of
        which counted itself so; a try that failed may have opened tasks the last one
        did not, and those are counted here. Relative, not from where the task opened:
        io calls that other coroutines make beside it (asyncio.gather) are counted once,
        in whatever order the answers come."""
        self._remember(task)
        count = 1
        if not ran:
            count += _earlier(task)
        for child in self._children.get(task.id, {}).values():
            if ran and (task.id, child.key) in self._claimed:
                continue  # opened by this try: it counted itself
            count += 2 + _earlier(child) + self._inside(child)
        self._boundary(count)

    def send(self, message: Request) -> None:
        if not self.halted:
            self._send(message)

    def halt(self) -> None:
        """Stop: nothing more is sent, and every io call waiting on the server unwinds."""
        self.halted = True
        self.suspended = False
        for future in self._pending.values():
            future.cancel()

    def end(self) -> None:
        """The worker is done with this execution (its result sent, or it stopped):
        nothing more is sent, and io calls still in flight, which the handler started
        but did not await, fail instead of waiting for ever."""
        self.stopped = self.stopped or (self.halted and not self.ended)
        self.ended = self.halted = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RunEnded(self.run_id))

    def _check_open(self) -> None:
        if self.ended and not self.stopped:
            raise RunEnded(self.run_id)
        if self.halted:
            # Stopped (a plain handler's thread may still call, the run long gone):
            # unwinds the handler, which `except Exception` does not stop.
            raise Suspend()

    def suspend(self) -> Suspend:
        """The server suspended the run: halt, except for what functions already
        running report (see the class)."""
        self.halt()
        self.suspended = True
        return Suspend()

    def resolve(self, result: worker_service_pb2.TaskResult) -> bool:
        """Hand a ``task_result`` to the io call waiting for it; False if none is."""
        future = self._pending.get(result.request_id)
        if future is None or future.done():
            return False
        future.set_result(result)
        return True

    def reject(self, request_id: str, error: BaseException) -> bool:
        """Fail the io call waiting on ``request_id`` with ``error``; False if none is."""
        future = self._pending.get(request_id)
        if future is None or future.done():
            return False
        future.set_exception(error)
        return True

    def log(
        self, level: job_pb2.LogLevel.ValueType, message: str, data: Any, inside: str = ""
    ) -> None:
        """``inside``: the task whose function logs the line ("" at the top level)."""
        if self.halted and not (self.suspended and inside in self._opened_at):
            return
        if self.halted:
            # Late (see the class): numbered where its task's try started, past the
            # lines any execution logs there (a replay logs none: a cached task
            # settles at once), so that no later execution's lines take its numbers.
            self._late_lines = min(self._late_lines + 1, LINES_PER_BOUNDARY // 2 - 1)
            late = LINES_PER_BOUNDARY // 2 + self._late_lines
            seq = self._opened_at[inside] * LINES_PER_BOUNDARY + late
        else:
            self._lines = min(self._lines + 1, LINES_PER_BOUNDARY - 1)
            seq = self._boundaries * LINES_PER_BOUNDARY + self._lines
        log = worker_service_pb2.RunLog(
            run_id=self.run_id,
            attempt=self.attempt,
            seq=seq,
            level=level,
            message=printable(message),
        )
        if data is not None:
            log.data.CopyFrom(data)
        self._send(Request(log=log))

    async def open(self, spec: TaskSpec, parent: str) -> Step:
        """Start a task: from the cache, or by asking the server."""
        self._check_open()
        slot = (parent, spec.key)
        if slot in self._claimed:
            where = f" under task {parent}" if parent else ""
            raise DuplicateKeyError(
                f"cache key {spec.key!r} is used twice in this run{where}; "
                "each io call needs its own key"
            )
        self._claimed.add(slot)
        self._boundary()
        opened_at = self._boundaries
        cached = self._cache.get(slot)
        # A cached task of another kind is not used: the server reports the nondeterminism.
        if cached is not None and cached.status == _COMPLETED and cached.kind == spec.kind:
            # As the execution that settled it counted: its earlier tries, the tasks
            # inside it, and its settling.
            self._settled(cached, ran=False)
            return Step("", cached, output=_output(cached), opened_at=opened_at)
        request_id = uuid.uuid4().hex
        task = worker_service_pb2.TaskRequest(
            request_id=request_id,
            run_id=self.run_id,
            attempt=self.attempt,
            key=spec.key,
            parent_id=parent,
            kind=spec.kind,  # type: ignore[arg-type]
            name=spec.name,
        )
        if spec.params is not None:
            task.params.CopyFrom(spec.params)
        if spec.retry is not None:
            task.retry.CopyFrom(spec.retry)
        result = await self._exchange(request_id, Request(task=task))
        answer = result.task
        if answer.status == _RUNNING:
            # A retry: its lines must not take the numbers of an earlier try's.
            self._remember(answer)
            self._boundary(_earlier(answer))
        # ERRORED (failed for good in an earlier execution): _settle counts as that one.
        return self._settle(request_id, answer, spec.key, None, opened_at, ran=False)

    async def complete(self, step: Step, outcome: Outcome) -> Step:
        """Report a function's outcome; the answer says what comes next (as for open)."""
        if not self.suspended:
            self._check_open()
        # The TaskRequest's request_id again: the answer is about the same task.
        message = worker_service_pb2.TaskComplete(
            request_id=step.request_id,
            run_id=self.run_id,
            attempt=self.attempt,
            task_id=step.task.id,
        )
        if outcome.error is not None:
            message.error.CopyFrom(outcome.error)
            # Where a next try starts numbering: past every boundary this one crossed.
            message.next_try_offset = self._boundaries - step.opened_at + 1
            message.final = outcome.final
        else:
            message.output.CopyFrom(outcome.output or convert.to_value(None))
        if self.suspended:  # kept by the server; nothing here waits for its answer
            self._send(Request(task_complete=message))
            raise Suspend()
        result = await self._exchange(step.request_id, Request(task_complete=message))
        return self._settle(
            step.request_id,
            result.task,
            step.task.key,
            outcome.exception,
            step.opened_at,
            ran=True,
        )

    async def _exchange(self, request_id: str, message: Request) -> worker_service_pb2.TaskResult:
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.send(message)
        try:
            result: worker_service_pb2.TaskResult = await future
        finally:
            self._pending.pop(request_id, None)
        return result

    def _settle(
        self,
        request_id: str,
        task: run_pb2.Task,
        key: str,
        cause: BaseException | None,
        opened_at: int,
        *,
        ran: bool,
    ) -> Step:
        if task.status == _COMPLETED:
            self._settled(task, ran)
            return Step(request_id, task, output=_output(task), opened_at=opened_at)
        if task.status == _RUNNING and task.kind == run_pb2.TASK_KIND_RUN:
            # Where this try's lines start as its task counts them (a replay never
            # logs there), whatever io calls beside it have counted since.
            self._opened_at[task.id] = opened_at + _earlier(task)
            if not self._lease_held():  # the answer came before a pause past the lease
                self.halt()
                raise Suspend()
            return Step(request_id, task, run=True, opened_at=opened_at)
        if task.status == _WAITING:
            raise self.suspend()
        if task.status == _CANCELED:  # the run has ended
            self.halt()
            raise Suspend()
        if task.status == _ERRORED:
            self._settled(task, ran)
            error = task.error
            raise TaskError(error.type, error.message, error.stack, key=key) from cause
        status = convert.enum_name(run_pb2.TaskStatus, task.status, "TASK_STATUS_")
        raise TaskError("ProtocolError", f"the server answered task {key!r} with {status}", key=key)


def _earlier(task: run_pb2.Task) -> int:
    """How many boundaries a task's last try started past its open: what the try before
    it said it had crossed, with the tries before that (``try_offset``), so that each
    try's lines, and those of the tasks inside it, have numbers of their own. A task
    stored without one (by a worker that does not send it) counts one per failed try:
    ``attempts`` counts failed tries, an ERRORED task's last one included."""
    if task.try_offset:
        return task.try_offset
    if task.status == _ERRORED:
        return max(task.attempts - 1, 0)
    return task.attempts


def _output(task: run_pb2.Task) -> Any:
    return convert.from_value(task.output) if task.HasField("output") else None


# -- the handler-facing objects --------------------------------------------------------


async def _call_async(fn: Callable[[], Any], task_id: str, executor: Executor | None) -> Outcome:
    token = _parent.set(task_id)
    try:
        if inspect.iscoroutinefunction(fn):
            result = await fn()
        else:
            context = contextvars.copy_context()  # nested io calls see this task as parent
            try:
                result = await asyncio.get_running_loop().run_in_executor(executor, context.run, fn)
            except THREAD_EXITS as exc:
                return Outcome.failure(exc)
            if inspect.isawaitable(result):
                result = await result
    except (Exception, SystemExit) as exc:  # SystemExit: the function's sys.exit()
        return Outcome.failure(exc)
    finally:
        _parent.reset(token)
    return Outcome.of(result)


class _Done:
    """An awaitable that is already done: log calls work with or without ``await``."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


_DONE = _Done()


class Logger:
    """``io.logger``: lines stored with the run, in order; a replay adds no duplicates.

    ``await io.logger.info("...", {"k": 1})``; in a plain-function handler the same calls
    work without ``await``. ``data`` is any JSON value (or a pydantic model).
    """

    def __init__(self, execution: Execution, loop: asyncio.AbstractEventLoop | None = None):
        self._execution = execution
        self._loop = loop  # set for handlers in a thread: lines hop to the loop
        # An async handler's logger may still be called from a thread (a plain task
        # function run by run_task): then its lines hop to the loop it was made on.
        try:
            self._home: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._home = None
        self._home_thread = threading.get_ident()

    def _emit(self, level: job_pb2.LogLevel.ValueType, message: str, data: Any) -> _Done:
        value = None if data is None else json_value(data, what="log data")
        text = str(message)
        data_size = 0 if value is None else value.ByteSize()
        # At most 6 bytes a character as sent: printable writes a lone surrogate as \udcXX.
        if (len(text) * 6 > MAX_RESULT_BYTES - data_size) and (
            size := len(printable(text).encode()) + data_size
        ) > MAX_RESULT_BYTES:
            # As for data that large: a line no message can carry would end the stream.
            what = "log message is" if value is None else "log message and data are"
            raise ValueError(f"{what} {size} bytes, more than a message to the server can carry")
        execution, inside = self._execution, _parent.get()
        line = (level, text, value, inside)
        if self._loop is None and self._home is not None:
            if threading.get_ident() != self._home_thread:
                self._home.call_soon_threadsafe(execution.log, *line)
            else:
                execution.log(*line)
        elif self._loop is None:
            execution.log(*line)
        elif execution.halted and not (execution.suspended and inside in execution._opened_at):
            raise Suspend()
        else:  # FIFO with this thread's io calls, so lines keep their order
            self._loop.call_soon_threadsafe(execution.log, *line)
        return _DONE

    def log(self, message: str, data: Any = None) -> Awaitable[None]:
        return self._emit(job_pb2.LOG_LEVEL_LOG, message, data)

    def debug(self, message: str, data: Any = None) -> Awaitable[None]:
        return self._emit(job_pb2.LOG_LEVEL_DEBUG, message, data)

    def info(self, message: str, data: Any = None) -> Awaitable[None]:
        return self._emit(job_pb2.LOG_LEVEL_INFO, message, data)

    def warn(self, message: str, data: Any = None) -> Awaitable[None]:
        return self._emit(job_pb2.LOG_LEVEL_WARN, message, data)

    def error(self, message: str, data: Any = None) -> Awaitable[None]:
        return self._emit(job_pb2.LOG_LEVEL_ERROR, message, data)


class IO:
    """The ``io`` of an ``async def`` handler."""

    def __init__(self, execution: Execution) -> None:
        self._execution = execution
        self.logger = Logger(execution)

    @property
    def run_id(self) -> str:
        return self._execution.run_id

    async def run_task(
        self,
        key: str,
        fn: Callable[[], Any],
        *,
        name: str | None = None,
        retry: Mapping[str, Any] | None = None,
        params: Any = None,
    ) -> Any:
        """``fn()``'s JSON output, cached under ``key``: run once, replayed from the cache.

        ``fn`` takes no arguments; a coroutine function runs on the loop, a plain one in a
        thread. Anything else (a coroutine object, a function needing arguments) raises
        TypeError before the task is asked for. ``retry`` (limit, factor, min_timeout_ms,
        max_timeout_ms, randomize) says how a failure is retried; without it the job's
        policy applies, and without that a failure raises :class:`TaskError`.
        """
        execution = self._execution
        task_function(fn)
        step = await execution.open(run_spec(key, name, retry, params), _parent.get())
        while step.run:
            outcome = await _call_async(fn, step.task.id, execution.executor)
            step = await execution.complete(step, outcome)
        return step.output

    async def send_event(
        self,
        key: str,
        event: Mapping[str, Any],
        options: SendOptions | None = None,
        /,
        **more: Unpack[SendOptions],
    ) -> Event:
        """Send an event, exactly once, from the server; returns the stored event
        (with the runs it created: ids, job ids and statuses).

        Without an ``id`` the server derives one from this task, so a replay never sends
        a second event. Options (``deliver_at``, ``deliver_after``, ``account_id``) come
        as a dict after the event, as keywords, or both: ``io.send_event(key, event,
        {"deliver_after": 60})`` or ``io.send_event(key, event, deliver_after=60)``.
        Bad input raises InvalidArgument, as from ``client.send_event``, naming the task
        request's field; options that are not a dict, or an option misspelt, TypeError.
        """
        given = _send_options("send_event", options, more)
        with _arguments():
            spec = send_event_spec(key, event, _options_json(given))
        return _event_output((await self._execution.open(spec, _parent.get())).output, key)

    async def send_events(
        self,
        key: str,
        events: Sequence[Mapping[str, Any]],
        options: SendOptions | None = None,
        /,
        **more: Unpack[SendOptions],
    ) -> list[Event]:
        """Send several events atomically and in order, with the same options (as for
        :meth:`send_event`); returns the stored events."""
        given = _send_options("send_events", options, more)
        with _arguments():
            spec = send_events_spec(key, events, _options_json(given))
        return _events_output((await self._execution.open(spec, _parent.get())).output, key)

    async def wait(self, key: str, seconds: float) -> None:
        """Wait durably: the run leaves the worker and resumes here after ``seconds``."""
        await self._execution.open(wait_spec(key, seconds), _parent.get())


class SyncIO:
    """The ``io`` of a plain-function handler: the same calls, blocking its thread.

    Each call runs its protocol steps on the worker's event loop and waits; a ``run_task``
    function runs in the calling thread. A stopped run (cancel, abandon, lost stream)
    unwinds the handler at its next io call.
    """

    def __init__(self, execution: Execution, loop: asyncio.AbstractEventLoop) -> None:
        self._execution = execution
        self._loop = loop
        self._io = IO(execution)
        self.logger = Logger(execution, loop)

    @property
    def run_id(self) -> str:
        return self._execution.run_id

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop, in this thread's context (so nesting is kept), and wait."""
        execution = self._execution
        if (execution.halted and not execution.suspended) or _on_a_loop():
            coro.close()
            if execution.halted:
                execution._check_open()
            raise RuntimeError("the blocking io was called on the event loop; use `await io...`")
        context = contextvars.copy_context()

        async def in_context() -> T:
            return await asyncio.get_running_loop().create_task(coro, context=context)

        future = asyncio.run_coroutine_threadsafe(in_context(), self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._execution.halted:  # the worker stopped the run: unwind quietly
                raise Suspend() from None
            # The coroutine's own (e.g. a task function awaiting a task it cancelled):
            # the run fails with it, as an async handler's would.
            raise asyncio.CancelledError("a CancelledError escaped an io call") from None

    def _call(self, fn: Callable[[], Any], task_id: str) -> Outcome:
        token = _parent.set(task_id)
        try:
            if inspect.iscoroutinefunction(fn):
                return self._wait(_call_async(fn, task_id, self._execution.executor))
            result = fn()
            if inspect.isawaitable(result):
                result = self._wait(_awaited(result))
        except (Exception, *THREAD_EXITS) as exc:
            return Outcome.failure(exc)
        finally:
            _parent.reset(token)
        return Outcome.of(result)

    def run_task(
        self,
        key: str,
        fn: Callable[[], Any],
        *,
        name: str | None = None,
        retry: Mapping[str, Any] | None = None,
        params: Any = None,
    ) -> Any:
        """As :meth:`IO.run_task`; ``fn`` runs in this thread."""
        execution = self._execution
        task_function(fn)
        step = self._wait(execution.open(run_spec(key, name, retry, params), _parent.get()))
        while step.run:  # the function runs here, in this thread
            outcome = self._call(fn, step.task.id)
            step = self._wait(execution.complete(step, outcome))
        return step.output

    def send_event(
        self,
        key: str,
        event: Mapping[str, Any],
        options: SendOptions | None = None,
        /,
        **more: Unpack[SendOptions],
    ) -> Event:
        """As :meth:`IO.send_event`."""
        return self._wait(self._io.send_event(key, event, options, **more))

    def send_events(
        self,
        key: str,
        events: Sequence[Mapping[str, Any]],
        options: SendOptions | None = None,
        /,
        **more: Unpack[SendOptions],
    ) -> list[Event]:
        """As :meth:`IO.send_events`."""
        return self._wait(self._io.send_events(key, events, options, **more))

    def wait(self, key: str, seconds: float) -> None:
        """As :meth:`IO.wait`."""
        self._wait(self._io.wait(key, seconds))


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
