"""The io of one execution against the server's end of the protocol (a Wire)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel
from tripwire.client.convert import from_value
from tripwire.client.errors import InvalidArgument
from tripwire.client.io import (
    IO,
    DuplicateKeyError,
    Execution,
    Suspend,
    SyncIO,
    TaskError,
    json_value,
)
from tripwire.client.models import Event
from tripwire.v1 import job_pb2, run_pb2

from .test_worker_fakes import Wire, as_json, result, task, within

RUN, ATTEMPT = "run_1", 3


def make(*cached: run_pb2.Task) -> tuple[Execution, IO, Wire]:
    wire = Wire()
    execution = Execution(RUN, ATTEMPT, cached, wire)
    return execution, IO(execution), wire


def answer(execution: Execution, request_id: str, reply: run_pb2.Task) -> None:
    assert execution.resolve(result(request_id, RUN, ATTEMPT, reply))


def never_called() -> Any:
    raise AssertionError("fn must not run")


async def test_a_cached_completed_task_returns_its_output_without_the_server() -> None:
    _, io, wire = make(task("t1", "a", output={"n": 42}))
    assert await io.run_task("a", never_called) == {"n": 42}
    assert wire.drained() == []


async def test_a_cached_task_of_another_kind_is_asked_for_again() -> None:
    execution, io, wire = make(task("t1", "a", kind="WAIT", output=None))
    call = asyncio.create_task(io.run_task("a", lambda: 1))
    request = await wire.next("task")
    assert request.key == "a" and request.kind == run_pb2.TASK_KIND_RUN
    execution.halt()
    with pytest.raises(asyncio.CancelledError):
        await within(call)


async def test_running_runs_fn_then_completes_with_its_output() -> None:
    execution, io, wire = make()
    calls = []

    async def fn() -> dict[str, int]:
        calls.append(1)
        return {"sum": 3}

    call = asyncio.create_task(
        io.run_task("add", fn, name="Add", retry={"limit": 3}, params={"a": 1})
    )
    request = await wire.next("task")
    assert (request.run_id, request.attempt, request.key, request.parent_id) == (
        RUN,
        ATTEMPT,
        "add",
        "",
    )
    assert request.kind == run_pb2.TASK_KIND_RUN and request.name == "Add"
    assert request.retry.limit == 3 and not request.retry.HasField("factor")
    assert from_value(request.params) == {"a": 1}
    answer(execution, request.request_id, task("t1", "add", "RUNNING"))
    complete = await wire.next("task_complete")
    assert complete.request_id == request.request_id  # the same task, the same id
    assert (complete.run_id, complete.attempt, complete.task_id) == (RUN, ATTEMPT, "t1")
    assert from_value(complete.output) == {"sum": 3}
    answer(execution, request.request_id, task("t1", "add", output={"sum": 3}))
    assert await within(call) == {"sum": 3}
    assert calls == [1]


async def test_a_failing_fn_is_reported_and_an_errored_answer_raises_task_error() -> None:
    execution, io, wire = make()

    def fn() -> None:
        raise ValueError("bad input")

    call = asyncio.create_task(io.run_task("k", fn))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", "RUNNING"))
    complete = await wire.next("task_complete")
    assert complete.error.type == "ValueError" and complete.error.message == "bad input"
    assert "Traceback" in complete.error.stack and "bad input" in complete.error.stack
    answer(
        execution, request.request_id, task("t1", "k", "ERRORED", error=("ValueError", "bad input"))
    )
    with pytest.raises(TaskError) as error:
        await within(call)
    assert (error.value.type, error.value.message, error.value.key) == (
        "ValueError",
        "bad input",
        "k",
    )
    assert isinstance(error.value.__cause__, ValueError)


async def test_an_errored_task_on_replay_raises_task_error() -> None:
    execution, io, wire = make()
    call = asyncio.create_task(io.run_task("k", never_called))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", "ERRORED", error=("Boom", "no")))
    with pytest.raises(TaskError, match="Boom: no"):
        await within(call)


async def test_running_again_after_complete_runs_fn_again() -> None:
    execution, io, wire = make()
    outputs = iter([1, 2])
    call = asyncio.create_task(io.run_task("k", lambda: next(outputs)))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", "RUNNING"))
    assert from_value((await wire.next("task_complete")).output) == 1
    answer(execution, request.request_id, task("t1", "k", "RUNNING"))
    assert from_value((await wire.next("task_complete")).output) == 2
    answer(execution, request.request_id, task("t1", "k", output=2))
    assert await within(call) == 2


@pytest.mark.parametrize("status", ["WAITING", "CANCELED"])
async def test_waiting_suspends_and_nothing_more_is_sent(status: str) -> None:
    execution, io, wire = make()
    call = asyncio.create_task(io.run_task("k", never_called))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", status))
    with pytest.raises(Suspend):
        await within(call)
    assert execution.halted
    await io.logger.info("after the suspension")
    with pytest.raises(Suspend):
        await io.run_task("other", never_called)
    assert wire.drained() == []


async def _charging_beside_a_nap() -> tuple[Execution, IO, Wire, asyncio.Event, Any]:
    """A task function still running (until the event is set) when a wait beside
    it suspends the run: the execution, its io and wire, the event, the task call."""
    execution, io, wire = make()
    release = asyncio.Event()

    async def charge() -> str:
        await release.wait()
        await io.logger.info("charged")
        return "receipt"

    slow = asyncio.create_task(io.run_task("charge", charge))
    charge_request = await wire.next("task")
    answer(execution, charge_request.request_id, task("t1", "charge", "RUNNING"))
    nap = asyncio.create_task(io.wait("nap", 60))
    nap_request = await wire.next("task")
    answer(execution, nap_request.request_id, task("t2", "nap", "WAITING", kind="WAIT"))
    with pytest.raises(Suspend):
        await within(nap)
    return execution, io, wire, release, slow


async def test_a_function_running_when_the_run_is_suspended_still_reports_its_outcome() -> None:
    execution, io, wire, release, slow = await _charging_beside_a_nap()
    execution.end()  # the handler unwound; its function beside the wait goes on
    await io.logger.info("a line outside any task is not sent")
    release.set()
    with pytest.raises(Suspend):  # nobody waits for the answer
        await within(slow)
    line, complete = wire.drained()
    assert (line.log.message, line.log.attempt) == ("charged", ATTEMPT)
    assert complete.task_complete.task_id == "t1"
    assert from_value(complete.task_complete.output) == "receipt"
    with pytest.raises(Suspend):  # nothing new starts: it unwinds, as the handler did
        await io.run_task("other", never_called)
    assert wire.drained() == []


async def test_a_run_stopped_while_suspended_sends_nothing_more() -> None:
    execution, _, wire, release, slow = await _charging_beside_a_nap()
    execution.halt()  # cancelled, abandoned, or the stream is lost
    release.set()
    with pytest.raises(Suspend):
        await within(slow)
    assert wire.drained() == []


async def test_waiting_after_a_failure_suspends_for_the_retry() -> None:
    execution, io, wire = make()

    def fn() -> None:
        raise RuntimeError("flaky")

    call = asyncio.create_task(io.run_task("k", fn, retry={"limit": 2}))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", "RUNNING"))
    assert (await wire.next("task_complete")).error.type == "RuntimeError"
    answer(execution, request.request_id, task("t1", "k", "WAITING"))
    with pytest.raises(Suspend):
        await within(call)


async def test_a_key_used_twice_raises_naming_it() -> None:
    _, io, _ = make(task("t1", "same", output=1), task("t2", "same", parent="p", output=2))
    assert await io.run_task("same", never_called) == 1
    with pytest.raises(DuplicateKeyError, match="'same'"):
        await io.run_task("same", never_called)
    with pytest.raises(DuplicateKeyError, match="'same'"):
        await io.send_event("same", {"name": "x"})


async def test_nested_tasks_have_the_outer_task_as_parent() -> None:
    # "inner" under t1 is cached; "inner" at the top level is another task.
    execution, io, wire = make(task("t2", "inner", parent="t1", output="cached"))

    async def outer() -> str:
        inner = await io.run_task("inner", never_called)
        deeper = await io.run_task("deeper", lambda: "ran")
        return f"{inner}+{deeper}"

    call = asyncio.create_task(io.run_task("outer", outer))
    request = await wire.next("task")
    assert request.key == "outer" and request.parent_id == ""
    answer(execution, request.request_id, task("t1", "outer", "RUNNING"))
    deeper = await wire.next("task")
    assert deeper.key == "deeper" and deeper.parent_id == "t1"
    answer(execution, deeper.request_id, task("t3", "deeper", "RUNNING"))
    assert from_value((await wire.next("task_complete")).output) == "ran"
    answer(execution, deeper.request_id, task("t3", "deeper", output="ran"))
    complete = await wire.next("task_complete")
    assert complete.task_id == "t1" and from_value(complete.output) == "cached+ran"
    answer(execution, request.request_id, task("t1", "outer", output="cached+ran"))
    assert await within(call) == "cached+ran"
    top = asyncio.create_task(io.run_task("inner", lambda: 0))  # not a duplicate: no parent
    assert (await wire.next("task")).parent_id == ""
    top.cancel()


async def _until(wire: Wire, kind: str, logs: dict[str, int]) -> Any:
    """The next message of ``kind``, noting the log lines sent before it."""
    while True:
        message = await within(wire.sent.get())
        got = message.WhichOneof("message")
        if got == "log":
            logs[message.log.message] = message.log.seq
            continue
        assert got == kind, message
        return getattr(message, kind)


def _logs(wire: Wire, logs: dict[str, int]) -> dict[str, int]:
    logs.update((m.log.message, m.log.seq) for m in wire.drained() if m.HasField("log"))
    return logs


async def test_a_replay_gives_every_log_line_its_first_number() -> None:
    """Lines inside cached tasks are not logged again on a replay, yet the lines
    after them keep their numbers: nothing is stored twice, nothing is lost."""

    async def handler(io: IO) -> None:
        await io.logger.info("start")

        async def outer() -> str:
            await io.logger.info("inside outer")

            async def inner() -> str:
                await io.logger.info("inside inner")
                return "i"

            await io.run_task("inner", inner)
            await io.logger.info("outer after inner")
            return "o"

        await io.run_task("outer", outer)
        await io.logger.info("after outer")
        await io.run_task("other", lambda: "x")
        await io.logger.info("end")

    # The first execution: every task runs.
    execution, io, wire = make()
    first: dict[str, int] = {}
    call = asyncio.create_task(handler(io))
    steps = [
        ("task", "t1", "outer", ""),
        ("task", "t2", "inner", "t1"),
        ("task_complete", "t2", "inner", "t1"),
        ("task_complete", "t1", "outer", ""),
        ("task", "t3", "other", ""),
        ("task_complete", "t3", "other", ""),
    ]
    for kind, task_id, key, parent in steps:
        sent = await _until(wire, kind, first)
        status = "RUNNING" if kind == "task" else "COMPLETED"
        answer(execution, sent.request_id, task(task_id, key, status, parent=parent))
    await within(call)
    _logs(wire, first)
    assert list(first) == [
        "start",
        "inside outer",
        "inside inner",
        "outer after inner",
        "after outer",
        "end",
    ]
    assert list(first.values()) == sorted(first.values())  # stored in order

    # A replay with all three cached: only the top-level lines, with their numbers.
    _, io, wire = make(task("t1", "outer"), task("t2", "inner", parent="t1"), task("t3", "other"))
    await within(asyncio.create_task(handler(io)))
    again = _logs(wire, {})
    assert again == {line: first[line] for line in ("start", "after outer", "end")}

    # A replay with only "outer" cached (the first execution stopped in "other").
    execution, io, wire = make(task("t1", "outer"), task("t2", "inner", parent="t1"))
    again = {}
    call = asyncio.create_task(handler(io))
    request = await _until(wire, "task", again)
    answer(execution, request.request_id, task("t3", "other", "RUNNING"))
    complete = await _until(wire, "task_complete", again)
    answer(execution, complete.request_id, task("t3", "other", output="x"))
    await within(call)
    assert _logs(wire, again) == {line: first[line] for line in ("start", "after outer", "end")}


class _Tasks:
    """The server's task and log rules, enough to take a run through its executions:
    a RUN task starts RUNNING; a failure counts an attempt and waits for a retry
    while the task's policy allows one (ending the execution), else is ERRORED; a
    log line is stored once per seq. Each execution gets every stored task cached."""

    def __init__(self) -> None:
        self.tasks: dict[tuple[str, str], run_pb2.Task] = {}
        self.logs: dict[int, str] = {}
        self.attempt = 0

    async def execute(self, handler: Any) -> bool:
        """One execution of ``handler(io)``: True if it returned, False if suspended."""
        self.attempt += 1
        wire = Wire()
        execution = Execution(RUN, self.attempt, list(self.tasks.values()), wire)
        call = asyncio.create_task(handler(IO(execution)))
        while True:
            message = asyncio.create_task(wire.sent.get())
            await within(asyncio.wait({call, message}, return_when=asyncio.FIRST_COMPLETED))
            if not message.done():
                message.cancel()
                break
            self._answer(execution, message.result())
        for left in wire.drained():
            self._answer(execution, left)
        try:
            await call
        except Suspend:
            return False
        return True

    def _answer(self, execution: Execution, message: Any) -> None:
        kind = message.WhichOneof("message")
        if kind == "log":
            line = message.log
            assert self.logs.setdefault(line.seq, line.message) == line.message, line
            return
        if kind == "task":
            ask = message.task
            stored = self.tasks.get((ask.parent_id, ask.key))
            if stored is None:
                stored = run_pb2.Task(
                    id=f"t{len(self.tasks) + 1}",
                    key=ask.key,
                    parent_id=ask.parent_id,
                    kind=ask.kind,
                    status=run_pb2.TASK_STATUS_RUNNING,
                    retry=ask.retry,
                )
                self.tasks[ask.parent_id, ask.key] = stored
            elif stored.status == run_pb2.TASK_STATUS_WAITING:
                stored.status = run_pb2.TASK_STATUS_RUNNING  # the retry is due
            request_id = ask.request_id
        else:
            done = message.task_complete
            (stored,) = (t for t in self.tasks.values() if t.id == done.task_id)
            if done.HasField("error"):
                stored.attempts += 1
                stored.error.CopyFrom(done.error)
                retry = stored.HasField("retry") and stored.attempts < stored.retry.limit
                stored.status = (
                    run_pb2.TASK_STATUS_WAITING if retry else run_pb2.TASK_STATUS_ERRORED
                )
            else:
                stored.status = run_pb2.TASK_STATUS_COMPLETED
                stored.output.CopyFrom(done.output)
            request_id = done.request_id
        reply = run_pb2.Task()
        reply.CopyFrom(stored)  # a snapshot, as the wire would carry it
        assert execution.resolve(result(request_id, RUN, execution.attempt, reply))


@pytest.mark.parametrize("outer_fails", [False, True], ids=["outer-completes", "outer-errors"])
async def test_a_replay_numbers_lines_after_retried_nested_tasks_as_first_sent(
    outer_fails: bool,
) -> None:
    """A nested task's retries and final failure are boundaries the replay of its
    parent (from the cache, or ERRORED from the server) must count too."""
    failures = {"flaky": 1, "doomed": 2}

    def failing(key: str) -> Any:
        def fn() -> str:
            if failures[key]:
                failures[key] -= 1
                raise ConnectionError(f"{key} fails")
            return key

        return fn

    async def handler(io: IO) -> None:
        async def outer() -> str:
            await io.logger.info("in outer")
            await io.run_task("flaky", failing("flaky"), retry={"limit": 3})
            with contextlib.suppress(TaskError):
                await io.run_task("doomed", failing("doomed"), retry={"limit": 2})
            if outer_fails:
                raise RuntimeError("outer fails for good")
            return "o"

        with contextlib.suppress(TaskError):
            await io.run_task("outer", outer)
        await io.logger.info("after outer")
        await io.run_task("other", lambda: "x")
        await io.logger.info("end")

    server = _Tasks()
    while not await server.execute(handler):
        assert server.attempt < 5
    assert server.attempt == 3  # flaky's retry, then doomed's
    first = dict(server.logs)
    assert await server.execute(handler)  # a replay: every task cached or settled
    assert server.logs == first
    assert [server.logs[seq] for seq in sorted(server.logs)] == ["in outer", "after outer", "end"]


async def test_a_plain_task_function_may_log_through_the_async_io() -> None:
    execution, io, wire = make()
    threads: list[int] = []

    def fn() -> int:
        threads.append(threading.get_ident())
        io.logger.info("from a thread")  # no await: the line hops to the event loop
        return 1

    call = asyncio.create_task(io.run_task("t", fn))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "t", "RUNNING"))
    assert (await wire.next("log")).message == "from a thread"  # before the completion
    complete = await wire.next("task_complete")
    answer(execution, complete.request_id, task("t1", "t", output=1))
    assert await within(call) == 1
    assert threads and threads[0] != threading.get_ident()


async def test_log_lines_are_numbered_per_execution() -> None:
    _, io, wire = make()
    await io.logger.log("one")
    await io.logger.debug("two", {"k": [1, 2]})
    await io.logger.info("three")
    await io.logger.warn("four")
    await io.logger.error("five", "text")
    logs = [m.log for m in wire.drained()]
    assert [log.seq for log in logs] == [1, 2, 3, 4, 5]
    assert [log.level for log in logs] == [
        job_pb2.LOG_LEVEL_LOG,
        job_pb2.LOG_LEVEL_DEBUG,
        job_pb2.LOG_LEVEL_INFO,
        job_pb2.LOG_LEVEL_WARN,
        job_pb2.LOG_LEVEL_ERROR,
    ]
    assert [log.message for log in logs] == ["one", "two", "three", "four", "five"]
    assert not logs[0].HasField("data") and from_value(logs[1].data) == {"k": [1, 2]}
    assert all((log.run_id, log.attempt) == (RUN, ATTEMPT) for log in logs)


async def test_send_event_asks_the_server_with_the_event_and_options() -> None:
    execution, io, wire = make()
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    call = asyncio.create_task(
        io.send_event(
            "send-event",
            {"name": "new.user", "payload": {"userId": "u_1"}, "context": {"c": 1}},
            deliver_at=when,
            deliver_after=60,
            account_id="acc",
        )
    )
    request = await wire.next("task")
    assert request.kind == run_pb2.TASK_KIND_SEND_EVENT and request.key == "send-event"
    assert from_value(request.params) == {
        "event": {"name": "new.user", "payload": {"userId": "u_1"}, "context": {"c": 1}},
        "options": {"deliverAt": "2030-01-02T03:04:05Z", "deliverAfter": 60, "accountId": "acc"},
    }
    stored = {
        "id": "evt_1",
        "name": "new.user",
        "payload": {"userId": "u_1"},
        "status": "EVENT_STATUS_DELIVERED",
        "deliveredAt": "2030-01-02T03:04:05.250Z",
        "runs": [{"id": "run_1", "jobId": "welcome", "status": "RUN_STATUS_QUEUED"}],
        "someFieldOfALaterServer": 1,
    }
    answer(
        execution, request.request_id, task("t1", "send-event", kind="SEND_EVENT", output=stored)
    )
    sent = await within(call)  # the client's Event, as client.send_event gives
    assert isinstance(sent, Event)
    assert (sent.id, sent.name, sent.payload, sent.status) == (
        "evt_1",
        "new.user",
        {"userId": "u_1"},
        "DELIVERED",
    )
    assert sent.delivered_at == datetime(2030, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC)
    assert [(r.id, r.job_id, r.status) for r in sent.runs] == [("run_1", "welcome", "QUEUED")]


async def test_send_event_keeps_a_given_id_and_timestamp_and_sends_empty_options() -> None:
    execution, io, wire = make()
    when = datetime(2024, 5, 6, tzinfo=UTC)
    event = {"name": "n", "id": "my-id", "timestamp": when, "source": "billing"}
    call = asyncio.create_task(io.send_event("k", event))
    params = from_value((await wire.next("task")).params)
    assert params == {
        "event": {
            "name": "n",
            "id": "my-id",
            "timestamp": "2024-05-06T00:00:00Z",
            "source": "billing",
        },
        "options": {},
    }
    execution.halt()
    with pytest.raises(asyncio.CancelledError):
        await within(call)


async def test_send_options_come_as_a_dict_after_the_event_or_as_keywords() -> None:
    """As SPEC writes it, ``io.send_event(key, event, options)``; as the client takes it."""
    when = datetime(2030, 1, 2, tzinfo=UTC)
    calls = [
        lambda io: io.send_event("a", {"name": "n"}, {"deliver_after": 60}),
        lambda io: io.send_event("b", {"name": "n"}, {"deliver_after": 5}, deliver_after=60),
        lambda io: io.send_events("c", [{"name": "n"}], {"deliver_after": 60}),
        lambda io: io.send_events("d", [{"name": "n"}], {"deliver_at": when}, deliver_after=60),
    ]
    expected = [
        {"deliverAfter": 60},
        {"deliverAfter": 60},  # keywords win
        {"deliverAfter": 60},
        {"deliverAt": "2030-01-02T00:00:00Z", "deliverAfter": 60},
    ]
    execution, io, wire = make()
    pending = [asyncio.create_task(call(io)) for call in calls]
    sent = [from_value((await wire.next("task")).params)["options"] for _ in calls]
    assert sent == expected
    execution.halt()
    await asyncio.wait(pending)


async def test_sync_io_takes_send_options_as_a_dict_too() -> None:
    execution, _, wire = make()
    loop = asyncio.get_running_loop()
    sync_io = SyncIO(execution, loop)
    call = loop.run_in_executor(None, sync_io.send_event, "k", {"name": "n"}, {"deliver_after": 9})
    assert from_value((await wire.next("task")).params)["options"] == {"deliverAfter": 9}
    execution.halt()
    with pytest.raises(Suspend):
        await within(call)


async def test_send_events_asks_once_for_the_batch() -> None:
    execution, io, wire = make()
    call = asyncio.create_task(
        io.send_events("batch", [{"name": "a"}, {"name": "b"}], deliver_after=5)
    )
    request = await wire.next("task")
    assert request.kind == run_pb2.TASK_KIND_SEND_EVENTS
    assert from_value(request.params) == {
        "events": [{"name": "a"}, {"name": "b"}],
        "options": {"deliverAfter": 5},
    }
    stored = [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]
    answer(execution, request.request_id, task("t1", "batch", kind="SEND_EVENTS", output=stored))
    assert [(e.id, e.name) for e in await within(call)] == [("1", "a"), ("2", "b")]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda io: io.wait("k", -1), "task.params.seconds: must be a number of seconds >= 0"),
        (lambda io: io.wait("k", 10**400), "task.params.seconds: must be a number of seconds"),
        (lambda io: io.wait("k", 2**60), "task.params.seconds: must be a number of seconds"),
        (lambda io: io.wait("k", math.nan), "task.params.seconds: must be a number of seconds"),
        (lambda io: io.wait("k", "1"), "task.params.seconds: must be a number, got '1'"),
        (lambda io: io.wait("", 1), "task.key: is required: every io call needs a cache key"),
        (lambda io: io.run_task("", lambda: 1), "task.key: is required"),
        (lambda io: io.run_task(3, lambda: 1), "task.key: must be a string, got int"),
        (lambda io: io.run_task("k" * 1025, lambda: 1), "task.key: is longer than 1024"),
        (lambda io: io.run_task("k", lambda: 1, name="n" * 1025), "task.name: is longer than 1024"),
        (lambda io: io.wait("k" * 1025, 1), "task.key: is longer than 1024"),
        (
            lambda io: io.run_task("k", lambda: 1, retry={"tries": 1}),
            "task.retry.tries: is not a retry option",
        ),
        (lambda io: io.run_task("k", lambda: 1, retry={"limit": 0}), "task.retry.limit: "),
        (
            lambda io: io.run_task("k", lambda: 1, params={"x": math.nan}),
            "task.params.x: holds nan",
        ),
        (lambda io: io.run_task("k", lambda: 1, params=object()), "task.params: object is not"),
        (lambda io: io.wait("k", 10**5000), "task.params.seconds: must be a number of seconds"),
        (lambda io: io.wait("k", -(10**5000)), "task.params.seconds: must be a number of seconds"),
        (
            lambda io: io.run_task("k", lambda: 1, params={"x": "\ud800"}),
            "task.params: text is not valid Unicode",
        ),
    ],
)
async def test_bad_io_calls_raise_before_anything_is_sent(call: Any, error: str) -> None:
    """As every io call: InvalidArgument naming the task request's field."""
    _, io, wire = make()
    with pytest.raises(InvalidArgument) as info:
        await within(call(io))
    assert str(info.value).startswith(error), str(info.value)
    assert wire.drained() == []


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda io: io.send_event("k", {"payload": {}}), "task.params.event.name: is required"),
        (
            lambda io: io.send_event("k", {"name": "n", "extra": 1}),
            "task.params.event.extra: is not an event (known: ",
        ),
        (
            lambda io: io.send_event("k", {"name": "n"}, deliver_after=-1),
            "task.params.options.deliver_after: must not be negative",
        ),
        (
            lambda io: io.send_event("k", {"name": "n"}, deliver_after=2**62),
            "task.params.options.deliver_after: is past the year 9999",
        ),
        (
            lambda io: io.send_event("", {"name": "n"}),
            "task.key: is required: every io call needs a cache key",
        ),
        (lambda io: io.send_event(3, {"name": "n"}), "task.key: must be a string, got int"),
        (lambda io: io.send_event("k" * 1025, {"name": "n"}), "task.key: is longer than 1024"),
        (lambda io: io.send_events("k", []), "task.params.events: must hold at least one event"),
        (lambda io: io.send_events("k", {"name": "n"}), "task.params.events: must be a list of"),
        (
            lambda io: io.send_events("k", [{"name": "n"}, {"name": ""}]),
            "task.params.events[1].name: is required",
        ),
    ],
)
async def test_bad_events_raise_invalid_argument_as_from_the_client(call: Any, error: str) -> None:
    """Named as the server would name the field of the task request (the same check
    in client.send_event names its own request's: event.name)."""
    _, io, wire = make()
    with pytest.raises(InvalidArgument) as info:
        await within(call(io))
    assert str(info.value).startswith(error)
    assert wire.drained() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda io: io.send_event("k", {"name": "n"}, deliver_in=3),
        lambda io: io.send_event("k", {"name": "n"}, {"deliver_in": 3}),
        lambda io: io.send_events("k", [{"name": "n"}], deliver_in=3),
        lambda io: io.send_event("k", {"name": "n"}, 60),
    ],
)
async def test_send_options_are_taken_as_client_send_event_takes_them(call: Any) -> None:
    """A dict, keywords or both; not a dict, or an option misspelt (a keyword or a
    key of the dict), is a TypeError, as from client.send_event and any Python call."""
    _, io, wire = make()
    with pytest.raises(TypeError) as info:
        await within(call(io))
    assert not isinstance(info.value, InvalidArgument)
    message = str(info.value)
    assert "unexpected keyword argument 'deliver_in'" in message or (
        message.startswith("options must be a dict")
    )
    assert wire.drained() == []


async def test_an_error_of_the_applications_own_code_in_params_is_its_own() -> None:
    """Converting params runs a pydantic model's serializers: what they raise is the
    application's error, which its handler may catch as such, not a refused argument."""
    from pydantic import BaseModel, field_serializer

    class Broken(BaseModel):
        x: int

        @field_serializer("x")
        def serialize(self, value: int) -> int:
            raise ValueError("a bug of the serializer")

    _, io, wire = make()
    with pytest.raises(ValueError, match="a bug of the serializer") as info:
        await within(io.run_task("k", lambda: 1, params=Broken(x=1)))
    assert not isinstance(info.value, InvalidArgument)
    assert wire.drained() == []


async def test_wait_suspends_until_the_server_resumes_the_run() -> None:
    execution, io, wire = make()
    call = asyncio.create_task(io.wait("nap", 2.5))
    request = await wire.next("task")
    assert request.kind == run_pb2.TASK_KIND_WAIT and from_value(request.params) == {"seconds": 2.5}
    answer(execution, request.request_id, task("t1", "nap", "WAITING", kind="WAIT"))
    with pytest.raises(Suspend):
        await within(call)
    # The next execution finds the wait completed in its cache and goes on.
    _, replay, wire2 = make(task("t1", "nap", kind="WAIT", output=None))
    await replay.wait("nap", 2.5)
    assert wire2.drained() == []


async def test_a_rejected_request_raises_the_typed_error_in_the_handler() -> None:
    execution, io, wire = make()
    call = asyncio.create_task(io.run_task("k", never_called))
    request = await wire.next("task")
    assert execution.reject(request.request_id, InvalidArgument("task.params: nope"))
    with pytest.raises(InvalidArgument, match="nope"):
        await within(call)


async def test_halting_unwinds_waiting_calls_and_silences_the_execution() -> None:
    execution, io, wire = make()
    call = asyncio.create_task(io.run_task("k", never_called))
    await wire.next("task")
    execution.halt()
    with pytest.raises(asyncio.CancelledError):
        await within(call)
    await io.logger.info("nobody hears this")
    assert wire.drained() == []


async def test_outputs_are_json_and_pydantic_models_are_dumped() -> None:
    class Point(BaseModel):
        x: int
        when: datetime

    execution, io, wire = make()
    call = asyncio.create_task(
        io.run_task("p", lambda: Point(x=1, when=datetime(2024, 1, 1, tzinfo=UTC)))
    )
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "p", "RUNNING"))
    complete = await wire.next("task_complete")
    assert from_value(complete.output) == {"x": 1, "when": "2024-01-01T00:00:00Z"}
    execution.halt()
    with pytest.raises(asyncio.CancelledError):
        await within(call)


async def test_a_non_json_output_is_reported_as_the_task_failing() -> None:
    execution, io, wire = make()
    call = asyncio.create_task(io.run_task("s", lambda: b"raw"))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "s", "RUNNING"))
    complete = await wire.next("task_complete")
    assert (
        complete.error.type == "TypeError" and "bytes is not a JSON value" in complete.error.message
    )
    execution.halt()
    with pytest.raises(asyncio.CancelledError):
        await within(call)


async def test_a_key_reused_inside_a_task_function_fails_it_without_retries() -> None:
    """Running it again would reuse the key again: the failure is final, where any
    other exception from the function is retried by its policy."""
    execution, io, wire = make(task("t2", "inner", parent="t1", output=1))

    async def outer() -> None:
        await io.run_task("inner", never_called)
        await io.run_task("inner", never_called)

    call = asyncio.create_task(io.run_task("outer", outer, retry={"limit": 5}))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "outer", "RUNNING"))
    complete = await wire.next("task_complete")
    assert complete.error.type == "DuplicateKeyError" and "'inner'" in complete.error.message
    assert complete.final
    execution.halt()
    with pytest.raises(asyncio.CancelledError):
        await within(call)

    execution, io, wire = make()
    call = asyncio.create_task(io.run_task("flaky", lambda: 1 / 0, retry={"limit": 5}))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "flaky", "RUNNING"))
    complete = await wire.next("task_complete")
    assert complete.error.type == "ZeroDivisionError" and not complete.final
    execution.halt()
    with pytest.raises(asyncio.CancelledError):
        await within(call)


@pytest.mark.parametrize("exit", [SystemExit(3), KeyboardInterrupt()], ids=type)
async def test_an_exit_raised_in_a_task_functions_thread_fails_the_task(
    exit: BaseException,
) -> None:
    execution, io, wire = make()

    def leaving() -> None:
        raise exit

    call = asyncio.create_task(io.run_task("k", leaving))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", "RUNNING"))
    complete = await wire.next("task_complete")
    assert complete.error.type == type(exit).__name__
    answer(
        execution, request.request_id, task("t1", "k", "ERRORED", error=(type(exit).__name__, ""))
    )
    with pytest.raises(TaskError):
        await within(call)


async def test_sys_exit_in_a_coroutine_task_function_fails_the_task_not_the_worker() -> None:
    execution, io, wire = make()

    async def leaving() -> None:
        sys.exit(4)

    call = asyncio.create_task(io.run_task("k", leaving))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", "RUNNING"))
    complete = await wire.next("task_complete")
    assert (complete.error.type, complete.error.message) == ("SystemExit", "4")
    answer(execution, request.request_id, task("t1", "k", "ERRORED", error=("SystemExit", "4")))
    with pytest.raises(TaskError):
        await within(call)


async def test_a_plain_fn_runs_in_a_thread_and_a_coroutine_fn_on_the_loop() -> None:
    execution, io, wire = make()
    loop_thread = threading.get_ident()
    threads: dict[str, int] = {}

    def blocking() -> int:
        threads["plain"] = threading.get_ident()
        return 1

    async def on_loop() -> int:
        threads["async"] = threading.get_ident()
        return 2

    for key, fn in (("plain", blocking), ("async", on_loop)):
        call = asyncio.create_task(io.run_task(key, fn))
        request = await wire.next("task")
        answer(execution, request.request_id, task(key, key, "RUNNING"))
        output = from_value((await wire.next("task_complete")).output)
        answer(execution, request.request_id, task(key, key, output=output))
        await within(call)
    assert threads["plain"] != loop_thread and threads["async"] == loop_thread


async def test_sync_io_in_a_handler_thread_runs_fns_inline_and_keeps_nesting() -> None:
    execution, _, wire = make()
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}

    def handler() -> Any:
        sync_io = SyncIO(execution, loop)
        seen["handler"] = threading.get_ident()

        def outer() -> str:
            seen["outer"] = threading.get_ident()
            return str(sync_io.run_task("inner", lambda: "deep")) + "!"

        sync_io.logger.info("start")
        return sync_io.run_task("outer", outer)

    thread_call = loop.run_in_executor(None, handler)
    assert (await wire.next("log")).seq == 1
    outer = await wire.next("task")
    answer(execution, outer.request_id, task("t1", "outer", "RUNNING"))
    inner = await wire.next("task")
    assert inner.parent_id == "t1"
    answer(execution, inner.request_id, task("t2", "inner", "RUNNING"))
    assert from_value((await wire.next("task_complete")).output) == "deep"
    answer(execution, inner.request_id, task("t2", "inner", output="deep"))
    assert from_value((await wire.next("task_complete")).output) == "deep!"
    answer(execution, outer.request_id, task("t1", "outer", output="deep!"))
    assert await within(thread_call) == "deep!"
    assert seen["outer"] == seen["handler"] != threading.get_ident()


async def test_sync_io_reports_an_exit_raised_by_a_task_function_as_its_failure() -> None:
    execution, _, wire = make()
    loop = asyncio.get_running_loop()

    def leaving() -> None:
        raise SystemExit(3)

    def handler() -> None:
        SyncIO(execution, loop).run_task("k", leaving)

    thread_call = loop.run_in_executor(None, handler)
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", "RUNNING"))
    assert (await wire.next("task_complete")).error.type == "SystemExit"
    answer(execution, request.request_id, task("t1", "k", "ERRORED", error=("SystemExit", "3")))
    with pytest.raises(TaskError):
        await within(thread_call)


async def test_sync_io_unwinds_its_thread_when_the_run_is_stopped() -> None:
    execution, _, wire = make()
    loop = asyncio.get_running_loop()

    def handler() -> None:
        SyncIO(execution, loop).run_task("k", never_called)

    thread_call = loop.run_in_executor(None, handler)
    await wire.next("task")
    execution.halt()
    with pytest.raises(Suspend):
        await within(thread_call)


async def fetch(user_id: str) -> str:
    return user_id


@pytest.mark.parametrize(
    ("make_fn", "fragment"),
    [
        (lambda: fetch("u_1"), r"got a coroutine object: pass the function, not its call"),
        (lambda: fetch, r"'fetch' takes \(user_id: .*: pass its arguments in a lambda"),
        (lambda: {"n": 1}, r"must be a function called with no arguments, got dict"),
        (lambda: lambda *, k: k, r"<lambda>' takes \(\*, k\): pass its arguments"),
        (lambda: lambda a, b=1: a, r"<lambda>' takes \(a, b=1\): pass its arguments"),
    ],
)
async def test_run_task_refuses_a_function_it_cannot_call_before_asking_for_the_task(
    make_fn: Any, fragment: str
) -> None:
    # It would be stored, then fail each of its retries saying only "'coroutine'
    # object is not callable" or "missing 1 required positional argument".
    execution, io, wire = make()
    loop = asyncio.get_running_loop()
    with pytest.raises(TypeError, match=fragment):
        await within(io.run_task("k", make_fn(), retry={"limit": 5}))
    thread_call = loop.run_in_executor(
        None, lambda: SyncIO(execution, loop).run_task("k", make_fn())
    )
    with pytest.raises(TypeError, match=fragment):
        await within(thread_call)
    assert wire.drained() == []


async def test_run_task_takes_any_function_called_with_no_arguments() -> None:
    _, io, _ = make(
        task("t1", "a", output=1),
        task("t2", "b", output=2),
        task("t3", "c", output=3),
        task("t4", "d", output=4),
        task("t5", "e", output=5),
    )

    class Fetch:
        def __call__(self, user_id: str = "u_1") -> str:
            return user_id

    assert await io.run_task("a", functools.partial(fetch, "u_1")) == 1
    assert await io.run_task("b", Fetch()) == 2
    assert await io.run_task("c", dict) == 3  # a class, called with no arguments
    assert await io.run_task("d", lambda a=1, *rest, k=2: a) == 4  # defaults enough
    assert await io.run_task("e", lambda *args, **kwargs: 5) == 5


async def test_sync_io_refuses_to_block_the_event_loop() -> None:
    execution, _, _ = make()
    with pytest.raises(RuntimeError, match="event loop"):
        SyncIO(execution, asyncio.get_running_loop()).wait("k", 1)


def test_task_error_reads_well() -> None:
    error = TaskError("ValueError", "bad", "stack", key="k")
    assert str(error) == "task 'k' failed: ValueError: bad"
    assert as_json(run_pb2.ErrorInfo(type="x")) == {"type": "x"}


@pytest.mark.parametrize(
    ("kind", "output"),
    [
        ("SEND_EVENT", "garbage"),
        ("SEND_EVENT", 42),
        ("SEND_EVENT", [{"id": "e"}]),
        ("SEND_EVENTS", [7]),
    ],
)
async def test_a_send_tasks_output_that_is_no_event_fails_where_it_is_awaited(
    kind: str, output: Any
) -> None:
    # Never stored by the server, which writes these outputs; say so clearly if it is.
    execution, io, wire = make()
    if kind == "SEND_EVENT":
        call = asyncio.create_task(io.send_event("k", {"name": "n"}))
    else:
        call = asyncio.create_task(io.send_events("k", [{"name": "n"}]))
    request = await wire.next("task")
    answer(execution, request.request_id, task("t1", "k", kind=kind, output=output))
    with pytest.raises(TaskError) as err:
        await within(call)
    assert err.value.type == "InvalidOutput" and err.value.key == "k"
    assert "the stored output of a send task is not an event" in err.value.message


def test_the_clients_models_anywhere_in_an_output_are_stored_as_json() -> None:
    sent = Event(
        id="e1",
        name="n",
        source="trigger.dev",
        payload={},
        context={},
        timestamp=None,
        deliver_at=None,
        delivered_at=None,
        cancelled_at=None,
        deduplicated=False,
        status="PENDING",
        account_id=None,
        created_at=None,
    )
    stored = from_value(json_value({"sent": [sent, sent], "n": 1}, what="output"))
    assert stored["n"] == 1 and [e["id"] for e in stored["sent"]] == ["e1", "e1"]
    assert stored["sent"][0]["status"] == "PENDING"


def test_the_event_io_send_event_returns_can_be_returned_as_an_output() -> None:
    sent = Event(
        id="e1",
        name="new.user",
        source="trigger.dev",
        payload={"userId": "u_1"},
        context={},
        timestamp=datetime(2024, 5, 1, 9, tzinfo=UTC),
        deliver_at=None,
        delivered_at=datetime(2024, 5, 1, 9, 0, 1, 500, tzinfo=UTC),
        cancelled_at=None,
        deduplicated=False,
        status="DELIVERED",
        account_id=None,
        created_at=None,
    )
    assert from_value(json_value(sent, what="the handler's return value")) == {
        "id": "e1",
        "name": "new.user",
        "source": "trigger.dev",
        "payload": {"userId": "u_1"},
        "context": {},
        "timestamp": "2024-05-01T09:00:00.000000Z",
        "deliver_at": None,
        "delivered_at": "2024-05-01T09:00:01.000500Z",
        "cancelled_at": None,
        "deduplicated": False,
        "status": "DELIVERED",
        "account_id": None,
        "created_at": None,
        "runs": [],
    }
