"""The worker against a fake RunJob stream: hello, runs, cancel, drain, reconnect."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from pydantic import BaseModel
from tripwire.client import Client
from tripwire.client import worker as worker_module
from tripwire.client.convert import from_value, to_value
from tripwire.client.errors import InvalidArgument, Unauthenticated
from tripwire.client.io import IO, RunEnded, SyncIO
from tripwire.client.jobs import JobDefinition, RunContext, define_job
from tripwire.client.models import event_trigger, invoke_trigger
from tripwire.client.worker import Backoff, Worker
from tripwire.v1 import event_pb2, run_pb2, worker_service_pb2

from ..conftest import eventually
from .test_worker_fakes import FakeServer, FakeSleep, FakeStream, result, task, within


class NewUser(BaseModel):
    userId: str


def run_request(
    run_id: str = "run_1",
    job_id: str = "job-1",
    *,
    attempt: int = 1,
    payload: Any = None,
    cached: tuple[run_pb2.Task, ...] = (),
    complete: bool = True,
) -> worker_service_pb2.RunRequest:
    request = worker_service_pb2.RunRequest(
        run=run_pb2.Run(id=run_id, job_id=job_id, job_version="1.0.0", attempt=attempt),
        event=event_pb2.Event(id="evt_1", name="new.user"),
        cached_tasks=cached,
        cached_tasks_complete=complete,
    )
    if payload is not None:
        request.event.payload.CopyFrom(to_value(payload))
    request.job.id, request.job.version = job_id, "1.0.0"
    request.ctx.CopyFrom(to_value({"environment": "default", "run": {"id": run_id}}))
    return request


@dataclass
class Harness:
    worker: Worker
    server: FakeServer
    sleep: FakeSleep
    running: asyncio.Task[None]

    async def connect(self, heartbeat_interval_ms: int = 600_000) -> FakeStream:
        stream = await self.server.next_stream()
        await stream.expect("hello")
        stream.welcome(heartbeat_interval_ms)
        await within(self.worker.wait_connected())
        # The heartbeat task asks for its first sleep once connected.
        delay, _ = await self.sleep.next()
        assert delay == heartbeat_interval_ms / 1000
        return stream


Make = Callable[..., Any]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    harnesses: list[Harness] = []

    async def start(*jobs: JobDefinition, **options: Any) -> Harness:
        server, sleep = FakeServer(), FakeSleep()
        options.setdefault("shutdown_timeout", 2.0)
        worker = Worker(
            Client("test"), list(jobs), worker_id="w1", connect=server, sleep=sleep, **options
        )
        running = asyncio.create_task(worker.run())
        harness = Harness(worker, server, sleep, running)
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        await within(harness.worker.shutdown())
        await within(asyncio.wait({harness.running}))


def job(handler: Any, job_id: str = "job-1", **options: Any) -> JobDefinition:
    options.setdefault("trigger", invoke_trigger())
    return define_job(id=job_id, version="1.0.0", **options)(handler)


async def test_hello_announces_the_jobs_capacity_and_sdk(make: Make) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        return None

    h = await make(
        job(handler, trigger=event_trigger("new.user", schema=NewUser)),
        job(handler, "job-2", retry={"limit": 2}),
        capacity=3,
    )
    stream = await h.server.next_stream()
    hello = await stream.expect("hello")
    assert (hello.worker_id, hello.capacity) == ("w1", 3)
    assert hello.sdk.startswith("tripwire-python/")
    assert [(j.id, j.version) for j in hello.jobs] == [("job-1", "1.0.0"), ("job-2", "1.0.0")]
    assert list(hello.jobs[0].trigger.event.names) == ["new.user"]
    assert hello.jobs[1].retry.limit == 2


async def test_a_run_gets_its_parsed_payload_and_ctx_and_its_result_is_sent(make: Make) -> None:
    seen: dict[str, Any] = {}

    async def handler(payload: NewUser, io: IO, ctx: RunContext) -> NewUser:
        seen.update(payload=payload, ctx=ctx)
        await io.logger.log("New user created", {"userId": payload.userId})
        return payload

    h = await make(job(handler, trigger=event_trigger("new.user", schema=NewUser)))
    stream = await h.connect()
    stream.reply(run_request=run_request(payload={"userId": "u_1"}))
    log = await stream.expect("log")
    assert (log.run_id, log.attempt, log.seq, log.message) == ("run_1", 1, 1, "New user created")
    outcome = await stream.expect("run_result")
    assert (outcome.run_id, outcome.attempt) == ("run_1", 1)
    assert from_value(outcome.output) == {"userId": "u_1"}
    assert isinstance(seen["payload"], NewUser)
    ctx = seen["ctx"]
    assert (ctx.run_id, ctx.attempt, ctx.event.name, ctx.job.id) == (
        "run_1",
        1,
        "new.user",
        "job-1",
    )
    assert ctx.environment == "default" and ctx.worker_id == "w1"


async def test_a_handler_error_is_the_run_result_error(make: Make) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        raise KeyError("missing")

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    outcome = await stream.expect("run_result")
    assert outcome.error.type == "KeyError" and "missing" in outcome.error.message
    assert "Traceback" in outcome.error.stack


async def test_a_cancelled_error_escaping_the_handler_fails_the_run(make: Make) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        helper = asyncio.create_task(asyncio.sleep(60))
        helper.cancel()
        await helper  # the handler's own cancellation, not the worker's

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    outcome = await stream.expect("run_result")
    assert outcome.error.type == "CancelledError"
    assert outcome.error.message == "a CancelledError escaped the handler"

    async def slot_free() -> bool:
        return h.worker.active_runs == 0

    await eventually(slot_free)


async def test_io_left_running_when_the_run_ends_sends_nothing_and_fails(make: Make) -> None:
    in_fn, release = asyncio.Event(), asyncio.Event()
    unwound: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def slow() -> str:
        in_fn.set()
        await release.wait()
        return "late"

    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        async def straggler() -> None:
            try:
                await io.run_task("slow", slow)
            except BaseException as exc:
                unwound.set_result(exc)
                raise

        async def fails() -> None:
            await in_fn.wait()
            raise RuntimeError("gave up")

        await asyncio.gather(straggler(), fails())

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    request = await stream.expect("task")
    stream.reply(task_result=result(request.request_id, "run_1", 1, task("t1", "slow", "RUNNING")))
    outcome = await stream.expect("run_result")
    assert outcome.error.message == "gave up"
    sent = len(stream.log)
    release.set()
    error = await within(unwound)
    assert isinstance(error, RunEnded)
    assert "io calls must be awaited inside the handler" in str(error)
    late = [m.WhichOneof("message") for m in stream.log[sent:]]
    assert [kind for kind in late if kind != "heartbeat"] == []


@pytest.mark.parametrize("where", ["handler", "task", "log"])
async def test_an_undecodable_name_in_an_error_or_log_line_still_reaches_the_server(
    make: Make, where: str
) -> None:
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")

    def broken() -> None:
        raise FileExistsError(f"cannot overwrite {name}")

    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        if where == "log":
            io.logger.info(f"skipping {name}")
            return
        if where == "handler":
            broken()
        await io.run_task("k", broken)

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    if where == "log":
        line = await stream.expect("log")
        assert line.message == "skipping report-\\udcff.csv"
    if where == "task":
        request = await stream.expect("task")
        stream.reply(task_result=result(request.request_id, "run_1", 1, task("t1", "k", "RUNNING")))
        complete = await stream.expect("task_complete")
        assert complete.error.message == "cannot overwrite report-\\udcff.csv"
        failed = task("t1", "k", "ERRORED", error=("FileExistsError", complete.error.message))
        stream.reply(task_result=result(request.request_id, "run_1", 1, failed))
    outcome = await stream.expect("run_result")
    if where != "log":
        assert outcome.error.type in ("FileExistsError", "TaskError")
        assert "cannot overwrite report-\\udcff.csv" in outcome.error.message


async def test_an_outcome_that_cannot_be_reported_still_fails_the_run(make: Make) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        raise BaseExceptionGroup("odd", [GeneratorExit()])  # no Exception inside

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    outcome = await stream.expect("run_result")
    assert outcome.error.type == "WorkerError"
    assert outcome.error.message.startswith("the worker could not report the run's outcome")


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_a_task_functions_own_cancelled_error_fails_the_run(make: Make, flavour: str) -> None:
    async def fn() -> None:
        helper = asyncio.create_task(asyncio.sleep(60))
        helper.cancel()
        await helper

    async def async_handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        return await io.run_task("k", fn)

    def sync_handler(payload: Any, io: SyncIO, ctx: RunContext) -> Any:
        return io.run_task("k", fn)

    h = await make(job(async_handler if flavour == "async" else sync_handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    request = await stream.expect("task")
    stream.reply(task_result=result(request.request_id, "run_1", 1, task("t1", "k", "RUNNING")))
    outcome = await stream.expect("run_result")
    assert outcome.error.type == "CancelledError"


async def test_a_result_too_large_for_any_message_fails_here_not_the_stream(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tripwire.client.io.MAX_RESULT_BYTES", 1000)

    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        try:
            await io.run_task("big", lambda: "x" * 2000)
        except Exception:
            pass
        return "y" * 2000

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    request = await stream.expect("task")
    stream.reply(task_result=result(request.request_id, "run_1", 1, task("t1", "big", "RUNNING")))
    complete = await stream.expect("task_complete")
    assert complete.WhichOneof("outcome") == "error"
    assert complete.error.message.startswith("task output is 2003 bytes, more than a message")
    failed = task("t1", "big", "ERRORED", error=("ValueError", complete.error.message))
    stream.reply(task_result=result(request.request_id, "run_1", 1, failed))
    outcome = await stream.expect("run_result")
    assert outcome.error.message.startswith("the handler's return value is 2003 bytes")


async def test_events_lines_and_errors_too_large_for_any_message_fail_here_not_the_stream(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the handler sends, as what it returns: an event or a log line no message
    can carry raises in the handler; an error that long is cut to fit."""
    monkeypatch.setattr("tripwire.client.io.MAX_RESULT_BYTES", 1000)
    monkeypatch.setattr("tripwire.client.io.MAX_ERROR_TEXT_BYTES", 300)
    refused: list[str] = []

    def fails() -> None:
        raise ValueError("é" * 2000)

    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        big = {"name": "n", "payload": {"blob": "x" * 2000}}
        for call in (
            lambda: io.send_event("one", big),
            lambda: io.send_events("many", [{"name": "n"}, big]),
            lambda: io.logger.info("x" * 2000),
            lambda: io.logger.info("x" * 600, {"blob": "y" * 600}),
            # 200 characters, but 1,200 bytes as sent: each lone surrogate goes as \udc80.
            lambda: io.logger.info("\udc80" * 200),
        ):
            try:
                await call()
            except (InvalidArgument, ValueError) as exc:
                refused.append(f"{type(exc).__name__}: {exc}")
        await io.run_task("fails", fails)

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    request = await stream.expect("task")  # the first message: nothing above was sent
    assert request.key == "fails"
    assert refused == [
        "InvalidArgument: task.params: is 2080 bytes, more than a message to the server can carry",
        "InvalidArgument: task.params: is 2104 bytes, more than a message to the server can carry",
        "ValueError: log message is 2000 bytes, more than a message to the server can carry",
        "ValueError: log message and data are 1218 bytes, more than a message to the server can "
        "carry",
        "ValueError: log message is 1200 bytes, more than a message to the server can carry",
    ]
    stream.reply(task_result=result(request.request_id, "run_1", 1, task("t1", "k", "RUNNING")))
    complete = await stream.expect("task_complete")
    error = complete.error
    assert error.message.endswith(" [cut: too long for a message to the server]")
    assert len(error.message.encode()) <= 300 and len(error.stack.encode()) <= 300
    failed = task("t1", "k", "ERRORED", error=("ValueError", "é" * 2000))
    stream.reply(task_result=result(request.request_id, "run_1", 1, failed))
    outcome = await stream.expect("run_result")
    assert outcome.error.type == "TaskError"
    assert len(outcome.error.message.encode()) <= 300


@pytest.mark.parametrize("exit", [SystemExit(3), KeyboardInterrupt()], ids=type)
async def test_an_exit_raised_in_a_sync_handlers_thread_fails_only_its_run(
    make: Make, exit: BaseException
) -> None:
    def leaving(payload: Any, io: SyncIO, ctx: RunContext) -> None:
        raise exit  # e.g. sys.exit() from argparse: the handler's thread, not the worker's

    def staying(payload: Any, io: SyncIO, ctx: RunContext) -> str:
        return "still serving"

    h = await make(job(leaving), job(staying, "job-2"))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    outcome = await stream.expect("run_result")
    assert (outcome.run_id, outcome.error.type) == ("run_1", type(exit).__name__)
    stream.reply(run_request=run_request("run_2", "job-2"))
    outcome = await stream.expect("run_result")
    assert (outcome.run_id, from_value(outcome.output)) == ("run_2", "still serving")


async def test_a_run_of_a_job_not_served_fails_with_a_clear_error(make: Make) -> None:
    h = await make(job(lambda payload, io, ctx: None))
    stream = await h.connect()
    stream.reply(run_request=run_request(job_id="other"))
    outcome = await stream.expect("run_result")
    assert outcome.error.type == "LookupError" and "job-1@1.0.0" in outcome.error.message


async def test_task_results_from_the_stream_reach_the_run(make: Make) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        return await io.run_task("double", lambda: 2 * payload["n"])

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request(payload={"n": 21}))
    request = await stream.expect("task")
    stream.reply(
        task_result=result(request.request_id, "run_1", 1, task("t1", "double", "RUNNING"))
    )
    complete = await stream.expect("task_complete")
    assert from_value(complete.output) == 42
    stream.reply(
        task_result=result(request.request_id, "run_1", 1, task("t1", "double", output=42))
    )
    assert from_value((await stream.expect("run_result")).output) == 42


async def test_cached_task_pages_arrive_before_the_handler_starts(make: Make) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        return [await io.run_task("a", lambda: 0), await io.run_task("b", lambda: 0)]

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request(cached=(task("t1", "a", output="A"),), complete=False))
    page = worker_service_pb2.CachedTasks(
        run_id="run_1", attempt=1, tasks=[task("t2", "b", output="B")], last=True
    )
    stream.reply(cached_tasks=page)
    assert from_value((await stream.expect("run_result")).output) == ["A", "B"]


async def test_a_cancel_while_cached_pages_arrive_means_the_run_never_starts(
    make: Make,
) -> None:
    started: list[str] = []

    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        started.append(ctx.run_id)
        return "ran"

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request("run_1", complete=False))
    stream.reply(cancel=worker_service_pb2.CancelRunNotice(run_id="run_1", attempt=1))
    page = worker_service_pb2.CachedTasks(run_id="run_1", attempt=1, tasks=[], last=True)
    stream.reply(cached_tasks=page)
    stream.reply(run_request=run_request("run_2"))  # a later run proves the pages were read
    assert from_value((await stream.expect("run_result")).output) == "ran"
    assert started == ["run_2"]


async def test_a_rejected_task_request_raises_the_typed_error(make: Make) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        try:
            await io.send_event("k", {"name": "n"})
        except InvalidArgument as exc:
            return exc.details
        return "not rejected"

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    request = await stream.expect("task")
    rejected = worker_service_pb2.Rejected(
        request_id=request.request_id, run_id="run_1", code=3, message="task.params.event: bad"
    )
    stream.reply(rejected=rejected)
    output = from_value((await stream.expect("run_result")).output)
    assert output == "rejected by the server: task.params.event: bad"


@pytest.mark.parametrize("notice", ["cancel", "abandon"])
async def test_cancel_and_abandon_stop_an_async_handler_silently(make: Make, notice: str) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def slow(payload: Any, io: IO, ctx: RunContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
            await io.logger.info("unwinding")  # dropped: the run is halted

    async def quick(payload: Any, io: IO, ctx: RunContext) -> str:
        return "quick"

    h = await make(job(slow), job(quick, "job-2"))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    await within(started.wait())
    stream.reply(**{notice: {"run_id": "run_1", "attempt": 1, "reason": "test"}})
    await within(stopped.wait())
    stream.reply(run_request=run_request("run_2", "job-2"))
    outcome = await stream.expect("run_result")
    assert outcome.run_id == "run_2"  # nothing at all was sent for run_1
    assert h.worker.active_runs == 0


async def test_a_notice_for_another_attempt_is_ignored(make: Make) -> None:
    release = asyncio.Event()

    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        await release.wait()
        return "done"

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request(attempt=2))
    stream.reply(cancel={"run_id": "run_1", "attempt": 1})
    stream.reply(run_request=run_request(attempt=2))  # a duplicate of the running attempt: ignored
    release.set()
    outcome = await stream.expect("run_result")
    assert (outcome.attempt, from_value(outcome.output)) == (2, "done")


async def test_abandon_unwinds_a_sync_handler_at_its_next_io_call(make: Make) -> None:
    unwound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def handler(payload: Any, io: SyncIO, ctx: RunContext) -> None:
        try:
            io.run_task("k", lambda: 1)
        except BaseException as exc:
            loop.call_soon_threadsafe(unwound.set_result, type(exc).__name__)
            raise

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    await stream.expect("task")
    stream.reply(abandon={"run_id": "run_1", "attempt": 1})
    assert await within(unwound) == "Suspend"


@pytest.mark.parametrize("notice", ["cancel", "abandon"])
async def test_a_stopped_sync_handler_cannot_catch_its_way_past_the_stop(
    make: Make, notice: str
) -> None:
    """`except Exception` around each step does not keep a stopped run going: every io
    call after the stop unwinds the handler (not a RunEnded it could catch)."""
    loop = asyncio.get_running_loop()
    unwound: asyncio.Future[list[str]] = loop.create_future()
    stopped = threading.Event()

    def step() -> None:
        stopped.wait(30)  # the stop comes while the step's function runs

    def handler(payload: Any, io: SyncIO, ctx: RunContext) -> None:
        caught: list[str] = []
        try:
            for i in range(20):
                try:
                    io.run_task(f"step-{i}", step)
                except Exception as exc:  # a handler skipping failed steps
                    caught.append(type(exc).__name__)
        except BaseException as exc:
            caught.append(type(exc).__name__)
            raise
        finally:
            loop.call_soon_threadsafe(unwound.set_result, caught)

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    request = await stream.expect("task")
    stream.reply(
        task_result=result(request.request_id, "run_1", 1, task("t1", "step-0", "RUNNING"))
    )
    stream.reply(**{notice: {"run_id": "run_1", "attempt": 1}})

    async def let_go() -> bool:  # the worker is done with the run, its function still running
        return h.worker._session is not None and not h.worker._session.runs

    await eventually(let_go)
    stopped.set()
    assert await within(unwound) == ["Suspend"]
    assert [m.WhichOneof("message") for m in stream.log].count("task") == 1


async def test_a_sync_handler_runs_in_a_worker_thread(make: Make) -> None:
    loop_thread = threading.get_ident()

    def handler(payload: Any, io: SyncIO, ctx: RunContext) -> dict[str, Any]:
        io.logger.info("in a thread")
        value = io.run_task("k", lambda: threading.current_thread().name)
        return {"other_thread": threading.get_ident() != loop_thread, "task_thread": value}

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    assert (await stream.expect("log")).message == "in a thread"
    request = await stream.expect("task")
    stream.reply(task_result=result(request.request_id, "run_1", 1, task("t1", "k", "RUNNING")))
    name = from_value((await stream.expect("task_complete")).output)
    assert name.startswith("tripwire-run")
    stream.reply(task_result=result(request.request_id, "run_1", 1, task("t1", "k", output=name)))
    output = from_value((await stream.expect("run_result")).output)
    assert output == {"other_thread": True, "task_thread": name}


async def test_batches_from_the_server_are_read_and_answered_once_the_welcome_allows(
    make: Make,
) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        return ctx.run.id

    h = await make(job(handler), capacity=3)
    stream = await h.server.next_stream()
    assert (await stream.expect("hello")).accepts_batches
    stream.welcome(accepts_batches=True)
    await within(h.worker.wait_connected())
    requests = [run_request(f"run_{i}") for i in range(3)]
    batch = worker_service_pb2.RunJobResponseBatch()
    for request in requests:
        batch.messages.add().run_request.CopyFrom(request)
    stream.reply(batch=batch)
    results = [await stream.expect("run_result") for _ in requests]
    assert sorted(from_value(r.output) for r in results) == ["run_0", "run_1", "run_2"]


async def test_heartbeats_follow_the_welcome_interval(make: Make) -> None:
    h = await make(job(lambda payload, io, ctx: None))
    stream = await h.server.next_stream()
    await stream.expect("hello")
    stream.welcome(heartbeat_interval_ms=1234)
    for _ in range(3):
        delay, release = await h.sleep.next()
        assert delay == 1.234
        assert stream.received.empty()  # nothing before the interval has passed
        release.set_result(None)
        await stream.expect("heartbeat", skip=())
    assert h.worker.heartbeat_interval == 1.234


async def test_heartbeats_say_how_many_messages_were_read(make: Make) -> None:
    h = await make(job(lambda payload, io, ctx: None))
    stream = await h.server.next_stream()
    await stream.expect("hello")
    stream.welcome(heartbeat_interval_ms=1000)
    seen = []
    for answers, read in ((0, 1), (2, 3), (1, 4)):
        for _ in range(answers):  # read before the next beat
            stream.reply(heartbeat=worker_service_pb2.Heartbeat())

        async def all_read(read: int = read) -> bool:
            session = h.worker._session
            return session is not None and session.received == read

        await eventually(all_read)
        _, release = await h.sleep.next()
        release.set_result(None)
        seen.append((await stream.expect("heartbeat", skip=())).received)
    assert seen == [1, 3, 4]  # the welcome, then each answer


async def test_a_lost_stream_stops_the_runs_and_reconnects_after_a_backoff(make: Make) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    h = await make(job(handler), backoff=Backoff(base=0.1, cap=5.0, rand=lambda: 0.5))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    await within(started.wait())
    stream.fail(grpc.StatusCode.UNAVAILABLE, "server restarting")
    await within(cancelled.wait())
    delay, release = await h.sleep.next()
    assert delay == 0.05  # half (the jitter) of the first ceiling, 0.1 s
    assert not h.worker.connected and h.worker.active_runs == 0
    release.set_result(None)
    again = await h.connect()
    assert again is not stream and stream.cancelled


async def test_a_worker_paused_past_its_lease_starts_no_task_function_and_reconnects(
    make: Make,
) -> None:
    calls: list[str] = []

    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        return await io.run_task("charge", lambda: calls.append("charged"))

    h = await make(job(handler), backoff=Backoff(base=0.1, cap=5.0, rand=lambda: 0.5))
    stream = await h.connect()  # a lease of 1,800 s
    stream.reply(run_request=run_request())
    request = await stream.expect("task")
    # The process stops here for longer than its lease (SIGSTOP, a paused VM): the
    # server gives the run to another worker, whose try of "charge" is stored; then
    # this one wakes up and reads the answer that was on its way.
    assert h.worker._session is not None
    h.worker._session.queue.sent_at -= 1801
    stream.reply(
        task_result=result(request.request_id, "run_1", 1, task("t1", "charge", "RUNNING"))
    )
    delay, release = await h.sleep.next()  # the session ended: a backoff, then a new one
    assert delay == 0.05 and calls == [] and stream.cancelled
    assert not h.worker.connected and h.worker.active_runs == 0
    assert stream.received.empty()  # no task_complete, no run_result
    release.set_result(None)
    again = await h.connect()
    assert again is not stream


async def test_the_lease_is_counted_from_the_welcome_however_late_it_came(make: Make) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        return await io.run_task("t", lambda: "ran")

    h = await make(job(handler))
    stream = await h.server.next_stream()
    await stream.expect("hello")
    await asyncio.sleep(1.2)  # the server stored the hello slowly: longer than the lease
    stream.welcome(lease_ms=1000)
    await within(h.worker.wait_connected())
    stream.reply(run_request=run_request())
    request = await stream.expect("task")
    stream.reply(task_result=result(request.request_id, "run_1", 1, task("t1", "t", "RUNNING")))
    complete = await stream.expect("task_complete")  # the function ran
    assert from_value(complete.output) == "ran"
    assert h.worker.connected


async def test_silence_from_the_server_is_counted_from_the_welcome_however_late_it_came(
    make: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The welcome is word from the server: a stream welcomed after more than a lease
    (the server was stalled) is not dropped at the watchdog's first look for the
    silence before it."""
    now = [1000.0]
    monkeypatch.setattr(worker_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    looks: list[None] = []
    look = worker_module._Session.lease_held

    def counted(self: Any) -> bool:  # the watchdog looks at the lease, then the silence
        looks.append(None)
        return look(self)

    monkeypatch.setattr(worker_module._Session, "lease_held", counted)
    h = await make(job(lambda payload, io, ctx: None))
    stream = await h.server.next_stream()
    await stream.expect("hello")
    now[0] += 10  # the server answered late: longer than the lease
    welcome = worker_service_pb2.Welcome(
        session_id="s1", heartbeat_interval_ms=600_000, lease_ms=1000, answers_heartbeats=True
    )
    stream.reply(welcome=welcome)
    await within(h.worker.wait_connected())

    async def looked() -> bool:
        return bool(looks)

    await eventually(looked)
    assert "nothing from the server" not in caplog.text
    assert h.worker._session is not None and h.worker._session.call is stream


async def test_the_backoff_grows_while_connecting_fails(make: Make) -> None:
    h = await make(job(lambda payload, io, ctx: None), backoff=Backoff(rand=lambda: 1.0))
    delays = []
    for _ in range(4):
        stream = await h.server.next_stream()
        stream.fail(grpc.StatusCode.UNAVAILABLE)
        delay, release = await h.sleep.next()
        delays.append(delay)
        release.set_result(None)
    assert delays == [0.1, 0.2, 0.4, 0.8]


async def test_a_refusal_for_good_ends_run_with_the_typed_error(make: Make) -> None:
    h = await make(job(lambda payload, io, ctx: None))
    stream = await h.server.next_stream()
    stream.fail(grpc.StatusCode.UNAUTHENTICATED, "bad key")
    with pytest.raises(Unauthenticated, match="bad key"):
        await within(h.running)


async def test_drain_finishes_running_runs_then_closes_and_reconnects(make: Make) -> None:
    release = asyncio.Event()

    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        await release.wait()
        return "finished"

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    stream.reply(drain={"deadline_ms": 60_000})
    assert (await stream.expect("drain")).deadline_ms == 60_000  # it says it drains, too
    # Sent before the server read that: run like the rest, within the deadline.
    stream.reply(run_request=run_request("run_2"))
    release.set()
    finished = [await stream.expect("run_result") for _ in range(2)]
    assert {r.run_id for r in finished} == {"run_1", "run_2"}
    assert all(from_value(r.output) == "finished" for r in finished)
    await within(stream.half_closed.wait())
    delay, release_backoff = await h.sleep.next()  # then reconnects, as after any disconnect
    assert 0 <= delay <= 0.1
    release_backoff.set_result(None)
    await h.connect()


def never_ending(stopped: asyncio.Event) -> Any:
    """A handler that runs until it is stopped, and then sets ``stopped``."""

    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    return handler


async def test_drain_stops_what_is_still_running_at_the_deadline(make: Make) -> None:
    stopped = asyncio.Event()
    handler = never_ending(stopped)
    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    stream.reply(drain={"deadline_ms": 0})
    await within(stopped.wait())
    await within(stream.half_closed.wait())
    assert not any(m.HasField("run_result") for m in stream.log)


async def draining(h: Harness, stream: FakeStream, ready: Callable[[Any], bool]) -> Any:
    """The server asks the worker to drain within a minute; the worker's session, once
    ``ready(session)``."""
    stream.reply(drain={"deadline_ms": 60_000})
    await stream.expect("drain")
    session = h.worker._session
    assert session is not None

    async def check() -> bool:
        return ready(session)

    await eventually(check, within=5.0, every=0.005)
    return session


async def test_a_run_arriving_as_the_last_one_ends_still_gets_the_drain_deadline(
    make: Make,
) -> None:
    gates = {"run_1": asyncio.Event(), "run_2": asyncio.Event()}

    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        await gates[ctx.run.id].wait()
        return ctx.run.id

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request("run_1"))
    session = await draining(h, stream, lambda s: "run_1" in s.runs)
    # run_2 starts in the very callback after run_1's end set no_runs, before the
    # drain wakes up to look: it must still get the deadline, not be stopped.
    session.runs["run_1"].task.add_done_callback(
        lambda _: session.on_run_request(run_request("run_2"))
    )
    gates["run_1"].set()
    assert from_value((await stream.expect("run_result")).output) == "run_1"
    gates["run_2"].set()
    assert from_value((await stream.expect("run_result")).output) == "run_2"
    await within(stream.half_closed.wait())


async def test_a_run_still_getting_its_cached_pages_when_the_drain_starts_runs(
    make: Make,
) -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        return "ran"

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request("run_1", complete=False))
    await draining(h, stream, lambda s: "run_1" in s.assembling)
    assert not stream.half_closed.is_set()  # it waits for the run on its way
    page = worker_service_pb2.CachedTasks(run_id="run_1", attempt=1, last=True)
    stream.reply(cached_tasks=page)
    assert from_value((await stream.expect("run_result")).output) == "ran"
    await within(stream.half_closed.wait())


async def test_a_shutdown_after_a_longer_server_drain_keeps_its_own_timeout(make: Make) -> None:
    stopped = asyncio.Event()
    handler = never_ending(stopped)
    h = await make(job(handler), shutdown_timeout=0.2)
    stream = await h.connect()
    stream.reply(run_request=run_request())
    stream.reply(drain={"deadline_ms": 600_000})  # the server gives ten minutes
    await stream.expect("drain")
    await within(h.worker.shutdown())  # ... the application 0.2 s: the earlier end holds
    assert stopped.is_set() and stream.half_closed.is_set()


async def test_shutdown_drains_and_does_not_reconnect(make: Make) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        started.set()
        await release.wait()
        return "ok"

    h = await make(job(handler))
    stream = await h.connect()
    stream.reply(run_request=run_request())
    await within(started.wait())
    shutting = asyncio.create_task(h.worker.shutdown())
    # First the server hears that no more runs should come here.
    assert (await stream.expect("drain")).deadline_ms == 2000
    release.set()
    assert from_value((await stream.expect("run_result")).output) == "ok"
    await within(shutting)
    await within(h.running)
    assert len(h.server.opened) == 1 and stream.half_closed.is_set()


async def test_a_stream_with_no_welcome_is_given_up_for_a_new_one(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    h = await make(job(lambda payload, io, ctx: None), welcome_timeout=0.2)
    silent = await h.server.next_stream()
    await silent.expect("hello")  # and the server never answers
    _, release = await h.sleep.next()  # the backoff before the next attempt
    assert silent.cancelled and not h.worker.connected
    assert "no welcome within 0.2 s" in caplog.text
    release.set_result(None)
    again = await h.connect()
    assert again is not silent and h.worker.connected


async def test_shutdown_while_waiting_for_welcome_returns(make: Make) -> None:
    h = await make(job(lambda payload, io, ctx: None))
    stream = await h.server.next_stream()
    await stream.expect("hello")
    await within(h.worker.shutdown())
    await within(h.running)


async def one_burst(worker: Worker, server: FakeServer) -> FakeStream:
    """A burst run of `worker` serving one run (whose handler returns "done") to the end."""
    running = asyncio.create_task(worker.run(burst=True, idle_timeout=0.05))
    stream = await server.next_stream()
    await stream.expect("hello")
    stream.welcome()
    stream.reply(run_request=run_request())
    assert from_value((await stream.expect("run_result")).output) == "done"
    await within(running)
    return stream


async def test_burst_mode_returns_once_idle() -> None:
    server, sleep = FakeServer(), FakeSleep()

    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        return "done"

    worker = Worker(Client("t"), [job(handler)], connect=server, sleep=sleep)
    stream = await one_burst(worker, server)
    assert stream.half_closed.is_set()


async def test_async_with_runs_the_worker_in_the_background() -> None:
    server, sleep = FakeServer(), FakeSleep()
    async with Worker(
        Client("t"), [job(lambda payload, io, ctx: "sync")], connect=server, sleep=sleep
    ) as worker:
        stream = await server.next_stream()
        await stream.expect("hello")
        stream.welcome()
        await within(worker.wait_connected())
        stream.reply(run_request=run_request())
        assert from_value((await stream.expect("run_result")).output) == "sync"
    assert not worker.connected


async def test_leaving_async_with_at_once_stops_the_worker() -> None:
    server, sleep = FakeServer(), FakeSleep()
    worker = Worker(Client("t"), [job(lambda payload, io, ctx: None)], connect=server, sleep=sleep)

    async def enter_and_leave() -> None:
        async with worker:
            pass  # never yields: the background task has not started yet

    await within(enter_and_leave())
    assert not worker.connected


async def test_a_shutdown_asked_for_before_run_starts_makes_it_return() -> None:
    server, sleep = FakeServer(), FakeSleep()
    worker = Worker(Client("t"), [job(lambda payload, io, ctx: None)], connect=server, sleep=sleep)
    running = asyncio.create_task(worker.run())
    await worker.shutdown()  # awaits nothing: the task has not started
    await within(running)
    assert server.streams.empty()


async def test_a_shutdown_after_a_burst_run_does_not_stop_the_next_run() -> None:
    server, sleep = FakeServer(), FakeSleep()
    worker = Worker(
        Client("t"), [job(lambda payload, io, ctx: "done")], connect=server, sleep=sleep
    )

    await one_burst(worker, server)
    await worker.shutdown()  # a teardown's, after the run ended
    await one_burst(worker, server)


def test_worker_arguments_are_checked() -> None:
    one = job(lambda payload, io, ctx: None)
    with pytest.raises(ValueError, match="at least one job"):
        Worker(Client("t"), [])
    for bad in (0, 10_001, 2**32):  # the server takes 1 to 10,000 (a hello's uint32)
        with pytest.raises(ValueError, match="capacity must be an integer from 1 to 10000"):
            Worker(Client("t"), [one], capacity=bad)
    with pytest.raises(ValueError, match="welcome_timeout"):
        Worker(Client("t"), [one], welcome_timeout=0)
    for bad in (math.inf, math.nan, -1, 2**32):  # a Drain's deadline_ms could not say it
        with pytest.raises(ValueError, match="shutdown_timeout"):
            Worker(Client("t"), [one], shutdown_timeout=bad)
    with pytest.raises(ValueError, match="given twice"):
        Worker(Client("t"), [one, one])
    with pytest.raises(TypeError, match="JobDefinition"):
        Worker(Client("t"), [lambda payload, io, ctx: None])  # type: ignore[list-item]


async def test_a_burst_worker_still_stops_when_a_run_is_cancelled_before_it_started() -> None:
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        return "never"

    server, sleep = FakeServer(), FakeSleep()
    worker = Worker(Client("test"), [job(handler)], connect=server, sleep=sleep)
    running = asyncio.create_task(worker.run(burst=True, idle_timeout=0.05))
    stream = await server.next_stream()
    await stream.expect("hello")
    stream.welcome()
    stream.reply(run_request=run_request(complete=False))  # cached pages still to come

    async def watcher_sees_it_busy() -> bool:  # it waits for activity, not for idleness
        assembling = worker._session is not None and bool(worker._session.assembling)
        return assembling and not worker._activity.is_set()

    await eventually(watcher_sees_it_busy, within=5.0, every=0.005)
    stream.reply(cancel=worker_service_pb2.CancelRunNotice(run_id="run_1", attempt=1))
    try:
        await within(asyncio.shield(running), 5.0)  # idle now, so the burst ends
    finally:
        if not running.done():
            await worker.shutdown()


async def test_an_applications_own_signal_handlers_are_left_alone() -> None:
    import signal

    from tripwire.client.worker import serve_until_signalled

    class Quick:
        async def run(self) -> None:
            return None

        def request_shutdown(self) -> None:
            raise AssertionError("not called")

    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, mine)
    try:
        await serve_until_signalled(Quick())  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_asyncio_runs_own_sigint_handler_is_back_once_the_worker_returns() -> None:
    import functools
    import signal

    from tripwire.client.worker import serve_until_signalled

    class Quick:
        async def run(self) -> None:
            during.append(signal.getsignal(signal.SIGINT))

        def request_shutdown(self) -> None:
            raise AssertionError("not called")

    during: list[object] = []
    seen: dict[str, object] = {}

    async def main() -> None:
        seen["before"] = signal.getsignal(signal.SIGINT)
        await serve_until_signalled(Quick())  # type: ignore[arg-type]
        seen["after"] = signal.getsignal(signal.SIGINT)

    asyncio.run(main())
    assert isinstance(seen["before"], functools.partial)  # asyncio.Runner's
    assert during[0] is not seen["before"]  # the worker's, while it ran
    assert seen["after"] is seen["before"]


async def test_a_run_request_arriving_after_the_half_close_is_not_started(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()

    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        started.set()
        return "its result could never be sent"

    server, sleep = FakeServer(auto_end=False), FakeSleep()
    worker = Worker(Client("test"), [job(handler)], connect=server, sleep=sleep)
    running = asyncio.create_task(worker.run())
    stream = await server.next_stream()
    await stream.expect("hello")
    stream.welcome()
    await within(worker.wait_connected())
    shutting = asyncio.create_task(worker.shutdown())  # nothing running: it closes at once
    await stream.expect("drain")
    await within(stream.half_closed.wait())
    stream.reply(run_request=run_request())  # sent before the server read the drain

    async def refused() -> bool:
        return "arrived after the stream was closed; not started" in caplog.text

    await eventually(refused, within=5.0, every=0.005)
    stream.end()
    await within(shutting)
    await within(running)
    assert not started.is_set()
