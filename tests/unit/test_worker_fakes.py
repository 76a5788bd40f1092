"""In-memory fakes of the worker's seams, shared by the test_worker_* modules.

- :class:`FakeServer` stands in for ``connect``: each call opens a :class:`FakeStream`
  with the read/cancel surface of a ``grpc.aio`` stream-stream call, consuming the
  worker's request iterator as gRPC would.
- :class:`FakeSleep` stands in for ``asyncio.sleep``: it records each delay and returns
  only when the test releases it, so time moves only when a test says so.
- :class:`Wire` is the server's end of a single :class:`Execution`.

Every wait has a deadline (``asyncio.wait_for``); nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from tripwire.client.convert import to_value
from tripwire.v1 import run_pb2, worker_service_pb2

Request = worker_service_pb2.RunJobRequest
Response = worker_service_pb2.RunJobResponse
DEADLINE = 5.0


async def within(awaitable: Any, limit: float = DEADLINE) -> Any:
    """``awaitable``'s result, failing the test after ``limit`` seconds."""
    return await asyncio.wait_for(awaitable, limit)


def task(
    id: str,
    key: str,
    status: str = "COMPLETED",
    *,
    kind: str = "RUN",
    parent: str = "",
    output: Any = None,
    error: tuple[str, str] | None = None,
) -> run_pb2.Task:
    message = run_pb2.Task(
        id=id,
        key=key,
        parent_id=parent,
        kind=run_pb2.TaskKind.Value(f"TASK_KIND_{kind}"),
        status=run_pb2.TaskStatus.Value(f"TASK_STATUS_{status}"),
    )
    if status == "COMPLETED":
        message.output.CopyFrom(to_value(output))
    if error is not None:
        message.error.CopyFrom(run_pb2.ErrorInfo(type=error[0], message=error[1]))
    return message


def result(request_id: str, run_id: str, attempt: int, answer: run_pb2.Task) -> Any:
    return worker_service_pb2.TaskResult(
        request_id=request_id, run_id=run_id, attempt=attempt, task=answer
    )


def as_json(message: Any) -> Any:
    return json_format.MessageToDict(message)


class Wire:
    """The server's end of one execution: what it sent, in order."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[Request] = asyncio.Queue()

    def __call__(self, message: Request) -> None:
        self.sent.put_nowait(message)

    async def next(self, kind: str) -> Any:
        message = await within(self.sent.get())
        assert message.WhichOneof("message") == kind, message
        return getattr(message, kind)

    def drained(self) -> list[Request]:
        items = []
        while not self.sent.empty():
            items.append(self.sent.get_nowait())
        return items


class FakeStream:
    """One RunJob call: the worker reads replies the test queued; its requests are kept."""

    def __init__(self, requests: AsyncIterator[Request], auto_end: bool = True) -> None:
        self.received: asyncio.Queue[Request] = asyncio.Queue()
        self.log: list[Request] = []
        self.batches: list[int] = []  # the size of each batch received, unpacked
        self.half_closed = asyncio.Event()
        self.cancelled = False
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self._auto_end = auto_end
        self._pump = asyncio.get_running_loop().create_task(self._consume(requests))

    async def _consume(self, requests: AsyncIterator[Request]) -> None:
        async for message in requests:
            self.log.append(message)
            if message.HasField("batch"):
                self.batches.append(len(message.batch.messages))
                for inner in message.batch.messages:
                    self.received.put_nowait(inner)
            else:
                self.received.put_nowait(message)
        self.half_closed.set()
        if self._auto_end:  # as the server does when the worker half-closes
            self.end()

    # -- the worker's side (the grpc.aio call surface) --

    async def read(self) -> Any:
        item = await self._replies.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> bool:
        self.cancelled = True
        self._pump.cancel()
        return True

    # -- the test's side --

    def reply(self, **fields: Any) -> None:
        self._replies.put_nowait(Response(**fields))

    def welcome(
        self,
        heartbeat_interval_ms: int = 600_000,
        lease_ms: int = 1_800_000,
        *,
        accepts_batches: bool = False,
    ) -> None:
        self.reply(
            welcome=worker_service_pb2.Welcome(
                session_id="s1",
                heartbeat_interval_ms=heartbeat_interval_ms,
                lease_ms=lease_ms,
                accepts_batches=accepts_batches,
            )
        )

    def end(self) -> None:
        self._replies.put_nowait(grpc.aio.EOF)

    def fail(self, code: grpc.StatusCode, details: str = "boom") -> None:
        metadata = grpc.aio.Metadata()
        self._replies.put_nowait(grpc.aio.AioRpcError(code, metadata, metadata, details))

    async def expect(self, kind: str, *, skip: tuple[str, ...] = ("heartbeat",)) -> Any:
        """The next message of the worker that is not in ``skip``; it must be ``kind``."""
        while True:
            message = await within(self.received.get())
            got = message.WhichOneof("message")
            if got in skip:
                continue
            assert got == kind, message
            return getattr(message, kind)


class FakeServer:
    """The ``connect`` seam: every connection opens a new FakeStream."""

    def __init__(self, auto_end: bool = True) -> None:
        self.streams: asyncio.Queue[FakeStream] = asyncio.Queue()
        self.opened: list[FakeStream] = []
        self.auto_end = auto_end

    def __call__(self, requests: AsyncIterator[Request]) -> FakeStream:
        stream = FakeStream(requests, self.auto_end)
        self.opened.append(stream)
        self.streams.put_nowait(stream)
        return stream

    async def next_stream(self) -> FakeStream:
        stream: FakeStream = await within(self.streams.get())
        return stream


class FakeSleep:
    """``asyncio.sleep`` whose calls wait until the test releases them."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[tuple[float, asyncio.Future[None]]] = asyncio.Queue()

    async def __call__(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls.put_nowait((delay, future))
        await future

    async def next(self) -> tuple[float, asyncio.Future[None]]:
        call: tuple[float, asyncio.Future[None]] = await within(self.calls.get())
        return call


# -- the fakes behave like what they stand for -------------------------------------------


async def test_fake_stream_reads_replies_and_collects_requests() -> None:
    queue: asyncio.Queue[Request | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[Request]:
        while (message := await queue.get()) is not None:
            yield message

    stream = FakeServer()(requests())
    queue.put_nowait(Request(heartbeat=worker_service_pb2.Heartbeat()))
    assert (await within(stream.received.get())).HasField("heartbeat")
    stream.welcome(1000)
    assert (await stream.read()).welcome.heartbeat_interval_ms == 1000
    queue.put_nowait(None)
    await within(stream.half_closed.wait())
    assert await stream.read() is grpc.aio.EOF


async def test_fake_stream_raises_the_error_it_was_given() -> None:
    async def nothing() -> AsyncIterator[Request]:
        return
        yield

    stream = FakeStream(nothing(), auto_end=False)
    stream.fail(grpc.StatusCode.UNAVAILABLE, "gone")
    try:
        await stream.read()
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE
        assert exc.details() == "gone"
    else:
        raise AssertionError("no error")
    stream.cancel()


async def test_fake_sleep_returns_only_when_released() -> None:
    sleep = FakeSleep()
    sleeper = asyncio.create_task(sleep(2.5))
    delay, release = await sleep.next()
    assert delay == 2.5 and not sleeper.done()
    release.set_result(None)
    await within(sleeper)
