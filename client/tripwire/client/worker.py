"""The worker: one RunJob stream to the server, each run executed as its own asyncio task.

```python
async with Worker(client, jobs=[first_job, second_job]) as worker:
    ...                       # runs are executed in the background
await Worker(client).run()    # until shutdown(); client.listen() does this with signals
```

A session is one stream: ``hello`` (this worker's jobs and capacity), ``welcome``, then a
heartbeat task, a reader dispatching the server's messages, and one task per run; every
outbound message goes through one queue that feeds the stream. When the stream breaks, the
local runs are stopped (the server dispatches them again, with a higher attempt) and the
worker reconnects with capped, fully jittered exponential backoff, reset once a stream has
stayed healthy for a while. ``drain`` from the server, or :meth:`Worker.shutdown`, stops
taking runs, lets the running ones finish within a deadline, then closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol, Self, TypeVar

import grpc
from tripwire.client._channel import ClientBase, Settings, open_async
from tripwire.client.errors import TripwireError, error_class, from_rpc_error
from tripwire.client.io import Execution, error_text
from tripwire.client.jobs import JobDefinition, execute_run
from tripwire.v1 import run_pb2, worker_service_pb2, worker_service_pb2_grpc

__all__ = ["Backoff", "StreamCall", "Worker", "backoff_delay", "heartbeat_loop", "listen"]

log = logging.getLogger("tripwire.worker")
T = TypeVar("T")
Request = worker_service_pb2.RunJobRequest
Sleep = Callable[[float], Awaitable[None]]

# Codes that another attempt cannot fix: stop and raise instead of reconnecting.
_FATAL = frozenset(
    getattr(grpc.StatusCode, name)
    for name in (
        "INVALID_ARGUMENT UNAUTHENTICATED PERMISSION_DENIED UNIMPLEMENTED NOT_FOUND "
        "FAILED_PRECONDITION ALREADY_EXISTS OUT_OF_RANGE"
    ).split()
)
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_DEFAULT_HEARTBEAT = 10.0
_DEFAULT_LEASE = 30.0
# After half-closing, how long the server has to end the stream.
_CLOSE_TIMEOUT = 5.0
# Requests waiting together go as one batch of at most about this many bytes.
BATCH_BYTES = 1024 * 1024
# The most runs a worker's hello may ask for at once (the server refuses more).
MAX_CAPACITY = 10_000
# The longest drain a Drain message's deadline_ms (uint32) can announce: ~49 days.
MAX_SHUTDOWN_TIMEOUT = (2**32 - 1) // 1000


def _sdk() -> str:
    try:
        return f"tripwire-python/{metadata.version('tripwire')}"
    except metadata.PackageNotFoundError:
        return "tripwire-python/0"


class StreamCall(Protocol):
    """What the worker uses of a ``grpc.aio`` stream-stream call (fakes provide the same)."""

    async def read(self) -> Any: ...  # a RunJobResponse, or grpc.aio.EOF

    def cancel(self) -> bool: ...


#: Opens a RunJob stream fed by the given requests.
Connect = Callable[[AsyncIterator[Request]], StreamCall]


def backoff_delay(
    attempt: int, *, base: float = 0.1, cap: float = 5.0, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before reconnect number ``attempt`` (from 0): "full jitter", uniform in
    ``[0, min(cap, base * 2**attempt)]``, so many workers do not reconnect in step."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 64))
    return rand() * ceiling


class Backoff:
    """Reconnect delays: growing per failed try, reset after a healthy stream."""

    def __init__(
        self,
        *,
        base: float = 0.1,
        cap: float = 5.0,
        healthy_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base, self.cap, self.healthy_after = base, cap, healthy_after
        self.attempt = 0
        self._clock, self._rand = clock, rand
        self._healthy_since: float | None = None

    def connected(self) -> None:
        """A stream was established (welcome received)."""
        self._healthy_since = self._clock()

    def next_delay(self) -> float:
        """The delay before the next connection attempt."""
        since, self._healthy_since = self._healthy_since, None
        if since is not None and self._clock() - since >= self.healthy_after:
            self.attempt = 0
        delay = backoff_delay(self.attempt, base=self.base, cap=self.cap, rand=self._rand)
        self.attempt += 1
        return delay


class _PoolFuture(Future[T]):
    """A pool job's future. Cancelling it while its function runs (the run it
    belongs to was stopped) cannot stop the function: its thread is written off
    instead, so that it no longer counts toward the pool's size."""

    def __init__(self, pool: DaemonPool) -> None:
        super().__init__()
        self._pool = pool

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if not self.done():
            self._pool._written_off(self)
        return False


class DaemonPool(Executor):
    """The threads that run plain handlers and task functions. Daemons: a function
    still running when the worker has stopped (its run given back after the drain
    deadline) cannot keep the process from exiting, as a ThreadPoolExecutor's
    threads would.

    At most `size` threads, plus one for each function still running for a run
    that was stopped (cancelled, abandoned, timed out): Python cannot stop a
    thread, and a function that never returns must not starve the runs that
    come after it. Such a thread ends once its function returns."""

    def __init__(self, size: int, name: str) -> None:
        self._size, self._name = size, name
        self._jobs: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._jobs = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._started = 0
        self._idle = 0  # below 0: jobs queued with no thread free for them yet
        self._lock = threading.Lock()
        self._closed = False
        self._written: set[Future[Any]] = set()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if kwargs:
            raise TypeError("DaemonPool.submit takes positional arguments only")
        future: Future[T] = _PoolFuture(self)
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker's thread pool is shut down")
            self._jobs.put((future, fn, args))
            if self._idle == 0 and len(self._threads) < self._size:
                self._start()
            else:
                self._idle -= 1
        return future

    def _start(self) -> None:
        thread = threading.Thread(
            target=self._serve, name=f"{self._name}_{self._started}", daemon=True
        )
        self._started += 1
        self._threads.append(thread)
        thread.start()

    def _written_off(self, future: Future[Any]) -> None:
        with self._lock:
            if future in self._written or future.done() or self._closed:
                return
            self._written.add(future)
            self._size += 1
            if self._idle < 0:  # a job waits for a thread: it gets one now
                self._idle += 1
                self._start()
            stuck = len(self._written)
        log.warning(
            "a plain function of a stopped run is still running in its thread; "
            "another thread serves new runs meanwhile (%d such function(s) now)",
            stuck,
        )

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                if future in self._written:
                    self._written.discard(future)
                    self._size -= 1
                    if len(self._threads) > self._size:  # the thread it was written off as
                        self._threads.remove(threading.current_thread())
                        return
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        job[0].cancel()
            threads = list(self._threads)
            for _ in threads:
                self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()


async def heartbeat_loop(send: Callable[[], None], interval: float, sleep: Sleep) -> None:
    """Send a heartbeat every ``interval`` seconds, forever (cancel to stop)."""
    while True:
        await sleep(interval)
        send()


class _Outbox(asyncio.Queue[Request | None]):
    """What the stream sends, in order (None half-closes it). Once the server says
    it reads batches, whatever has piled up goes as one message, up to about
    BATCH_BYTES: under load, far fewer and larger messages.

    It also keeps the worker's side of the lease: the server gives this worker's
    runs away when it has heard nothing from it for a lease, so a gap that long
    between two messages handed to gRPC (the process was paused, or its loop
    blocked) means the runs may be someone else's by now."""

    batches = False
    lease: float | None = None  # from the welcome
    lost = False  # a gap between two messages sent was longer than the lease

    def __init__(self) -> None:
        super().__init__()
        self.sent_at = time.monotonic()

    def sent(self) -> None:
        now = time.monotonic()
        if self.lease is not None and now - self.sent_at > self.lease:
            self.lost = True
        self.sent_at = now

    def lease_held(self) -> bool:
        """False once the server may have taken this worker's runs away: nothing
        was sent for a lease (now, or at some point since the welcome)."""
        if self.lease is None:
            return True
        if time.monotonic() - self.sent_at > self.lease:
            self.lost = True
        return not self.lost


async def _requests(queue: _Outbox) -> AsyncIterator[Request]:
    held: Request | None = None
    while True:
        message = held if held is not None else await queue.get()
        held = None
        if message is None:
            return
        if not queue.batches or queue.empty():
            queue.sent()
            yield message
            continue
        batch = Request()
        messages = batch.batch.messages
        messages.append(message)
        size, end = message.ByteSize(), False
        while not queue.empty():
            more = queue.get_nowait()
            if more is None:
                end = True
                break
            grown = size + more.ByteSize()
            if grown > BATCH_BYTES:
                held = more
                break
            messages.append(more)
            size = grown
        queue.sent()
        yield batch if len(messages) > 1 else message
        if end:
            return


async def _first(awaitable: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``awaitable``'s result, or None (having cancelled it) if ``stop`` is set first."""
    work = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    return None if work.cancelled() else work.result()


@dataclass(slots=True)
class _Running:
    execution: Execution
    task: asyncio.Task[None]


class _Session:
    """One stream: its outbound queue, reader and runs."""

    def __init__(self, worker: Worker, call: StreamCall, queue: _Outbox):
        self.worker = worker
        self.call = call
        self.queue = queue
        self.runs: dict[str, _Running] = {}
        self.assembling: dict[str, tuple[worker_service_pb2.RunRequest, list[run_pb2.Task]]] = {}
        self.no_runs = asyncio.Event()
        self.no_runs.set()
        self.draining = False
        # Nothing more can be sent: a run request arriving now is not started (the
        # server gives it to another worker once this one's lease is over).
        self.half_closed = False
        self.reader: asyncio.Task[None] | None = None
        self.closer: asyncio.Task[None] | None = None
        self.close_at = 0.0  # loop time: runs still executing then are stopped
        # Set when a closing session should look again: the end moved nearer, or a
        # run on its way (its cached pages arriving) started or was called off.
        self.close_wake = asyncio.Event()
        # When the server last said anything; if it answers heartbeats (its welcome
        # says so), silence for a whole lease means the stream is dead.
        self.last_heard = time.monotonic()
        self.answers_heartbeats = False
        # How many messages this stream has read, the welcome included, sent in each
        # heartbeat: the server drops a worker that sends but stopped reading.
        self.received = 1
        # Set when a run finds the lease gone (see _Outbox): the session ends, its
        # runs stop, and the worker connects again.
        self.lease_lost = asyncio.Event()

    def lease_held(self) -> bool:
        if self.queue.lease_held():
            return True
        self.lease_lost.set()
        return False

    def send(self, message: Request) -> None:
        self.queue.put_nowait(message)

    async def read_loop(self) -> None:
        while (message := await self.call.read()) is not grpc.aio.EOF:
            self.last_heard = time.monotonic()
            self.received += 1
            self.dispatch(message)

    def dispatch(self, message: worker_service_pb2.RunJobResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "batch":
            for inner in message.batch.messages:
                if inner.HasField("batch"):
                    log.warning("a batch inside a batch from the server; ignored")
                else:
                    self.dispatch(inner)
        elif kind == "run_request":
            self.on_run_request(message.run_request)
        elif kind == "cached_tasks":
            self.on_cached_tasks(message.cached_tasks)
        elif kind == "task_result":
            running = self.current(message.task_result.run_id, message.task_result.attempt)
            if running is not None:
                running.execution.resolve(message.task_result)
        elif kind in ("cancel", "abandon"):
            notice = message.cancel if kind == "cancel" else message.abandon
            pending = self.assembling.get(notice.run_id)
            if pending is not None and notice.attempt in (0, pending[0].run.attempt):
                del self.assembling[notice.run_id]  # its cached pages were still coming
                self.close_wake.set()
                log.info("run %s: %s before it started", notice.run_id, kind)
                self.worker._activity.set()
            running = self.current(notice.run_id, notice.attempt)
            if running is not None:
                log.info("run %s: %s (%s)", notice.run_id, kind, notice.reason or "no reason")
                self.stop_run(notice.run_id)
        elif kind == "drain":
            log.info("the server asks to drain within %d ms", message.drain.deadline_ms)
            self.close(message.drain.deadline_ms / 1000)
        elif kind == "rejected":
            self.on_rejected(message.rejected)
        # `heartbeat` (the server's answer: it moved last_heard), `welcome` again, or
        # a kind this SDK does not know yet: nothing to do.

    def current(self, run_id: str, attempt: int) -> _Running | None:
        running = self.runs.get(run_id)
        if running is None or (attempt and attempt != running.execution.attempt):
            return None
        return running

    def on_run_request(self, request: worker_service_pb2.RunRequest) -> None:
        self.worker._activity.set()
        if self.half_closed:
            log.warning("run %s arrived after the stream was closed; not started", request.run.id)
            return
        if self.draining:
            # Sent before the server read this worker's drain: run it like the rest,
            # within the same deadline, rather than leave it held here unstarted.
            log.info("run %s arrived while draining; running it", request.run.id)
        if request.cached_tasks_complete:
            self.start(request, list(request.cached_tasks))
        else:
            self.assembling[request.run.id] = (request, list(request.cached_tasks))

    def on_cached_tasks(self, page: worker_service_pb2.CachedTasks) -> None:
        entry = self.assembling.get(page.run_id)
        if self.half_closed or entry is None or entry[0].run.attempt != page.attempt:
            return
        entry[1].extend(page.tasks)
        if page.last:
            del self.assembling[page.run_id]
            self.start(*entry)

    def on_rejected(self, rejected: worker_service_pb2.Rejected) -> None:
        code = _CODES.get(rejected.code, grpc.StatusCode.UNKNOWN)
        log.warning(
            "the server rejected %s (run %s): %s %s",
            rejected.request_id or "a message",
            rejected.run_id or "-",
            code.name,
            rejected.message,
        )
        if not rejected.request_id:
            return
        candidates = [self.runs[rejected.run_id]] if rejected.run_id in self.runs else []
        for running in candidates or list(self.runs.values()):
            error = error_class(code)(f"rejected by the server: {rejected.message}", code=code)
            if running.execution.reject(rejected.request_id, error):
                return

    def start(self, request: worker_service_pb2.RunRequest, cached: list[run_pb2.Task]) -> None:
        run = request.run
        previous = self.runs.get(run.id)
        if previous is not None:
            if previous.execution.attempt >= run.attempt:
                return  # a duplicate of what is already running
            self.stop_run(run.id)
        if not self.queue.lease_held():  # sent before a pause: another worker's by now
            log.warning("run %s arrived after this worker's lease ran out; not started", run.id)
            self.lease_lost.set()
            return
        execution = Execution(
            run.id,
            run.attempt,
            cached,
            self.send,
            executor=self.worker._pool,
            lease_held=self.lease_held,
        )
        task = asyncio.create_task(self.worker._execute(request, execution), name=f"run {run.id}")
        self.runs[run.id] = _Running(execution, task)
        self.no_runs.clear()
        self.close_wake.set()
        task.add_done_callback(lambda done: self.finished(run.id, done))

    def finished(self, run_id: str, task: asyncio.Task[None]) -> None:
        running = self.runs.get(run_id)
        if running is not None and running.task is task:
            del self.runs[run_id]
        if not self.runs:
            self.no_runs.set()
        self.worker._activity.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("run %s: the worker failed", run_id, exc_info=task.exception())

    def stop_run(self, run_id: str) -> None:
        running = self.runs.pop(run_id, None)
        if running is not None:
            running.execution.halt()
            running.task.cancel()
        if not self.runs:
            self.no_runs.set()

    def stop_all(self) -> None:
        self.assembling.clear()
        for run_id in list(self.runs):
            self.stop_run(run_id)

    def close(self, deadline: float) -> None:
        """Ask the server for no more runs, finish the running ones (and any already on
        their way) within ``deadline`` seconds, close the stream. Asked again (the
        server drains, then the application shuts down, or the other way round), the
        earlier of the two ends holds."""
        end = asyncio.get_running_loop().time() + max(deadline, 0)
        if self.closer is None:
            log.info(
                "draining: no more runs asked for; %d running run(s) have %g s to finish",
                len(self.runs),
                max(deadline, 0),
            )
            self.draining = True
            self.close_at = end
            # So that the server sends no more runs here (they go to other workers).
            drain = worker_service_pb2.Drain(deadline_ms=int(max(deadline, 0) * 1000))
            # (__init__ keeps shutdown_timeout within what deadline_ms can say)
            self.send(Request(drain=drain))
            self.closer = asyncio.create_task(self._close(), name="tripwire-close")
        elif end < self.close_at:
            self.close_at = end
            self.close_wake.set()

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        # A loop, not one wait: a run that arrives while draining (sent before the
        # server read the drain, or still getting its cached pages) starts after
        # no_runs was set, and gets the rest of the time too; and a later close()
        # may bring the end nearer.
        while (self.runs or self.assembling) and (left := self.close_at - loop.time()) > 0:
            self.close_wake.clear()
            if self.runs:
                waiting = _first(self.no_runs.wait(), self.close_wake)
            else:  # only runs still getting their cached pages
                waiting = self.close_wake.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiting, left)
        if self.runs:
            log.warning("stopping %d run(s) still executing at the deadline", len(self.runs))
        self.stop_all()
        self.half_closed = True
        self.queue.put_nowait(None)  # half-close: the server ends the stream
        reader = self.reader
        if reader is not None:
            await asyncio.wait({reader}, timeout=_CLOSE_TIMEOUT)
            reader.cancel()


class Worker:
    """Executes the runs of ``jobs`` (default: the jobs defined on ``client``).

    ``capacity`` is how many runs may execute at once. ``shutdown_timeout`` is how long
    :meth:`shutdown` lets running runs finish. ``welcome_timeout`` is how long a new
    stream waits for the server's ``welcome`` before it is given up and another is
    opened on a new connection. ``backoff`` paces reconnections; ``connect`` and
    ``sleep`` replace the gRPC stream and the waits in tests.
    """

    def __init__(
        self,
        client: ClientBase,
        jobs: Iterable[JobDefinition] | None = None,
        *,
        capacity: int = 10,
        worker_id: str | None = None,
        shutdown_timeout: float = 30.0,
        welcome_timeout: float = _DEFAULT_LEASE,
        backoff: Backoff | None = None,
        connect: Connect | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if jobs is None:
            jobs = getattr(client, "jobs", None) or ()
        self._jobs: dict[str, JobDefinition] = {}
        for job in jobs:
            if not isinstance(job, JobDefinition):
                raise TypeError(f"jobs must be JobDefinitions (define_job), got {job!r}")
            if job.id in self._jobs:
                raise ValueError(f"job id {job.id!r} is given twice")
            self._jobs[job.id] = job
        if not self._jobs:
            raise ValueError("a worker needs at least one job (define_job, or jobs=[...])")
        if (
            isinstance(capacity, bool)
            or not isinstance(capacity, int)
            or not 1 <= capacity <= MAX_CAPACITY
        ):
            raise ValueError(
                f"capacity must be an integer from 1 to {MAX_CAPACITY}, got {capacity!r}"
            )
        if not welcome_timeout > 0:
            raise ValueError(f"welcome_timeout must be > 0 seconds, got {welcome_timeout!r}")
        if not 0 <= shutdown_timeout <= MAX_SHUTDOWN_TIMEOUT:
            raise ValueError(
                f"shutdown_timeout must be 0 to {MAX_SHUTDOWN_TIMEOUT} seconds, "
                f"got {shutdown_timeout!r}"
            )
        self.client = client
        self.capacity = capacity
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.shutdown_timeout = shutdown_timeout
        self.welcome_timeout = welcome_timeout
        self.backoff = backoff or Backoff()
        self._connect = connect
        self._sleep = sleep
        self._hello = worker_service_pb2.Hello(
            worker_id=self.worker_id,
            jobs=[job.to_proto() for job in self._jobs.values()],
            capacity=capacity,
            sdk=_sdk(),
            accepts_batches=True,
        )
        self._session: _Session | None = None
        self._pool: DaemonPool | None = None
        self._running = False
        self._stopping = False
        self._stop_before_start = False
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._connected = asyncio.Event()
        self._activity = asyncio.Event()
        self._background: asyncio.Task[None] | None = None
        self.heartbeat_interval: float | None = None

    @property
    def jobs(self) -> tuple[JobDefinition, ...]:
        return tuple(self._jobs.values())

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def draining(self) -> bool:
        """True while the stream is closing (``drain`` or shutdown): the server is asked
        for no more runs; those already on their way still run until the stream closes."""
        return self._session is not None and self._session.draining

    @property
    def active_runs(self) -> int:
        return len(self._session.runs) if self._session else 0

    async def wait_connected(self) -> None:
        """Return once a stream is open (its jobs registered); wrap in a timeout."""
        await self._connected.wait()

    async def run(self, *, burst: bool = False, idle_timeout: float = 0.5) -> None:
        """Serve until :meth:`shutdown` (or, with ``burst``, until idle: no run executing
        and none received for ``idle_timeout`` seconds after connecting).

        Raises a :class:`~tripwire.client.errors.TripwireError` when the server refuses
        the worker for good (e.g. INVALID_ARGUMENT for a bad job, UNAUTHENTICATED).
        """
        self._begin()
        await self._serve_until_stopped(burst, idle_timeout)

    def _begin(self) -> None:
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running, self._stopping = True, self._stop_before_start
        self._stop_before_start = False
        self._finished.clear()
        if self._stopping:
            self._stop.set()  # a shutdown asked for before the start: serve nothing
        else:
            self._stop.clear()

    async def _serve_until_stopped(self, burst: bool, idle_timeout: float) -> None:
        connect, close = self._open()
        self._pool = DaemonPool(self.capacity + 4, "tripwire-run")
        idle = asyncio.create_task(self._watch_idle(idle_timeout)) if burst else None
        try:
            while not self._stopping:
                why = "closed"
                try:
                    ended = await self._serve(connect)
                    if ended != "closed":
                        # gRPC would open the next stream on the same dead connection.
                        why = ended
                        await close()
                        connect, close = self._open()
                except grpc.RpcError as exc:
                    if exc.code() in _FATAL:
                        raise from_rpc_error(exc) from exc
                    why = f"{exc.code().name}: {exc.details()}"
                if not self._stopping:
                    delay = self.backoff.next_delay()
                    log.warning("no stream to the server (%s); retrying in %.2f s", why, delay)
                    await _first(self._sleep(delay), self._stop)
        finally:
            if idle is not None:
                idle.cancel()
            await close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._running = False
            self._finished.set()

    def request_shutdown(self) -> None:
        """Start a graceful shutdown without waiting for it (safe from signal handlers).
        Asked for before the first :meth:`run` has started, it makes that run return at
        once."""
        if not self._running:
            # Before the first run only: after one has ended, the next starts afresh.
            self._stop_before_start = not self._finished.is_set()
            return
        if self._stopping:
            return
        self._stopping = True
        self._stop.set()
        if self._session is not None:
            self._session.close(self.shutdown_timeout)

    async def shutdown(self) -> None:
        """Drain: ask the server for no more runs, let running ones (and any already on
        their way) finish within ``shutdown_timeout``, close the stream, and wait for
        :meth:`run` to return."""
        self.request_shutdown()
        if self._running:
            await self._finished.wait()

    async def __aenter__(self) -> Self:
        self._begin()  # now, so that leaving the block at once still stops it
        self._background = asyncio.create_task(
            self._serve_until_stopped(False, 0.5), name="tripwire-worker"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()
        if self._background is not None:
            task, self._background = self._background, None
            await task

    def _open(self) -> tuple[Connect, Callable[[], Awaitable[None]]]:
        if self._connect is not None:
            return self._connect, _nothing
        client = self.client
        settings = Settings(client.name, client.url, client.api_key, timeout=None)
        channel = open_async(settings, own_connection=True, reconnect_cap=self.backoff.cap)
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)

        def connect(requests: AsyncIterator[Request]) -> StreamCall:
            call: StreamCall = stub.RunJob(requests, metadata=settings.metadata)
            return call

        return connect, channel.close

    async def _serve(self, connect: Connect) -> str:
        """One stream, until it ends: "closed", or why the server is taken for gone."""
        queue = _Outbox()
        queue.put_nowait(Request(hello=self._hello))
        call = connect(_requests(queue))
        session = _Session(self, call, queue)
        heartbeat: asyncio.Task[None] | None = None
        watchdog: asyncio.Task[str] | None = None
        try:
            try:
                first = await asyncio.wait_for(
                    _first(call.read(), self._stop), self.welcome_timeout
                )
            except TimeoutError:
                return f"no welcome within {self.welcome_timeout:g} s"
            if first is None or first is grpc.aio.EOF:
                return "closed"
            if first.WhichOneof("message") != "welcome":
                raise TripwireError(f"expected welcome, got {first.WhichOneof('message')}")
            welcome = first.welcome
            # Word from the server: silence is counted from here, not from the hello
            # (a welcome that came late, the server stalled, is no silence).
            session.last_heard = time.monotonic()
            self.heartbeat_interval = welcome.heartbeat_interval_ms / 1000 or _DEFAULT_HEARTBEAT
            log.info(
                "connected to %s as %s, serving %s (session %s)",
                self.client.url,
                self.worker_id,
                ", ".join(f"{job.id}@{job.version}" for job in self._jobs.values()),
                welcome.session_id,
            )
            self._session = session
            self.backoff.connected()
            self._connected.set()
            self._activity.set()
            heartbeat = asyncio.create_task(
                heartbeat_loop(
                    lambda: queue.put_nowait(
                        Request(heartbeat=worker_service_pb2.Heartbeat(received=session.received))
                    ),
                    self.heartbeat_interval,
                    self._sleep,
                ),
                name="tripwire-heartbeat",
            )
            session.reader = reader = asyncio.create_task(session.read_loop(), name="tripwire-read")
            lease = welcome.lease_ms / 1000 or _DEFAULT_LEASE
            session.answers_heartbeats = welcome.answers_heartbeats
            queue.batches = welcome.accepts_batches
            # The server's lease starts at its welcome, however long the hello took.
            queue.lease, queue.sent_at = lease, time.monotonic()
            watchdog = asyncio.create_task(self._watch(session, lease), name="tripwire-watchdog")
            if self._stopping:
                session.close(self.shutdown_timeout)
            await asyncio.wait({reader, heartbeat, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if heartbeat.done():
                heartbeat.result()  # it never returns: this re-raises its failure
            if watchdog.done():  # cancel it (below) and reconnect on a new connection
                return watchdog.result()
            if not reader.cancelled():  # cancelled: closing gave up waiting for the server
                reader.result()
            return "closed"
        finally:
            self._connected.clear()
            self._session = None
            session.stop_all()
            for task in (heartbeat, watchdog, session.reader, session.closer):
                if task is not None:
                    task.cancel()
            call.cancel()
            # A cancelled task keeps its CancelledError, whose traceback holds the
            # task's frames and so the session: a cycle, with the call and its
            # connection in it, that only a full garbage collection would free.
            session.reader = session.closer = None

    async def _watch(self, session: _Session, lease: float) -> str:
        """Return (why) when the server has given this worker's runs away, so that
        only a new stream helps: a server that answers heartbeats has said nothing
        for a lease (the connection is half-open: a dead NAT entry, a partition), or
        this worker sent nothing for a lease (it was paused, or its loop blocked)."""
        interval = min(self.heartbeat_interval or _DEFAULT_HEARTBEAT, lease / 2)
        while True:
            # Wall time, whatever sleep the worker was given.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.lease_lost.wait(), interval)
            if not session.lease_held():
                log.warning(
                    "this worker sent nothing for over a lease (%g s): it was paused or "
                    "its loop blocked, and the server has given its runs away; reconnecting",
                    lease,
                )
                return "the lease ran out while this worker was paused"
            silent = time.monotonic() - session.last_heard
            if session.answers_heartbeats and silent > lease:
                log.warning(
                    "nothing from the server for %.1f s (lease %g s); reconnecting", silent, lease
                )
                return "no word from the server for a lease"

    async def _execute(self, request: worker_service_pb2.RunRequest, execution: Execution) -> None:
        try:
            result = await execute_run(self._jobs, request, execution, self.worker_id)
            if result is not None:
                execution.send(Request(run_result=result))
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # an outcome the SDK could not even report
            log.exception("run %s: its outcome could not be reported", execution.run_id)
            if not execution.halted:  # never leave the run EXECUTING with nobody on it
                result = worker_service_pb2.RunResult(
                    run_id=execution.run_id, attempt=execution.attempt
                )
                result.error.type = "WorkerError"
                result.error.message = error_text(
                    f"the worker could not report the run's outcome: {exc!r}"
                )
                execution.send(Request(run_result=result))
        finally:
            execution.end()  # io calls the handler left running fail; nothing more is sent

    async def _watch_idle(self, idle_timeout: float) -> None:
        await self._connected.wait()
        while True:
            self._activity.clear()
            busy = self._session is not None and (self._session.runs or self._session.assembling)
            if busy:
                await self._activity.wait()
                continue
            try:
                await asyncio.wait_for(self._activity.wait(), idle_timeout)
            except TimeoutError:
                self.request_shutdown()
                return


async def _nothing() -> None:
    return None


def _unclaimed(handler: object) -> bool:
    """Python's default handling, or asyncio.run's own SIGINT handler (which only
    cancels the main task, so that Ctrl-C would stop the worker without draining)."""
    if handler in (signal.SIG_DFL, signal.default_int_handler):
        return True
    if isinstance(handler, functools.partial):  # asyncio.Runner binds its main task so
        handler = handler.func
    return isinstance(getattr(handler, "__self__", None), asyncio.Runner)


async def serve_until_signalled(worker: Worker) -> None:
    """Run `worker`; the first SIGTERM or SIGINT drains it, a second cancels the caller."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("shutting down: finishing running runs (signal again to stop now)")
            worker.request_shutdown()
        elif main is not None:
            main.cancel()

    installed: list[tuple[signal.Signals, Any]] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not _unclaimed(previous):
            continue  # the application handles it: leave its handler alone
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or a platform without them
        installed.append((sig, previous))
    try:
        await worker.run()
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            # That leaves Python's default; asyncio.run's own handler goes back too.
            signal.signal(sig, previous)


def listen(client: ClientBase, jobs: Iterable[JobDefinition] | None = None, **options: Any) -> None:
    """Run a worker until SIGTERM or SIGINT (which drain it; a second one stops it now)."""
    worker = Worker(client, jobs, **options)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(serve_until_signalled(worker))
