"""The Python worker SDK against a real server: the seed example, retries, waits, cancel."""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import math
import sys
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from tripwire.client import (
    IO,
    Client,
    Event,
    InvalidArgument,
    Run,
    RunContext,
    SyncIO,
    TaskError,
    Worker,
    cron_trigger,
    event_trigger,
    invoke_trigger,
)
from tripwire.client.worker import Backoff
from tripwire.server.app import Server

from ..conftest import FakeClock, StartServer, eventually

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

DEADLINE = 20.0


class NewUser(BaseModel):
    userId: str


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fast(start_server: StartServer, clock: FakeClock) -> Server:
    return await start_server(clock=clock, lease=2.0, heartbeat_interval=0.2)


@pytest.fixture
async def client(fast: Server) -> AsyncIterator[Client]:
    client = Client("sdk-tests", url=fast.address)
    yield client
    await client.aio.close()
    client.close()


async def serving(worker: Worker) -> Worker:
    await asyncio.wait_for(worker.wait_connected(), DEADLINE)
    return worker


async def finished(client: Client, run_id: str, *statuses: str) -> Run:
    wanted = statuses or ("SUCCESS", "FAILURE", "CANCELED", "TIMED_OUT", "ABORTED")
    return await client.aio.wait_for_run(run_id, statuses=wanted, timeout=DEADLINE)


async def test_the_seed_example_runs_both_jobs_to_success(client: Client) -> None:
    @client.define_job(
        id="job-1", name="First job", version="0.0.1", trigger=cron_trigger(cron="0 9 * * *")
    )
    async def first_job(payload: Any, io: IO, ctx: RunContext) -> Any:
        return await io.send_event(
            "send-event", {"name": "new.user", "payload": {"userId": "u_1234567890"}}
        )

    @client.define_job(
        id="job-2",
        name="Second job",
        version="0.0.1",
        trigger=event_trigger(name="new.user", schema=NewUser),
    )
    async def second_job(payload: NewUser, io: IO, ctx: RunContext) -> None:
        await io.logger.log("New user created", {"userId": payload.userId})

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("job-1")
        first = await finished(client, run.id)
        assert first.status == "SUCCESS", first.error
        sent = first.output
        assert sent["name"] == "new.user" and sent["payload"] == {"userId": "u_1234567890"}
        detail = await client.aio.get_event(sent["id"])
        assert [r.job_id for r in detail.runs] == ["job-2"]
        second = await finished(client, detail.runs[0].id)
        assert second.status == "SUCCESS", second.error
    logs = (await client.aio.get_run(second.id)).logs
    assert [(log.level, log.message, log.data) for log in logs] == [
        ("LOG", "New user created", {"userId": "u_1234567890"})
    ]
    tasks = (await client.aio.get_run(first.id)).tasks
    assert [(t.key, t.kind, t.status) for t in tasks] == [("send-event", "SEND_EVENT", "COMPLETED")]


async def test_the_deepest_payload_and_output_the_server_takes_reach_the_worker_and_back(
    client: Client,
) -> None:
    deepest: Any = "leaf"
    for _ in range(30):
        deepest = {"k": deepest}

    @client.define_job(id="deep", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        # The output comes back in the task's result and in the cached tasks of a replay.
        echoed = await io.run_task("echo", lambda: payload)
        await io.wait("nap", 0)
        return echoed == payload == deepest

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("deep", deepest)
        done = await finished(client, run.id)
    assert done.status == "SUCCESS" and done.output is True, done.error


async def test_a_failed_task_is_retried_after_its_backoff(client: Client, clock: FakeClock) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("first call fails")
        return "second call works"

    @client.define_job(id="retry", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        retry = {"limit": 3, "min_timeout_ms": 1000, "randomize": False}
        return {"result": await io.run_task("flaky", flaky, retry=retry), "attempt": ctx.attempt}

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("retry")
        waiting = await finished(client, run.id, "WAITING")
        assert waiting.wait_until is not None
        clock.advance(2)
        done = await finished(client, run.id)
    assert done.status == "SUCCESS", done.error
    assert done.output == {"result": "second call works", "attempt": 2}
    assert len(calls) == 2
    (task,) = (await client.aio.get_run(run.id)).tasks
    assert (task.status, task.attempts, task.output) == ("COMPLETED", 1, "second call works")


async def test_a_task_out_of_retries_raises_task_error_in_the_handler(client: Client) -> None:
    def broken() -> None:
        raise ValueError("always broken")

    @client.define_job(id="broken", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        try:
            await io.run_task("broken", broken)  # no retry policy: the first failure is final
        except TaskError as exc:
            return {"type": exc.type, "message": exc.message}
        return "not raised"

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("broken")
        done = await finished(client, run.id)
    assert done.status == "SUCCESS", done.error
    assert done.output == {"type": "ValueError", "message": "always broken"}


async def test_a_task_output_over_the_payload_limit_raises_once_in_the_handler(
    start_server: StartServer,
) -> None:
    server = await start_server(max_payload_bytes=1000)
    client = Client("sdk-limits", url=server.address)
    calls = 0

    def huge() -> str:
        nonlocal calls
        calls += 1
        return "x" * 2000

    @client.define_job(id="huge", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        try:
            await io.run_task("huge", huge, retry={"limit": 5, "min_timeout_ms": 10})
        except TaskError as exc:
            return {"type": exc.type, "message": exc.message}
        return "not raised"

    try:
        async with Worker(client) as worker:
            await serving(worker)
            run = await client.aio.invoke_job("huge")
            done = await finished(client, run.id)
    finally:
        await client.aio.close()
        client.close()
    assert done.status == "SUCCESS", done.error
    assert done.output == {
        "type": "OutputTooLarge",
        "message": "task output is 2003 bytes, over the limit of 1000 bytes",
    }
    assert calls == 1  # no retries: the function would only make it again


@pytest.mark.parametrize("output", [math.nan, b"raw"], ids=["nan", "bytes"])
async def test_a_task_output_the_worker_cannot_send_raises_once_in_the_handler(
    client: Client, output: Any
) -> None:
    calls = 0

    def charge() -> Any:
        nonlocal calls
        calls += 1  # a side effect: running it again would repeat it
        return output

    @client.define_job(id="unsendable", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        try:
            await io.run_task("charge", charge, retry={"limit": 3})
        except TaskError as exc:
            return exc.message
        return "not raised"

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("unsendable")
        done = await finished(client, run.id)
    assert done.status == "SUCCESS", done.error
    assert "JSON" in done.output
    assert calls == 1  # final at once: the function would only make it again


async def test_a_retried_task_runs_the_task_inside_it_that_failed_again(
    client: Client, clock: FakeClock
) -> None:
    # v2 left such a run stuck: every later try of the parent got the failed child back.
    fetches = 0

    def fetch() -> str:
        nonlocal fetches
        fetches += 1
        if fetches == 1:
            raise ConnectionError("transient")
        return "data"

    @client.define_job(id="parent-retry", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def sync_user() -> str:
            return await io.run_task("fetch", fetch)

        return await io.run_task("sync-user", sync_user, retry={"limit": 3})

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("parent-retry")
        await client.aio.wait_for_run(run.id, statuses=("WAITING",), timeout=15)
        clock.advance(61)  # past the parent's backoff
        done = await finished(client, run.id)
    assert (done.status, done.output, fetches) == ("SUCCESS", "data", 2)
    tasks = {t.key: t for t in (await client.aio.get_run(run.id)).tasks}
    assert tasks["fetch"].status == "COMPLETED" and tasks["sync-user"].status == "COMPLETED"


@pytest.mark.parametrize("clock_moves_by", [0, -5])
async def test_a_parent_retried_without_the_clock_moving_on_runs_its_failed_task_again(
    client: Client, clock: FakeClock, clock_moves_by: float
) -> None:
    fetches = 0

    def fetch() -> str:
        nonlocal fetches
        fetches += 1
        if fetches == 1:
            clock.advance(clock_moves_by)
            raise ConnectionError("transient")
        return "data"

    @client.define_job(id="parent-retry-at-once", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def sync_user() -> str:
            return await io.run_task("fetch", fetch)

        at_once = {"limit": 3, "min_timeout_ms": 0, "max_timeout_ms": 0}
        return await io.run_task("sync-user", sync_user, retry=at_once)

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("parent-retry-at-once")
        done = await finished(client, run.id)
    assert (done.status, done.output, fetches) == ("SUCCESS", "data", 2), done.error


async def test_while_the_server_is_away_the_worker_tries_again_within_its_backoff_cap(
    start_server: StartServer,
) -> None:
    """gRPC's own reconnect backoff grows to two minutes and fails every call meanwhile;
    the worker's channel caps it at the worker's backoff cap."""
    server = await start_server()
    port = int(server.address.rpartition(":")[2])
    client = Client("away", url=server.address)

    @client.define_job(id="j", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        return "ok"

    worker = Worker(client, backoff=Backoff(cap=1.0))
    running = asyncio.create_task(worker.run())
    attempts: list[float] = []
    try:
        await serving(worker)
        await server.stop(grace=0.1)

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            attempts.append(time.monotonic())  # a connection attempt: turn it away
            writer.close()

        stand_in = await asyncio.start_server(refuse, "127.0.0.1", port)
        try:

            async def enough() -> bool:
                return len(attempts) >= 8

            await eventually(enough, within=DEADLINE)
        finally:
            stand_in.close()
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        # cap 1 s, plus gRPC's jitter of 20% and the worker's own wait
        assert max(gaps) < 2.5, gaps
    finally:
        await worker.shutdown()
        await running
        await client.aio.close()
        client.close()


async def test_a_worker_with_a_short_backoff_cap_connects_over_a_slow_link(
    start_server: StartServer,
) -> None:
    """The reconnect cap must not shorten gRPC's connect timeout."""
    server = await start_server()
    upstream = int(server.address.rpartition(":")[2])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.4)  # the server's first bytes arrive this late
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(slow, "127.0.0.1", 0)
    client = Client("slow-link", url=f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}")

    @client.define_job(id="j", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        return "ok"

    worker = Worker(client, backoff=Backoff(cap=0.2))
    running = asyncio.create_task(worker.run())
    try:
        await serving(worker)
    finally:
        await worker.shutdown()
        await running
        proxy.close()
        await client.aio.close()
        client.close()


async def test_an_uncaught_error_fails_the_run(client: Client) -> None:
    @client.define_job(id="fails", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        raise RuntimeError("handler gave up")

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("fails")
        done = await finished(client, run.id)
    assert done.status == "FAILURE"
    assert done.error is not None
    assert (done.error.type, done.error.message) == ("RuntimeError", "handler gave up")


async def test_sys_exit_in_a_coroutine_handler_fails_the_run_and_the_worker_goes_on(
    client: Client,
) -> None:
    @client.define_job(id="exits", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        sys.exit(4)

    @client.define_job(id="after", version="1.0.0", trigger=invoke_trigger())
    async def after(payload: Any, io: IO, ctx: RunContext) -> str:
        return "still serving"

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("exits")
        done = await finished(client, run.id)
        assert done.status == "FAILURE" and done.error is not None
        assert (done.error.type, done.error.message) == ("SystemExit", "4")
        next_run = await client.aio.invoke_job("after")
        assert (await finished(client, next_run.id)).output == "still serving"


async def test_a_plain_handler_handing_back_a_coroutine_fails_saying_so(client: Client) -> None:
    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)  # the coroutine, which a thread cannot run

        return wrapper

    @client.define_job(id="decorated", version="1.0.0", trigger=invoke_trigger())
    @logged
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        return await io.run_task("t", lambda: "done")

    def bridged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return asyncio.run(fn(*args))  # runs it itself, in the handler's thread

        return wrapper

    @client.define_job(id="bridged", version="1.0.0", trigger=invoke_trigger())
    @bridged
    async def own_loop(payload: Any, io: Any, ctx: RunContext) -> Any:
        return "ran on its own loop"

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("decorated")
        failed = await finished(client, run.id)
        run = await client.aio.invoke_job("bridged")
        assert (await finished(client, run.id)).output == "ran on its own loop"
    assert failed.status == "FAILURE" and failed.error is not None
    assert failed.error.message.startswith("the handler returned a coroutine")


async def test_a_cancelled_error_escaping_the_handler_fails_the_run(client: Client) -> None:
    @client.define_job(id="cancelled", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        helper = asyncio.create_task(asyncio.sleep(60))
        helper.cancel()
        await helper

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("cancelled")
        done = await finished(client, run.id)
    assert done.status == "FAILURE"
    assert done.error is not None and done.error.type == "CancelledError"


async def test_io_wait_suspends_the_run_and_resumes_it(client: Client, clock: FakeClock) -> None:
    before: list[int] = []

    @client.define_job(id="nap", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        before.append(ctx.attempt)
        await io.logger.info("before the wait")
        await io.wait("nap", 1)
        await io.logger.info("after the wait")
        return "awake"

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("nap")
        await finished(client, run.id, "WAITING")
        clock.advance(2)
        done = await finished(client, run.id)
    assert (done.status, done.output, done.attempt) == ("SUCCESS", "awake", 2)
    assert before == [1, 2]  # replayed from the top, the wait coming from the cache
    logs = (await client.aio.get_run(run.id)).logs
    assert [log.message for log in logs] == ["before the wait", "after the wait"]


async def test_a_sync_handler_with_blocking_io(client: Client) -> None:
    @client.define_job(id="sync", version="1.0.0", trigger=invoke_trigger())
    def handler(payload: Any, io: SyncIO, ctx: RunContext) -> Any:
        io.logger.info("in a thread", {"n": payload["n"]})
        doubled = io.run_task("double", lambda: payload["n"] * 2)
        event = io.send_event("announce", {"name": "doubled", "payload": {"value": doubled}})
        return {"doubled": doubled, "event": event.name}

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("sync", {"n": 21})
        done = await finished(client, run.id)
    assert done.status == "SUCCESS", done.error
    assert done.output == {"doubled": 42, "event": "doubled"}


async def test_io_send_event_gives_the_stored_event_as_client_send_event_does(
    client: Client,
) -> None:
    @client.define_job(id="listener", version="2.1.0", trigger=event_trigger("hello"))
    async def listener(payload: Any, io: IO, ctx: RunContext) -> None:
        return None

    @client.define_job(id="sender", version="1.0.0", trigger=invoke_trigger())
    async def sender(payload: Any, io: IO, ctx: RunContext) -> Any:
        one = await io.send_event("one", {"name": "hello"}, account_id="acme")
        both = await io.send_events(
            "both", [{"name": "hello"}, {"name": "later"}], deliver_after=60
        )
        assert isinstance(one, Event) and all(isinstance(e, Event) for e in both)
        return {"one": one, "both": both}  # the client's models, stored as JSON

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("sender")
        done = await finished(client, run.id)
    assert done.status == "SUCCESS", done.error
    one, both = done.output["one"], done.output["both"]
    stored = await client.aio.get_event(one["id"])
    assert one["account_id"] == "acme" == stored.event.account_id
    assert one["created_at"] and one["status"] == "DELIVERED"
    (made,) = one["runs"]
    assert (made["id"], made["job_id"], made["job_version"], made["event_id"]) == (
        stored.runs[0].id,
        "listener",
        "2.1.0",
        one["id"],
    )
    assert [(e["name"], e["status"]) for e in both] == [("hello", "PENDING"), ("later", "PENDING")]


async def test_an_event_name_over_the_limit_is_refused_naming_the_event_not_the_task(
    client: Client,
) -> None:
    """The task's display name holds the event's name: it must not be what is refused."""

    @client.define_job(id="long-names", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        refused = []
        for length in (300, 1100):
            with pytest.raises(InvalidArgument) as info:
                await io.send_event(f"send-{length}", {"name": "n" * length})
            refused.append(str(info.value))
        return refused

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("long-names")
        done = await finished(client, run.id)
    assert done.status == "SUCCESS", done.error
    assert (
        done.output
        == [
            "rejected by the server: task.params.event.name: is longer than the limit of 256 "
            "characters"
        ]
        * 2
    )


async def test_cancelling_a_run_stops_its_handler(client: Client) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    @client.define_job(id="slow", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("slow")
        await asyncio.wait_for(started.wait(), DEADLINE)
        await client.aio.cancel_run(run.id)
        await asyncio.wait_for(stopped.wait(), DEADLINE)
        done = await finished(client, run.id)
    assert done.status == "CANCELED"


async def test_run_worker_serves_until_cancelled(client: Client) -> None:
    @client.define_job(id="hello", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        return f"hello {payload['name']}"

    async def registered() -> bool:
        return bool((await client.aio.list_jobs()).items)

    serving_task = asyncio.create_task(client.run_worker(capacity=2))
    try:
        await eventually(registered)  # the worker's hello registers its jobs
        run = await client.aio.invoke_job("hello", {"name": "world"})
        done = await finished(client, run.id)
        assert (done.status, done.output) == ("SUCCESS", "hello world")
    finally:
        serving_task.cancel()
        await asyncio.wait({serving_task})


async def test_log_lines_sent_just_before_the_result_are_all_kept(client: Client) -> None:
    @client.define_job(id="chatty", version="1.0.0", trigger=invoke_trigger(), log_level="DEBUG")
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        for n in range(20):
            await io.logger.debug(f"line {n}", {"n": n})
        return "said it all"

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("chatty")
        done = await finished(client, run.id)
    assert done.status == "SUCCESS", done.error
    logs = (await client.aio.get_run(run.id)).logs
    assert [(log.seq, log.message) for log in logs] == [(n + 1, f"line {n}") for n in range(20)]


async def test_a_server_shutdown_drains_the_worker_which_finishes_its_run(
    start_server: StartServer,
) -> None:
    server = await start_server()
    client = Client("sdk-tests", url=server.address)
    started, release = asyncio.Event(), asyncio.Event()

    @client.define_job(id="long", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        started.set()
        await release.wait()
        return "finished while draining"

    worker = Worker(client, backoff=Backoff(base=60.0, cap=60.0))  # no reconnect in the test
    running = asyncio.create_task(worker.run())
    await serving(worker)
    run = await client.aio.invoke_job("long")
    await asyncio.wait_for(started.wait(), DEADLINE)
    await client.aio.close()
    stopping = asyncio.create_task(server.stop(grace=DEADLINE))

    async def draining() -> bool:
        return worker.draining

    await eventually(draining)  # the server said `drain`; the run is still going
    release.set()
    await asyncio.wait_for(stopping, DEADLINE)
    await worker.shutdown()
    await asyncio.wait_for(running, DEADLINE)
    restarted = await start_server()  # the same database file
    async with Client("sdk-tests", url=restarted.address).aio as again:
        done = await again.get_run(run.id)
    assert (done.run.status, done.run.output) == ("SUCCESS", "finished while draining")


class _Blackhole:
    """A TCP relay to the server whose `cut()` makes the connections open so far
    swallow everything, both ways, without closing: a half-open connection, as
    after a dead NAT entry or a partition. New connections relay normally."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cut_ids: set[int] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, up_writer]
        conn = len(self.writers)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if conn not in self.cut_ids:
                    dst.write(data)
                    await dst.drain()

        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pipe(src, dst))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    def cut(self) -> None:
        self.cut_ids.update(range(len(self.writers) + 1))

    async def close(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        for task in list(self.pipes):
            task.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)


async def test_a_worker_on_a_half_open_connection_reconnects_within_a_lease(
    fast: Server, client: Client
) -> None:
    relay = _Blackhole(int(fast.address.rpartition(":")[2]))
    port = await relay.start()
    relayed = Client("behind-a-relay", url=f"127.0.0.1:{port}")

    @relayed.define_job(id="j", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        return "done"

    worker = Worker(relayed, backoff=Backoff(base=0.05, cap=0.2))
    task = asyncio.create_task(worker.run())
    try:
        await serving(worker)
        relay.cut()  # the server drops the worker after its lease; the worker must notice too
        run = await client.aio.invoke_job("j")
        done = await client.aio.wait_for_run(run.id, timeout=DEADLINE)
        assert done.status == "SUCCESS" and done.output == "done"
    finally:
        await worker.shutdown()
        await task
        await relayed.aio.close()
        relayed.close()
        await relay.close()


async def test_a_stream_given_up_for_a_new_connection_is_freed_without_a_collection(
    client: Client,
) -> None:
    """Its call holds the TCP connection (the server's end too): one kept alive until
    a full garbage collection would leave a connection behind per reconnect."""

    @client.define_job(id="j", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> str:
        return "done"

    gc.disable()
    try:
        async with Worker(client, backoff=Backoff(base=0.01, cap=0.05)) as worker:
            await serving(worker)
            for _ in range(3):
                old = worker._session
                assert old is not None
                gone = weakref.ref(old.call)
                # As the watchdog finds a lease lost while the worker was paused: it
                # gives the stream up and reconnects on a new connection.
                old.queue.lost = True
                old.lease_lost.set()
                await eventually(functools.partial(_reconnected, worker, old))
                del old
                await eventually(functools.partial(_dead, gone))
            run = await client.aio.invoke_job("j")
            assert (await finished(client, run.id)).status == "SUCCESS"
    finally:
        gc.enable()


async def _reconnected(worker: Worker, old: Any) -> bool:
    return worker._session is not None and worker._session is not old


async def _dead(ref: weakref.ref[Any]) -> bool:
    return ref() is None


async def past_the_retry_and_the_nap(client: Client, clock: FakeClock, run_id: str) -> Any:
    """A run WAITING on a task's retry backoff, then on `io.wait("nap", 1)`: moves
    the clock past both and returns the run once it has ended."""
    clock.advance(5)

    async def napping() -> bool:
        detail = await client.aio.get_run(run_id)
        return detail.run.status == "WAITING" and any(t.key == "nap" for t in detail.tasks)

    await eventually(napping)
    clock.advance(2)
    return await finished(client, run_id)


async def lines_past_the_retry_and_the_nap(
    client: Client, clock: FakeClock, job_id: str
) -> list[str]:
    """Runs `job_id` (a run WAITING first on a retry's backoff, then on a nap) to
    SUCCESS on a worker; returns the messages of its stored log lines."""
    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job(job_id)
        await finished(client, run.id, "WAITING")  # the retry's backoff
        done = await past_the_retry_and_the_nap(client, clock, run.id)
    assert done.status == "SUCCESS", done.error
    return [line.message for line in (await client.aio.get_run(run.id)).logs]


async def test_log_lines_survive_replays_after_retries_and_failed_nested_tasks(
    client: Client, clock: FakeClock
) -> None:
    """Each line is stored once: none dropped as a repeat of another execution's
    line, none stored twice when a replay sends it again."""
    tries: list[int] = []

    @client.define_job(id="lines", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def flaky() -> str:
            tries.append(1)
            await io.logger.info(f"try {len(tries)}")
            if len(tries) == 1:
                raise ConnectionError("the first try fails")
            return "ok"

        async def outer() -> None:
            await io.run_task("inner", lambda: 1)
            raise ValueError("outer fails for good")

        await io.run_task("flaky", flaky, retry={"limit": 3, "min_timeout_ms": 1000})
        try:
            await io.run_task("outer", outer, retry={"limit": 1})
        except TaskError:
            await io.logger.info("handled")
        await io.wait("nap", 1)
        await io.logger.info("end")
        return "done"

    assert await lines_past_the_retry_and_the_nap(client, clock, "lines") == [
        "try 1",
        "try 2",
        "handled",
        "end",
    ]


async def test_the_lines_of_each_try_of_a_task_with_tasks_inside_are_all_kept(
    client: Client, clock: FakeClock
) -> None:
    """A second try numbers its lines past everything the first crossed, the lines
    logged inside its nested task included; a replay after it numbers them again."""
    tries: list[int] = []

    @client.define_job(id="retried-outer", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def inner() -> int:
            await io.logger.info("inner ran")
            return 1

        async def outer() -> str:
            tries.append(1)
            await io.logger.info(f"try {len(tries)} starts")
            await io.run_task("inner", inner)  # cached for the second try
            await io.logger.info(f"try {len(tries)} after inner")
            if len(tries) == 1:
                raise ConnectionError("the first try fails")
            return "ok"

        await io.run_task("outer", outer, retry={"limit": 3, "min_timeout_ms": 1000})
        await io.wait("nap", 1)  # the next execution replays "outer" from the cache
        await io.logger.info("end")
        return "done"

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("retried-outer")
        await finished(client, run.id, "WAITING")  # outer's retry backoff
        done = await past_the_retry_and_the_nap(client, clock, run.id)
    assert done.status == "SUCCESS", done.error
    logs = (await client.aio.get_run(run.id)).logs
    assert [line.message for line in logs] == [
        "try 1 starts",
        "inner ran",
        "try 1 after inner",
        "try 2 starts",
        "try 2 after inner",
        "end",
    ]


async def test_lines_after_a_retried_nested_task_are_stored_once(
    client: Client, clock: FakeClock
) -> None:
    tries: list[int] = []

    @client.define_job(id="nested-retry", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        def flaky() -> int:
            tries.append(1)
            if len(tries) == 1:
                raise ConnectionError("the first try fails")
            return 1

        async def outer() -> int:
            return await io.run_task("inner", flaky, retry={"limit": 3, "min_timeout_ms": 1000})

        await io.run_task("outer", outer)
        await io.logger.info("after outer")
        await io.wait("nap", 1)  # the next execution replays "outer" from the cache
        await io.logger.info("end")
        return "done"

    assert await lines_past_the_retry_and_the_nap(client, clock, "nested-retry") == [
        "after outer",
        "end",
    ]


async def test_a_line_after_a_task_whose_failed_try_opened_a_task_is_stored_once(
    client: Client, clock: FakeClock
) -> None:
    # The first try of "outer" opens "fallback" and fails; the second does not open it.
    # A replay takes "outer" from the cache and must number "after outer" as the
    # execution that settled it did.
    tries = 0

    @client.define_job(id="dup-line", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def outer() -> str:
            nonlocal tries
            tries += 1
            if tries == 1:
                await io.run_task("fallback", lambda: 1)
                raise ConnectionError("the first try fails")
            return "ok"

        await io.run_task("outer", outer, retry={"limit": 3})
        await io.logger.info("after outer")
        await io.wait("nap", 1)
        await io.logger.info("end")
        return "done"

    assert await lines_past_the_retry_and_the_nap(client, clock, "dup-line") == [
        "after outer",
        "end",
    ]


async def test_a_line_after_a_gather_beside_a_failed_task_with_a_task_inside_is_stored_once(
    client: Client, clock: FakeClock
) -> None:
    # On replay "a" comes back ERRORED after the cached "b" beside it has settled:
    # each must be counted once, whatever the order of the answers.
    @client.define_job(id="gather-errored", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def a_fn() -> None:
            await io.run_task("a1", lambda: 1)
            raise ValueError("a fails for good")

        async def guarded() -> None:
            try:
                await io.run_task("a", a_fn)
            except TaskError:
                pass

        await asyncio.gather(guarded(), io.run_task("b", lambda: 2))
        await io.logger.info("after gather")
        await io.wait("nap", 1)  # the next execution replays the gather
        await io.logger.info("end")
        return "done"

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("gather-errored")
        await finished(client, run.id, "WAITING")
        clock.advance(2)
        done = await finished(client, run.id)
    assert done.status == "SUCCESS", done.error
    logs = (await client.aio.get_run(run.id)).logs
    assert [line.message for line in logs] == ["after gather", "end"]


async def through_every_backoff(client: Client, clock: FakeClock, run_id: str) -> Any:
    """Moves the clock past each backoff the run waits on, one at a time, until it ends."""
    for _ in range(10):
        run = await finished(client, run_id, "WAITING", "SUCCESS", "FAILURE")
        if run.status != "WAITING":
            return run
        clock.advance(5)

        async def moved(before: Any = run.wait_until) -> bool:
            now = (await client.aio.get_run(run_id)).run
            return now.status != "WAITING" or now.wait_until != before

        await eventually(moved)
    raise AssertionError("the run never ended")


async def test_a_task_run_again_for_its_parents_retry_gets_its_own_retries_again(
    client: Client, clock: FakeClock
) -> None:
    calls = 0

    def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls <= 3:  # both tries in the parent's first try, then once more
            raise ConnectionError(f"transient {calls}")
        return "data"

    policy = {"limit": 2, "min_timeout_ms": 1000, "randomize": False}

    @client.define_job(id="child-policy", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def sync_user() -> str:
            return await io.run_task("fetch", fetch, retry=policy)

        return await io.run_task("sync-user", sync_user, retry=policy)

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("child-policy")
        done = await through_every_backoff(client, clock, run.id)
    assert (done.status, done.output, calls) == ("SUCCESS", "data", 4), (done.error, calls)


async def _task(client: Client, run_id: str, key: str, status: str) -> bool:
    tasks = (await client.aio.get_run(run_id)).tasks
    return any(t.key == key and t.status == status for t in tasks)


async def finished_late(
    client: Client, clock: FakeClock, run_id: str, release: asyncio.Event, key: str
) -> Run:
    """The run waits; `release` lets task `key`'s function end then (its outcome is
    stored while the run waits); the clock moves past the wait; the run's end."""
    release.set()
    await eventually(lambda: _task(client, run_id, key, "COMPLETED"))
    clock.advance(2)
    return await finished(client, run_id)


async def test_a_task_finishing_after_a_wait_beside_it_suspended_the_run_is_not_run_again(
    client: Client, clock: FakeClock
) -> None:
    release = asyncio.Event()
    calls: list[int] = []

    @client.define_job(id="gather-wait", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def charge() -> str:
            calls.append(ctx.attempt)
            await release.wait()
            await io.logger.info("charged")
            return "receipt"

        receipt, _ = await asyncio.gather(io.run_task("charge", charge), io.wait("nap", 1))
        return receipt

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("gather-wait")
        await finished(client, run.id, "WAITING")
        done = await finished_late(client, clock, run.id, release, "charge")
    assert (done.status, done.output, done.attempt) == ("SUCCESS", "receipt", 2), done.error
    assert calls == [1]
    logs = (await client.aio.get_run(run.id)).logs
    assert [line.message for line in logs] == ["charged"]


async def test_a_task_finishing_after_a_failed_task_beside_it_suspended_the_run_is_not_run_again(
    client: Client, clock: FakeClock
) -> None:
    release = asyncio.Event()
    slow_calls: list[int] = []
    flaky_calls: list[int] = []

    @client.define_job(id="gather-retry", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def slow() -> str:
            slow_calls.append(ctx.attempt)
            await release.wait()
            return "slow"

        def flaky() -> str:
            flaky_calls.append(ctx.attempt)
            if len(flaky_calls) == 1:
                raise ConnectionError("first call fails")
            return "flaky"

        retry = {"limit": 3, "min_timeout_ms": 1000, "randomize": False}
        return await asyncio.gather(io.run_task("slow", slow), io.run_task("f", flaky, retry=retry))

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("gather-retry")
        await finished(client, run.id, "WAITING")
        done = await finished_late(client, clock, run.id, release, "slow")
    assert (done.status, done.output) == ("SUCCESS", ["slow", "flaky"]), done.error
    assert (slow_calls, flaky_calls) == ([1], [1, 2])


async def test_a_task_failing_after_a_wait_beside_it_suspended_the_run_retries_at_its_own_time(
    client: Client, clock: FakeClock
) -> None:
    release = asyncio.Event()
    calls: list[int] = []

    @client.define_job(id="gather-late-fail", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def fetch() -> str:
            calls.append(clock.now)
            if len(calls) == 1:
                await release.wait()
                raise ConnectionError("the first try fails, after the run was suspended")
            return "data"

        retry = {"limit": 3, "min_timeout_ms": 10_000, "randomize": False}
        data, _ = await asyncio.gather(io.run_task("fetch", fetch, retry=retry), io.wait("nap", 1))
        return data

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("gather-late-fail")
        await finished(client, run.id, "WAITING")
        release.set()
        await eventually(lambda: _task(client, run.id, "fetch", "WAITING"))
        failed_at = clock.now
        clock.advance(2)  # the nap is over, the retry is not due: the run waits again

        async def waits_for_the_retry() -> bool:
            now = (await client.aio.get_run(run.id)).run
            return now.status == "WAITING" and now.attempt == 2

        await eventually(waits_for_the_retry)
        assert len(calls) == 1
        clock.advance(10)
        done = await finished(client, run.id)
    assert (done.status, done.output) == ("SUCCESS", "data"), done.error
    assert len(calls) == 2 and calls[1] >= failed_at + 10_000


async def test_lines_after_a_task_that_finished_late_are_kept_in_order(
    client: Client, clock: FakeClock
) -> None:
    release = asyncio.Event()

    @client.define_job(id="late-lines", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def charge() -> str:
            await release.wait()
            await io.logger.info("charged")  # after the nap suspended the run
            return "receipt"

        async def charge_then_note() -> str:
            receipt = await io.run_task("charge", charge)
            await io.logger.info("charge done")
            return receipt

        await io.logger.info("start")
        receipt, _ = await asyncio.gather(charge_then_note(), io.wait("nap", 1))
        await io.logger.info("end")
        return receipt

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("late-lines")
        await finished(client, run.id, "WAITING")
        done = await finished_late(client, clock, run.id, release, "charge")
    assert (done.status, done.output) == ("SUCCESS", "receipt"), done.error
    logs = (await client.aio.get_run(run.id)).logs
    assert [line.message for line in logs] == ["start", "charged", "charge done", "end"]


async def test_an_io_call_sent_as_the_run_was_suspended_does_not_lose_a_late_outcome(
    client: Client, clock: FakeClock
) -> None:
    release = asyncio.Event()
    calls: list[int] = []

    @client.define_job(id="gather-three", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def charge() -> str:
            calls.append(ctx.attempt)
            await release.wait()
            return "receipt"

        receipt, _, _ = await asyncio.gather(
            io.run_task("charge", charge),
            io.wait("nap", 1),
            io.run_task("note", lambda: "noted"),  # reaches the server after the nap
        )
        return receipt

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("gather-three")
        await finished(client, run.id, "WAITING")

        async def charging() -> bool:
            return len(calls) == 1

        await eventually(charging)
        done = await finished_late(client, clock, run.id, release, "charge")
    assert (done.status, done.output, calls) == ("SUCCESS", "receipt", [1]), done.error


async def test_each_try_of_a_task_keeps_its_late_lines(client: Client, clock: FakeClock) -> None:
    releases = [asyncio.Event(), asyncio.Event()]
    calls: list[int] = []

    @client.define_job(id="late-tries", version="1.0.0", trigger=invoke_trigger())
    async def handler(payload: Any, io: IO, ctx: RunContext) -> Any:
        async def fetch() -> str:
            calls.append(ctx.attempt)
            n = len(calls)
            await releases[n - 1].wait()  # the run was suspended beside this try
            await io.logger.info(f"try {n}, late")
            if n == 1:
                raise ConnectionError("the first try fails late")
            return "data"

        async def naps() -> None:
            await io.wait("nap1", 1)
            await io.wait("nap2", 1)

        retry = {"limit": 3, "min_timeout_ms": 1000, "randomize": False}
        data, _ = await asyncio.gather(io.run_task("fetch", fetch, retry=retry), naps())
        return data

    async with Worker(client) as worker:
        await serving(worker)
        run = await client.aio.invoke_job("late-tries")
        await finished(client, run.id, "WAITING")
        releases[0].set()
        await eventually(lambda: _task(client, run.id, "fetch", "WAITING"))
        clock.advance(2)  # nap1 and the retry are due: attempt 2 runs try 2, waits on nap2

        async def second_try_suspended() -> bool:
            now = (await client.aio.get_run(run.id)).run
            return now.status == "WAITING" and now.attempt == 2 and len(calls) == 2

        await eventually(second_try_suspended)
        releases[1].set()
        await eventually(lambda: _task(client, run.id, "fetch", "COMPLETED"))
        clock.advance(2)
        done = await finished(client, run.id)
    assert (done.status, done.output) == ("SUCCESS", "data"), done.error
    logs = (await client.aio.get_run(run.id)).logs
    assert [line.message for line in logs] == ["try 1, late", "try 2, late"]
