"""The tripwire client, in an asyncio flavour and a blocking one.

Both have the same methods with the same arguments; the requests and the conversion of
replies are built in one place (:mod:`tripwire.client._requests`), so each class is only
the loop that executes calls: with the API key as metadata, the configured timeout, and
a few jittered retries on UNAVAILABLE for calls that are safe to repeat (reads, sends of
events, whose ids are chosen here, and invokes with an idempotency key).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import (
    AsyncGenerator,
    Callable,
    Collection,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, closing, contextmanager
from typing import Any, Self, TypeVar, Unpack

import grpc
from tripwire.client import _requests
from tripwire.client._channel import (
    DEFAULT_URL,
    ClientBase,
    Stubs,
    open_async,
    open_sync,
    retry_delay,
    rewatch_delay,
)
from tripwire.client._requests import Call
from tripwire.client.errors import Cancelled, DeadlineExceeded, TripwireError, from_rpc_error
from tripwire.client.jobs import Handler, JobDefinition, JobRegistry
from tripwire.client.models import (
    TERMINAL_RUN_STATUSES,
    Event,
    EventDetail,
    Job,
    JobMatch,
    LogEntry,
    Page,
    Run,
    RunDetail,
    Task,
    Trigger,
)
from tripwire.client.options import (
    EventFilters,
    InvokeOptions,
    JobOptions,
    PageOptions,
    RunFilters,
    SendOptions,
    send_options,
)

__all__ = ["AsyncClient", "Client", "RunUpdate"]

R = TypeVar("R")
RunUpdate = Run | Task | LogEntry


class AsyncClient(ClientBase):
    """asyncio client. The channel opens on first use, in the running event loop.

    ``async with AsyncClient("my-app") as client: await client.send_event({...})``.
    Every method is documented on :class:`Client`, which has the same ones, blocking.
    """

    _channel: grpc.aio.Channel | None = None
    _stubs: Stubs | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def _live_stubs(self) -> Stubs:
        loop = asyncio.get_running_loop()
        # An aio channel is bound to the loop it was made in; a new loop needs a new one.
        if self._stubs is None or self._loop is not loop:
            self._channel = open_async(self._settings)
            self._stubs = Stubs(self._channel)
            self._loop = loop
        return self._stubs

    async def close(self) -> None:
        """Close the channel (a later call opens a new one)."""
        channel, loop = self._channel, self._loop
        self._channel = self._stubs = self._loop = None
        if channel is not None and loop is asyncio.get_running_loop():
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, call: Call[R]) -> R:
        return (await self._tries(call))[0]

    async def _tries(self, call: Call[R]) -> tuple[R, int]:
        """The call's result, and how many tries it took."""
        stubs = self._live_stubs()
        method = getattr(getattr(stubs, call.service), call.method)
        settings = self._settings
        attempt = 0
        while True:
            try:
                reply = await method(
                    call.request, timeout=settings.timeout, metadata=settings.metadata
                )
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                raise _closed_under_the_call() from None
            except grpc.aio.UsageError:  # a try after the client was closed
                if self._stubs is stubs:
                    raise
                raise _closed_under_the_call() from None
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = retry_delay(call.idempotent, error, attempt)
                if delay is None:
                    raise error from exc
            else:
                return call.convert(reply), attempt + 1
            await asyncio.sleep(delay)
            attempt += 1

    async def _as_sent(self, event: Event, call: Call[Any]) -> Event:
        if not _requests.stored_by_an_earlier_try(event, call):
            return event
        return _requests.as_first_sent(await self.get_event(event.id))

    async def send_event(
        self,
        event: Mapping[str, Any],
        options: SendOptions | None = None,
        /,
        **more: Unpack[SendOptions],
    ) -> Event:
        call = _requests.send_event(event, **send_options(options, more))
        with _naming_ids(call):
            sent, tries = await self._tries(call)
            return sent if tries == 1 else await self._as_sent(sent, call)

    async def send_events(
        self,
        events: Sequence[Mapping[str, Any]],
        options: SendOptions | None = None,
        /,
        **more: Unpack[SendOptions],
    ) -> list[Event]:
        call = _requests.send_events(events, **send_options(options, more))
        if not _requests.sent_ids(call):
            return []
        with _naming_ids(call):
            sent, tries = await self._tries(call)
            return sent if tries == 1 else await self._read_back(sent, call)

    async def _read_back(self, sent: list[Event], call: Call[Any]) -> list[Event]:
        """_as_sent for each event of a repeated batch, LOOKUPS_AT_ONCE at a time; the
        first failure stops the others before it is raised."""
        reading = asyncio.Semaphore(LOOKUPS_AT_ONCE)

        async def as_sent(event: Event) -> Event:
            async with reading:
                return await self._as_sent(event, call)

        lookups = [asyncio.ensure_future(as_sent(e)) for e in sent]
        try:
            return list(await asyncio.gather(*lookups))
        finally:
            for lookup in lookups:
                lookup.cancel()
            await asyncio.gather(*lookups, return_exceptions=True)

    async def get_event(self, id: str) -> EventDetail:
        detail, token = await self._call(_requests.get_event(id))
        while token:  # an event with many large runs comes in pages
            page, token = await self._call(_requests.get_event(id, token))
            detail = _requests.more_event_detail(detail, page)
        return detail

    async def list_events(self, **filters: Unpack[EventFilters]) -> Page[Event]:
        return await self._call(_requests.list_events(**filters))

    async def cancel_event(self, id: str) -> Event:
        return await self._call(_requests.cancel_event(id))

    async def cancel_runs_for_event(self, id: str) -> list[str]:
        return await self._call(_requests.cancel_runs_for_event(id))

    async def match_event(self, event: Mapping[str, Any]) -> list[JobMatch]:
        return await self._call(_requests.match_event(event))

    async def register_job(
        self, id: str, *, version: str, trigger: Trigger, **options: Unpack[JobOptions]
    ) -> Job:
        return await self._call(
            _requests.register_job(id, version=version, trigger=trigger, **options)
        )

    async def get_job(self, id: str, *, version: str | None = None) -> Job:
        job, token = await self._call(_requests.get_job(id, version))
        while token:  # a job with many large versions comes in pages
            page, token = await self._call(_requests.get_job(id, version, token))
            job = _requests.more_job_versions(job, page)
        return job

    async def list_jobs(self, **page: Unpack[PageOptions]) -> Page[Job]:
        return await self._call(_requests.list_jobs(**page))

    async def set_job_enabled(
        self, job_id: str, enabled: bool, *, version: str | None = None
    ) -> list[Job]:
        jobs, more = await self._call(_requests.set_job_enabled(job_id, enabled, version))
        if more:  # too large for one reply: every version changed, read in pages
            jobs = list((await self.get_job(job_id)).versions)
        return jobs

    async def invoke_job(
        self, job_id: str, payload: Any = None, **options: Unpack[InvokeOptions]
    ) -> Run:
        return await self._call(_requests.invoke_job(job_id, payload, **options))

    async def get_run(self, id: str) -> RunDetail:
        detail, token = await self._call(_requests.get_run(id))
        while token:  # a large run comes in pages
            page, token = await self._call(_requests.get_run(id, token))
            detail = _requests.more_run_detail(detail, page)
        return detail

    async def list_runs(self, **filters: Unpack[RunFilters]) -> Page[Run]:
        return await self._call(_requests.list_runs(**filters))

    async def cancel_run(self, id: str) -> Run:
        return await self._call(_requests.cancel_run(id))

    def watch_run(
        self, id: str, *, timeout: float | None = None
    ) -> AsyncGenerator[RunUpdate, None]:
        """As Client.watch_run; an async generator, so `contextlib.aclosing` ends it."""
        return self._watch(_requests.watch_run(id, timeout), timeout)

    async def _watch(
        self,
        request: Any,
        timeout: float | None,  # noqa: ASYNC109 (the whole watch's deadline)
        *,
        resume: bool = False,
    ) -> AsyncGenerator[RunUpdate, None]:
        attempt, watched = 0, False
        end = None if timeout is None else time.monotonic() + float(timeout)
        error: TripwireError | None = None  # why the last stream ended
        stubs = self._live_stubs()  # closed under the watch: Cancelled, not a new channel
        while True:
            left = _time_left(end, error)
            try:
                stream = stubs.runs.WatchRun(
                    request, timeout=left, metadata=self._settings.metadata
                )
            except grpc.aio.UsageError:
                if self._stubs is stubs:
                    raise
                raise _closed_under_the_call() from None
            try:
                async for reply in stream:
                    watched, attempt = True, 0
                    update = _requests.watch_update(reply)
                    if update is not None:
                        yield update
                return
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                raise _closed_under_the_call() from None
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = rewatch_delay(
                    error, attempt, watched=watched, resume=resume, deadline=end is not None
                )
                if delay is None:
                    raise error from exc
                delay = _pause_within(delay, end, error)
            finally:
                stream.cancel()
            await asyncio.sleep(delay)
            attempt += 1

    async def wait_for_run(
        self,
        id: str,
        *,
        statuses: Collection[str] = TERMINAL_RUN_STATUSES,
        timeout: float | None = None,  # noqa: ASYNC109 (the watch's gRPC deadline)
    ) -> Run:
        wanted = _requests.run_statuses(statuses)
        last: Run | None = None
        watch = self._watch(_requests.watch_run(id, timeout), timeout, resume=True)
        try:
            async with aclosing(watch) as updates:
                async for update in updates:
                    if isinstance(update, Run):
                        last = update
                        if update.status in wanted:
                            return update
        except DeadlineExceeded as exc:
            raise _requests.wait_timed_out(id, last, wanted, timeout, exc) from None
        raise _requests.wait_ended(id, last, wanted)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _closed_under_the_call() -> TripwireError:
    """What a CancelledError in a call becomes when this task is not being cancelled:
    the client's channel was closed under the call (gRPC cancels its calls then),
    which the caller must not take for its own cancellation. Also what a call's next
    try (after UNAVAILABLE) or a watch's next stream ends with once the client was
    closed meanwhile: gRPC refuses the closed channel with a ValueError or a
    UsageError, and a new channel would outlive the close."""
    return Cancelled("the client was closed during the call")


# How many events a repeated send_events reads back at once (see _as_sent).
LOOKUPS_AT_ONCE = 16


@contextmanager
def _naming_ids(call: Call[Any]) -> Iterator[None]:
    """A failed send's error carries the ids it sent (TripwireError.event_ids)."""
    try:
        yield
    except TripwireError as exc:
        exc.event_ids = _requests.sent_ids(call)
        raise


def _pause_within(delay: float, end: float | None, error: TripwireError) -> float:
    """The pause before watching again, cut to what is left of the watch's time; none
    left: DeadlineExceeded (a server that cannot be reached answers a deadline of 0
    UNAVAILABLE, which would be watched again and again)."""
    if end is None:
        return delay
    left = end - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"deadline exceeded watching the run: {error.details}")
    return min(delay, left)


def _time_left(end: float | None, error: TripwireError | None = None) -> float | None:
    """The gRPC deadline of the next stream of a watch that must be over by ``end``;
    none left: DeadlineExceeded before any call (a deadline of 0 raced the server's
    first reply, which often won), saying why the last stream ended, if one did."""
    if end is None:
        return None
    left = end - time.monotonic()
    if left <= 0:
        why = error.details if error is not None else "its time was spent"
        raise DeadlineExceeded(f"deadline exceeded watching the run: {why}")
    return left


class Client(ClientBase):
    """Blocking client: ``with Client("my-app") as client: client.send_event({...})``.

    The gRPC channel opens on first use and is safe to share between threads.
    ``client.aio`` is an :class:`AsyncClient` with the same settings and methods.
    Every call raises a :class:`~tripwire.client.errors.TripwireError` subclass on failure.
    """

    def __init__(
        self,
        name: str,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 30,
    ) -> None:
        super().__init__(name, url, api_key=api_key, timeout=timeout)
        self._channel: grpc.Channel | None = None
        self._stubs: Stubs | None = None
        self._lock = threading.Lock()
        self._aio: AsyncClient | None = None
        #: The jobs defined with :meth:`define_job`, which :meth:`listen` serves.
        self.jobs = JobRegistry()

    @property
    def aio(self) -> AsyncClient:
        """The asyncio flavour with the same settings (one instance; ``await`` its close)."""
        with self._lock:
            if self._aio is None:
                s = self._settings
                self._aio = AsyncClient(s.name, s.url, api_key=s.api_key, timeout=s.timeout)
            return self._aio

    def _live_stubs(self) -> Stubs:
        with self._lock:
            if self._stubs is None:
                self._channel = open_sync(self._settings)
                self._stubs = Stubs(self._channel)
            return self._stubs

    def close(self) -> None:
        """Close the channel (a later call opens a new one)."""
        with self._lock:
            channel, self._channel, self._stubs = self._channel, None, None
        if channel is not None:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, call: Call[R]) -> R:
        return self._tries(call)[0]

    def _tries(self, call: Call[R]) -> tuple[R, int]:
        """The call's result, and how many tries it took."""
        stubs = self._live_stubs()
        method = getattr(getattr(stubs, call.service), call.method)
        settings = self._settings
        attempt = 0
        while True:
            try:
                reply = method(call.request, timeout=settings.timeout, metadata=settings.metadata)
            except ValueError:  # gRPC's "Cannot invoke RPC on closed channel!"
                if self._stubs is stubs:
                    raise
                raise _closed_under_the_call() from None
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = retry_delay(call.idempotent, error, attempt)
                if delay is None:
                    raise error from exc
            else:
                return call.convert(reply), attempt + 1
            time.sleep(delay)
            attempt += 1

    def _as_sent(self, event: Event, call: Call[Any]) -> Event:
        if not _requests.stored_by_an_earlier_try(event, call):
            return event
        return _requests.as_first_sent(self.get_event(event.id))

    def send_event(
        self,
        event: Mapping[str, Any],
        options: SendOptions | None = None,
        /,
        **more: Unpack[SendOptions],
    ) -> Event:
        """Send one event: a dict with ``name`` and optionally payload, context, id,
        timestamp, source. Without an ``id`` the client picks a ULID, so a retry cannot
        send it twice. The reply carries the runs an immediate delivery created. Options
        (``deliver_at``, ``deliver_after``, ``account_id``) come as a dict, as keywords,
        or both."""
        call = _requests.send_event(event, **send_options(options, more))
        with _naming_ids(call):
            sent, tries = self._tries(call)
            return sent if tries == 1 else self._as_sent(sent, call)

    def send_events(
        self,
        events: Sequence[Mapping[str, Any]],
        options: SendOptions | None = None,
        /,
        **more: Unpack[SendOptions],
    ) -> list[Event]:
        """Send a batch atomically (all or none), in order, with the same options."""
        call = _requests.send_events(events, **send_options(options, more))
        if not _requests.sent_ids(call):
            return []
        with _naming_ids(call):
            sent, tries = self._tries(call)
            if tries == 1:
                return sent
            with ThreadPoolExecutor(LOOKUPS_AT_ONCE, thread_name_prefix="tripwire-read") as pool:
                return list(pool.map(lambda e: self._as_sent(e, call), sent))

    def get_event(self, id: str) -> EventDetail:
        """An event and every run it created."""
        detail, token = self._call(_requests.get_event(id))
        while token:  # an event with many large runs comes in pages
            page, token = self._call(_requests.get_event(id, token))
            detail = _requests.more_event_detail(detail, page)
        return detail

    def list_events(self, **filters: Unpack[EventFilters]) -> Page[Event]:
        """Events newest first, by ``name`` and ``status``, a page at a time."""
        return self._call(_requests.list_events(**filters))

    def cancel_event(self, id: str) -> Event:
        """Cancel a pending event: it will never be delivered. Its runs are untouched."""
        return self._call(_requests.cancel_event(id))

    def cancel_runs_for_event(self, id: str) -> list[str]:
        """Cancel every unfinished run of an event; returns the ids of those cancelled."""
        return self._call(_requests.cancel_runs_for_event(id))

    def match_event(self, event: Mapping[str, Any]) -> list[JobMatch]:
        """Dry run: which jobs this event would run, and why not the others."""
        return self._call(_requests.match_event(event))

    def register_job(
        self, id: str, *, version: str, trigger: Trigger, **options: Unpack[JobOptions]
    ) -> Job:
        """Register (upsert) one version of a job."""
        return self._call(_requests.register_job(id, version=version, trigger=trigger, **options))

    def get_job(self, id: str, *, version: str | None = None) -> Job:
        """A job version (the latest by default), with ``versions`` filled."""
        job, token = self._call(_requests.get_job(id, version))
        while token:  # a job with many large versions comes in pages
            page, token = self._call(_requests.get_job(id, version, token))
            job = _requests.more_job_versions(job, page)
        return job

    def list_jobs(self, **page: Unpack[PageOptions]) -> Page[Job]:
        """The latest version of every job, by id."""
        return self._call(_requests.list_jobs(**page))

    def set_job_enabled(
        self, job_id: str, enabled: bool, *, version: str | None = None
    ) -> list[Job]:
        """Enable or disable one version, or every version; returns those changed."""
        jobs, more = self._call(_requests.set_job_enabled(job_id, enabled, version))
        if more:  # too large for one reply: every version changed, read in pages
            jobs = list(self.get_job(job_id).versions)
        return jobs

    def invoke_job(self, job_id: str, payload: Any = None, **options: Unpack[InvokeOptions]) -> Run:
        """Start a run of the job's latest version now. With an ``idempotency_key``
        used before, nothing starts: the earlier run comes back with ``deduplicated``;
        a key that is another event's id raises AlreadyExists."""
        return self._call(_requests.invoke_job(job_id, payload, **options))

    def get_run(self, id: str) -> RunDetail:
        """A run with its tasks (by position) and logs (by seq), all of them."""
        detail, token = self._call(_requests.get_run(id))
        while token:  # a large run comes in pages
            page, token = self._call(_requests.get_run(id, token))
            detail = _requests.more_run_detail(detail, page)
        return detail

    def list_runs(self, **filters: Unpack[RunFilters]) -> Page[Run]:
        """Runs newest first, by job, event and status, a page at a time."""
        return self._call(_requests.list_runs(**filters))

    def cancel_run(self, id: str) -> Run:
        """Cancel an unfinished run (FAILED_PRECONDITION once it has finished)."""
        return self._call(_requests.cancel_run(id))

    def watch_run(
        self, id: str, *, timeout: float | None = None
    ) -> Generator[RunUpdate, None, None]:
        """The run, its tasks and logs, then every change until the run finishes.
        ``timeout`` bounds the whole watch (none by default). A generator:
        ``contextlib.closing`` (or ``.close()``) ends the watch at once."""
        return self._watch(_requests.watch_run(id, timeout), timeout)

    def _watch(
        self, request: Any, timeout: float | None, *, resume: bool = False
    ) -> Generator[RunUpdate, None, None]:
        attempt, watched = 0, False
        end = None if timeout is None else time.monotonic() + float(timeout)
        error: TripwireError | None = None  # why the last stream ended
        stubs = self._live_stubs()  # closed under the watch: Cancelled, not a new channel
        while True:
            left = _time_left(end, error)
            try:
                stream = stubs.runs.WatchRun(
                    request, timeout=left, metadata=self._settings.metadata
                )
            except ValueError:  # gRPC's "Cannot invoke RPC: Channel closed!"
                if self._stubs is stubs:
                    raise
                raise _closed_under_the_call() from None
            try:
                for reply in stream:
                    watched, attempt = True, 0
                    update = _requests.watch_update(reply)
                    if update is not None:
                        yield update
                return
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = rewatch_delay(
                    error, attempt, watched=watched, resume=resume, deadline=end is not None
                )
                if delay is None:
                    raise error from exc
                delay = _pause_within(delay, end, error)
            finally:
                stream.cancel()
            time.sleep(delay)
            attempt += 1

    def wait_for_run(
        self,
        id: str,
        *,
        statuses: Collection[str] = TERMINAL_RUN_STATUSES,
        timeout: float | None = None,
    ) -> Run:
        """The run as soon as its status is one of ``statuses`` (default: finished).
        DeadlineExceeded (a TimeoutError) after ``timeout`` seconds, saying where the
        run stands; FailedPrecondition if the run
        finishes in another status. A server that goes away meanwhile (a restart) is
        watched again, with backoff, for as long as the wait lasts."""
        wanted = _requests.run_statuses(statuses)
        last: Run | None = None
        watch = self._watch(_requests.watch_run(id, timeout), timeout, resume=True)
        try:
            with closing(watch) as updates:
                for update in updates:
                    if isinstance(update, Run):
                        last = update
                        if update.status in wanted:
                            return update
        except DeadlineExceeded as exc:
            raise _requests.wait_timed_out(id, last, wanted, timeout, exc) from None
        raise _requests.wait_ended(id, last, wanted)

    # -- worker ----------------------------------------------------------------------

    def define_job(
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
        """Decorator defining a job served by this client's worker; checked right away
        (JobDefinitionError for a bad id, version, cron, handler or a repeated id).
        The handler takes ``(payload, io, ctx)``; see :mod:`tripwire.client.jobs`."""
        return self.jobs.define(
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

    def listen(
        self, *, capacity: int = 10, worker_id: str | None = None, shutdown_timeout: float = 30
    ) -> None:
        """Serve the defined jobs until SIGTERM or SIGINT, which drain the worker
        (a second signal stops it at once). Reconnects with backoff when the server goes."""
        from tripwire.client.worker import listen

        listen(self, capacity=capacity, worker_id=worker_id, shutdown_timeout=shutdown_timeout)

    async def run_worker(
        self,
        *,
        capacity: int = 10,
        worker_id: str | None = None,
        shutdown_timeout: float = 30,
        handle_signals: bool = True,
    ) -> None:
        """Serve the defined jobs in this event loop until cancelled, or until SIGTERM
        or SIGINT, which drain the worker as ``listen()`` does (when this loop runs in
        the main thread; ``handle_signals=False`` leaves the signals to the caller).
        :class:`~tripwire.client.worker.Worker` adds shutdown() and burst mode."""
        from tripwire.client.worker import Worker, serve_until_signalled

        worker = Worker(
            self, capacity=capacity, worker_id=worker_id, shutdown_timeout=shutdown_timeout
        )
        if handle_signals:
            await serve_until_signalled(worker)
        else:
            await worker.run()
