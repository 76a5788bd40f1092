"""tripwire.v1.WorkerService: one RunJob stream per worker process.

The protocol is documented in worker_service.proto. Each stream is a
`WorkerStream`: it says hello, joins the dispatcher as a session, reads the
worker's messages (each handled in its own task, so one worker's writes are
group-committed together), and writes run requests and results from one
outbox. Silence for a whole lease ends the session; its runs go back to the
queue.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from tripwire.v1 import event_pb2, job_pb2, run_pb2, worker_service_pb2_grpc
from tripwire.v1 import worker_service_pb2 as pb

from ..config import Settings
from ..dispatcher import Dispatcher, Session
from ..errors import InvalidArgument, StaleAttempt, TripwireError, Unavailable
from ..events import MAX_ID_LENGTH, EventDraft
from ..ids import new_event_id
from ..models import Event, Job, Run, RunStatus, Task
from ..work import TaskInput, WorkService
from . import convert
from .rpc import (
    Authenticator,
    check_batch_count,
    check_batch_size,
    check_job_size,
    check_payload_size,
    status_of,
)

log = logging.getLogger(__name__)
# Cached tasks travel in messages of about this size (v2 capped the whole body at 3.5 MB).
TASK_PAGE_BYTES = 1024 * 1024
# A gone worker's runs go back to the queue even if the store fails for a while.
REQUEUE_RETRY_SECONDS = 0.1
REQUEUE_RETRY_MAX_SECONDS = 5.0
# A run whose dispatch could not be prepared goes back to the queue this much later.
START_FAILED_PAUSE_SECONDS = 1.0
SHUTTING_DOWN = "the server is shutting down; connect again later"
# A batch of replies (to a worker that reads them) stops growing at about this size.
BATCH_BYTES = 1024 * 1024
# Suspended runs a stream remembers (see WorkerStream.suspended), the oldest forgotten first.
MAX_SUSPENDED = 10_000
# Times of unread messages a stream keeps (see WorkerStream.unread): at most this
# many a lease, and this many in all (a worker whose heartbeats stop saying what
# it read keeps none past them).
UNREAD_MARKS = 16
MAX_UNREAD_MARKS = 1_024


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self, work: WorkService, dispatcher: Dispatcher, auth: Authenticator, settings: Settings
    ) -> None:
        self.work = work
        self.dispatcher = dispatcher
        self.auth = auth
        self.settings = settings
        self.streams: set[WorkerStream] = set()
        # Set when shutdown starts: a new stream is refused, one that slipped in
        # is told to drain at once.
        self.closing = False
        # Every task a stream started (message handlers, run requests), until done.
        self.tasks: set[asyncio.Task[None]] = set()
        self._job_messages: dict[tuple[str, str, str, int], job_pb2.Job] = {}
        # Requeues waiting for a lease to run out, with the runs they will give back.
        self._pending: dict[asyncio.Task[None], list[tuple[str, int]]] = {}

    async def RunJob(
        self, request_iterator: AsyncIterator[pb.RunJobRequest], context: Any
    ) -> AsyncIterator[pb.RunJobResponse]:
        try:
            env = self.auth.environment(context)
        except TripwireError as exc:
            await context.abort(status_of(exc), exc.message)
        if self.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        stream = WorkerStream(self, env, request_iterator)
        try:
            hello = await stream.hello()
        except TripwireError as exc:
            await context.abort(status_of(exc), exc.message)
        except TimeoutError:
            await context.abort(
                status_of(InvalidArgument("hello", "")),
                "hello: the worker must send hello first, within the lease",
            )
        except Exception:
            log.exception("hello of a worker failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        self.streams.add(stream)
        if self.closing:  # shutdown began while its hello was being stored
            stream.drain(0.0)
        try:
            yield hello
            async for reply in stream.serve():
                yield reply
        finally:
            self.streams.discard(stream)
            stream.close()
        if stream.end_reason:
            await context.abort(status_of(Unavailable(stream.end_reason)), stream.end_reason)

    async def close(self) -> None:
        """After the gRPC server stopped: end what the streams left running."""
        tasks = [*self._pending, *self.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def job_message(self, job: Job) -> job_pb2.Job:
        """A job version as a message, built once per registration (run requests carry it)."""
        key = (job.env, job.id, job.version, job.updated_at)
        message = self._job_messages.get(key)
        if message is None:
            if len(self._job_messages) > 1000:
                self._job_messages.clear()
            message = self._job_messages[key] = convert.job_to_pb(job, job_pb2.Job())
        return message

    def requeue_later(self, held: list[tuple[str, int]], delay: float) -> None:
        """Give runs back to the queue after `delay` (a gone worker's, once its lease
        has run out), trying until the store takes them."""
        if not held:
            return

        async def later() -> None:
            if delay > 0:
                await asyncio.sleep(delay)
            pause = REQUEUE_RETRY_SECONDS
            while True:
                try:
                    back = await self.work.store.requeue(held, self.work.clock())
                    break
                except Exception:  # the store failed (locked, disk full): try again
                    log.exception("requeueing %d runs failed; retrying in %g s", len(held), pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, REQUEUE_RETRY_MAX_SECONDS)
            del self._pending[task]
            if back:
                log.info("requeued %d runs", len(back))

        task = asyncio.create_task(later())
        self._pending[task] = held

    async def drain(self, deadline: float, hurry: asyncio.Event | None = None) -> None:
        """Shutdown: tell every worker to drain, wait for their runs (up to `deadline`
        seconds, or until `hurry` is set), requeue the rest."""
        self.closing = True
        self.dispatcher.pause()
        for stream in list(self.streams):
            stream.drain(deadline)
        waits = [asyncio.ensure_future(self.dispatcher.idle.wait())]
        if hurry is not None:
            waits.append(asyncio.ensure_future(hurry.wait()))
        await asyncio.wait(waits, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        held: list[tuple[str, int]] = []
        for stream in list(self.streams):
            held += stream.detach()
        for task, runs in list(self._pending.items()):
            task.cancel()
            held += runs
        self._pending.clear()
        if held:
            try:
                await self.work.store.requeue(held, self.work.clock())
            except Exception:  # the next start requeues every orphan anyway
                log.exception("requeueing %d runs at shutdown failed", len(held))


class WorkerStream:
    def __init__(
        self, servicer: WorkerServicer, env: str, requests: AsyncIterator[pb.RunJobRequest]
    ) -> None:
        self.servicer = servicer
        self.work = servicer.work
        self.dispatcher = servicer.dispatcher
        self.env = env
        self.requests = requests
        self.lease = servicer.settings.lease
        self.outbox: asyncio.Queue[pb.RunJobResponse | None] = asyncio.Queue()
        self.runs: dict[str, Run] = {}
        # Runs an attempt on this stream suspended (WAITING), newest last: the
        # functions still running beside the io call that suspended it may report.
        self.suspended: OrderedDict[str, int] = OrderedDict()
        self.session: Session | None = None
        # Why the server ended the stream, if it did.
        self.end_reason = ""
        self.last_seen = time.monotonic()
        # When the reply gRPC is writing now was handed to it (None: it is idle).
        self.writing_since: float | None = None
        # Messages handed to gRPC on this stream, the welcome first. A worker whose
        # heartbeats say how many it has read (Heartbeat.received) is held to it:
        # when the messages it has not read include one handed over a lease ago and
        # it has read nothing for a lease, it is dropped (`deaf`), however little
        # the server wrote (small messages never fill the connection's window, so
        # gRPC alone would not show it).
        self.sent = 1
        self.read = 0  # as the worker's heartbeats last said
        self.read_moved = 0.0  # when that last moved
        self.last_beat = time.monotonic()  # when its last heartbeat came
        # (number, when handed to gRPC) of messages not yet read, oldest first, a
        # few per lease; kept once the worker says what it read.
        self.unread: deque[tuple[int, float]] = deque()
        self.deaf = False
        self._handlers: set[asyncio.Task[None]] = set()
        self._tails: dict[str, asyncio.Task[None]] = {}  # run id -> its latest message's task
        # Run id -> the tasks of its log lines since that message (see _in_order).
        self._lines: dict[str, set[asyncio.Task[None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.batches = False  # the worker reads batches (its hello said so)

    async def hello(self) -> pb.RunJobResponse:
        try:
            first = await asyncio.wait_for(anext(self.requests), self.lease)
        except StopAsyncIteration:
            raise InvalidArgument("hello", "the stream ended before hello") from None
        if self.servicer.closing:
            raise Unavailable(SHUTTING_DOWN)
        if first.WhichOneof("message") != "hello":
            raise InvalidArgument("hello", "the first message on the stream must be hello")
        hello = first.hello
        jobs = []
        for i, message in enumerate(hello.jobs):
            check_job_size(message, self.servicer.settings.max_payload_bytes, f"hello.jobs[{i}]")
            try:
                jobs.append(convert.job_from_pb(message))
            except InvalidArgument as exc:  # named as in RegisterJob ("job.trigger...")
                where = f"hello.jobs[{i}]" + exc.field.removeprefix("job")
                problem = exc.message.removeprefix(f"{exc.field}: ")
                raise InvalidArgument(where, problem) from None
        self.batches = hello.accepts_batches
        registered = await self.work.hello(self.env, hello.worker_id, jobs, hello.capacity)
        self.session = Session(
            id=new_event_id(),
            env=self.env,
            worker_id=hello.worker_id,
            serves=frozenset((j.id, j.version) for j in registered),
            capacity=hello.capacity,
            link=self,
        )
        settings = self.servicer.settings
        # The lease starts now: storing the hello's jobs may have waited (a write
        # lock another process held), and the worker could not send meanwhile.
        self.last_seen = time.monotonic()
        return pb.RunJobResponse(
            welcome=pb.Welcome(
                session_id=self.session.id,
                heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
                lease_ms=int(settings.lease * 1000),
                answers_heartbeats=True,
                accepts_batches=True,
            )
        )

    async def serve(self) -> AsyncIterator[pb.RunJobResponse]:
        assert self.session is not None
        self.dispatcher.add_session(self.session)
        self._reader = asyncio.create_task(self._read())
        async for reply in outgoing(self.outbox, self.batches):
            self.writing_since = now = time.monotonic()
            self.sent += 1
            unread = self.unread
            if self.read and (not unread or now - unread[-1][1] >= self.lease / UNREAD_MARKS):
                # The first message of each 1/UNREAD_MARKS of a lease: the one after a
                # read count is taken as handed over no earlier than the mark after it.
                if len(unread) < MAX_UNREAD_MARKS:
                    unread.append((self.sent, now))
            yield reply  # gRPC comes back for the next once the worker took this one
            self.writing_since = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for task in self._handlers:
            task.cancel()
        held = self.detach()
        remaining = self.last_seen + self.lease - time.monotonic()
        self.servicer.requeue_later(held, remaining)

    def detach(self) -> list[tuple[str, int]]:
        if self.session is None:
            return []
        session, self.session = self.session, None
        return self.dispatcher.remove_session(session)

    def drain(self, deadline: float) -> None:
        if self.session is not None:
            self.session.draining = True
        self._send(pb.RunJobResponse(drain=pb.Drain(deadline_ms=int(deadline * 1000))))

    def _send(self, reply: pb.RunJobResponse) -> None:
        self.outbox.put_nowait(reply)

    # -- reading --------------------------------------------------------------------

    async def _read(self) -> None:
        """Read until the stream ends or the lease runs out: with nothing received,
        or with a reply the worker has not taken (it sends, but reads nothing: its
        replies would pile up here for ever, and its runs go nowhere)."""
        reader = asyncio.create_task(self._consume())
        try:
            while True:
                now = time.monotonic()
                remaining = self.last_seen + self.lease - now
                writing = self.writing_since
                unread = writing is not None and writing + self.lease <= now
                # A worker that says what it read must heartbeat: one that stopped,
                # with a message a lease old waiting, cannot be shown to read.
                marks = self.unread
                unread = unread or bool(
                    self.read and marks and now - max(marks[0][1], self.last_beat) >= self.lease
                )
                if remaining <= 0 or unread:
                    reader.cancel()
                    self._lease_expired(unread)
                    return
                if writing is not None:
                    remaining = min(remaining, writing + self.lease - now)
                if self.read and marks:
                    remaining = min(remaining, max(marks[0][1], self.last_beat) + self.lease - now)
                # One timer per lease, not per message: messages only move last_seen.
                done, _ = await asyncio.wait({reader}, timeout=remaining)
                if done:
                    if self.deaf:
                        self._lease_expired(unread=True)
                        return
                    if not reader.cancelled() and reader.exception() is not None:
                        log.error("reading a worker stream failed", exc_info=reader.exception())
                    return
        finally:
            reader.cancel()
            self.outbox.put_nowait(None)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._handlers.add(task)
        self.servicer.tasks.add(task)
        task.add_done_callback(self._handlers.discard)
        task.add_done_callback(self.servicer.tasks.discard)

    def _lease_expired(self, unread: bool = False) -> None:
        what = "nothing read from the stream" if unread else "nothing received"
        self.end_reason = (
            f"lease expired: {what} for {self.lease:g} s; the runs this worker held were given back"
        )
        log.warning(
            "worker %s %s for a whole lease; dropping it",
            self.session.worker_id if self.session else "?",
            "read nothing" if unread else "was silent",
        )
        held = self.detach()
        for run_id, attempt in held:
            self.stop_run(run_id, attempt, "lease expired", ended=False)
        # Its runs go back now: the lease is over.
        self.servicer.requeue_later(held, 0)

    async def _consume(self) -> None:
        async for msg in self.requests:
            self.last_seen = time.monotonic()
            kind = msg.WhichOneof("message")
            if kind == "batch":
                for i, inner in enumerate(msg.batch.messages):
                    inner_kind = inner.WhichOneof("message")
                    if inner_kind in ("batch", "hello", None):
                        field = f"batch.messages[{i}]"
                        problem = InvalidArgument(
                            field,
                            f"a batch cannot hold a {inner_kind}"
                            if inner_kind
                            else "is empty: it sets none of its fields",
                        )
                        self._send(_rejected("", "", problem))
                    else:
                        self._receive(inner, inner_kind)
            else:
                self._receive(msg, kind)
            if self.deaf:
                return
        # A clean close: what the worker sent last (often a run's result, when it
        # drains) is still stored before the stream ends.
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _heartbeat(self, received: int) -> None:
        """Answer a heartbeat: the worker's proof that the stream is alive.
        `received`: how many of this stream's messages the worker has read, if it says."""
        self.last_beat = now = time.monotonic()
        if received > self.read:
            if not self.read and received < self.sent:
                # Saying so for the first time: what it has not read went before now.
                self.unread.append((received + 1, now))
            self.read, self.read_moved = received, now
        unread = self.unread
        while unread and unread[0][0] <= received:
            unread.popleft()
        if unread and now - max(unread[0][1], self.read_moved) >= self.lease:
            # It sends, but has read nothing for a lease, with a message a lease old
            # waiting: its reader is stuck while its heartbeats go on.
            self.deaf = True
            return
        self._send(_HEARTBEAT)

    def _receive(self, msg: pb.RunJobRequest, kind: str | None) -> None:
        if kind == "heartbeat":
            self._heartbeat(msg.heartbeat.received)
            return
        handler = getattr(self, f"_on_{kind}", None) if kind else None
        if kind is None or handler is None:
            problem = (
                "is empty: it sets none of its fields" if kind is None else f"unexpected {kind}"
            )
            self._send(_rejected("", "", InvalidArgument("message", problem)))
            return
        body = getattr(msg, kind)
        for name in ("run_id", "request_id"):
            if len(getattr(body, name, "")) > MAX_ID_LENGTH:  # not echoed back: no id is
                problem = f"is longer than {MAX_ID_LENGTH} characters"
                self._send(_rejected("", "", InvalidArgument(f"{kind}.{name}", problem)))
                return
        if hasattr(body, "run_id") and not (body.run_id and body.attempt):
            # No run is "" and no attempt 0: a field left out (or misspelt, which
            # many JSON encoders drop), not a stale attempt to abandon.
            name, given = ("run_id", "id") if not body.run_id else ("attempt", "attempt")
            missing = InvalidArgument(
                f"{kind}.{name}", f"is required: the run request's run.{given}"
            )
            self._send(_rejected(getattr(body, "request_id", ""), body.run_id, missing))
            return
        self._in_order(getattr(body, "run_id", ""), handler, body, kind == "log")

    def _in_order(
        self,
        run_id: str,
        handler: Callable[[Any], Coroutine[Any, Any, None]],
        body: Any,
        line: bool = False,
    ) -> None:
        """Handle a message in its own task, after the earlier messages of the same run:
        a log sent just before a run's result is stored before the run ends. Log lines
        need no order among themselves (their seq places them): those in a row go to
        the store together, to share commits, and the next other message waits for all."""
        previous = self._tails.get(run_id)
        lines = self._lines.get(run_id, set())
        waits = [previous] if previous is not None else []
        if not line:
            waits += lines

        async def chained() -> None:
            if waits:
                await asyncio.wait(waits)
            try:
                await handler(body)
            except Exception:  # a bug, not the worker's fault; it must still hear back
                log.exception("handling a worker message for run %s failed", run_id)
                failure = TripwireError("internal error handling this message; see the server log")
                self._send(_rejected(getattr(body, "request_id", ""), run_id, failure))

        task = asyncio.create_task(chained())
        self._track(task)
        if line:
            self._lines.setdefault(run_id, set()).add(task)

            def line_done(task: asyncio.Task[None]) -> None:
                pending = self._lines.get(run_id)
                if pending is not None:
                    pending.discard(task)
                    if not pending:
                        del self._lines[run_id]

            task.add_done_callback(line_done)
            return
        self._lines.pop(run_id, None)  # this message waits for them
        self._tails[run_id] = task

        def done(task: asyncio.Task[None]) -> None:
            if self._tails.get(run_id) is task:
                del self._tails[run_id]

        task.add_done_callback(done)

    def _owned(self, run_id: str, attempt: int, request_id: str = "") -> Run | None:
        run = self.runs.get(run_id)
        session = self.session
        if run is None or session is None or not self.dispatcher.owns(session, run_id, attempt):
            self._send(
                pb.RunJobResponse(
                    abandon=pb.AbandonRun(
                        run_id=run_id,
                        attempt=attempt,
                        reason=f"attempt {attempt} of run {run_id} is not held by this worker",
                    )
                )
            )
            return None
        return run

    def _suspended_by(self, run_id: str, attempt: int, request_id: str = "") -> bool | None:
        """For what a function already running may still send: True if `attempt`
        suspended the run on this stream, False if it holds the run, None (and the
        worker is told to abandon it) if neither."""
        if self.suspended.get(run_id) == attempt:
            return True
        return None if self._owned(run_id, attempt, request_id) is None else False

    async def _guard(self, run_id: str, attempt: int, request_id: str, work: Any) -> Any:
        try:
            return await work
        except StaleAttempt as exc:
            if self.suspended.get(run_id) == attempt and not exc.ended:
                # Dispatched again since: anything more from this attempt is stale
                # (abandon). A run that has ended stays, so that all of it is
                # answered cancel.
                del self.suspended[run_id]
            self.stop_run(run_id, attempt, exc.message, ended=exc.ended)
            self.dispatcher.finished(run_id, attempt)
        except TripwireError as exc:
            self._send(_rejected(request_id, run_id, exc))
        except Exception as exc:  # the store failed (disk full, I/O): nothing was written
            log.exception("a worker message for run %s failed", run_id)
            failure = TripwireError(f"internal error, nothing was stored: {exc}")
            self._send(_rejected(request_id, run_id, failure))
        return None

    async def _on_task(self, msg: pb.TaskRequest) -> None:
        if self.suspended.get(msg.run_id) == msg.attempt:
            # Sent before the worker heard that the run was suspended: nothing new
            # starts, and what is already running may still report (not `abandon`),
            # unless the run was dispatched again or has ended since.
            still = await self._guard(
                msg.run_id,
                msg.attempt,
                msg.request_id,
                self.work.check_suspended(self.env, msg.run_id, msg.attempt),
            )
            if still is None:
                return  # stale (the worker was told to abandon the run), or rejected
            reply = pb.RunJobResponse()
            result = reply.task_result
            result.request_id, result.run_id, result.attempt = (
                msg.request_id,
                msg.run_id,
                msg.attempt,
            )
            result.task.key, result.task.parent_id, result.task.kind = (
                msg.key,
                msg.parent_id,
                msg.kind,
            )
            result.task.status = run_pb2.TASK_STATUS_WAITING
            self._send(reply)
            return
        run = self._owned(msg.run_id, msg.attempt, msg.request_id)
        if run is None:
            return
        try:
            settings = self.servicer.settings
            asked = _task_input(msg, settings)
        except TripwireError as exc:
            self._send(_rejected(msg.request_id, msg.run_id, exc))
            return
        outcome = await self._guard(
            msg.run_id,
            msg.attempt,
            msg.request_id,
            self.work.request_task(self.env, run, msg.attempt, asked),
        )
        if outcome is None:
            return
        if outcome.nondeterminism:
            self.stop_run(msg.run_id, msg.attempt, outcome.nondeterminism, ended=True)
            self.dispatcher.finished(msg.run_id, msg.attempt)
            return
        self._task_result(msg.request_id, msg.run_id, msg.attempt, outcome)

    def _task_result(self, request_id: str, run_id: str, attempt: int, outcome: Any) -> None:
        reply = pb.RunJobResponse()
        result = reply.task_result
        result.request_id, result.run_id, result.attempt = request_id, run_id, attempt
        convert.task_to_pb(outcome.task, result.task)
        self._send(reply)
        held = self.runs.get(run_id)
        if outcome.run.status is RunStatus.WAITING and held is not None and held.attempt == attempt:
            self._forget(run_id, attempt)
            self.dispatcher.finished(run_id, attempt)
            self.suspended[run_id] = attempt
            self.suspended.move_to_end(run_id)
            if len(self.suspended) > MAX_SUSPENDED:
                self.suspended.popitem(last=False)

    async def _on_task_complete(self, msg: pb.TaskComplete) -> None:
        suspended = self._suspended_by(msg.run_id, msg.attempt, msg.request_id)
        if suspended is None:
            return
        if msg.WhichOneof("outcome") is None:
            self._send(_rejected(msg.request_id, msg.run_id, _no_outcome("task_complete")))
            return
        output, error, final = _outcome(msg, "task output")
        outcome = await self._guard(
            msg.run_id,
            msg.attempt,
            msg.request_id,
            self.work.complete_task(
                self.env,
                msg.run_id,
                msg.attempt,
                msg.task_id,
                output,
                error,
                _outcome_bytes(msg),
                final=final,
                next_try_offset=msg.next_try_offset,
                suspended=suspended,
            ),
        )
        if outcome is not None:
            self._task_result(msg.request_id, msg.run_id, msg.attempt, outcome)

    async def _on_log(self, msg: pb.RunLog) -> None:
        suspended = self._suspended_by(msg.run_id, msg.attempt)
        if suspended is None:
            return
        try:
            level = convert.log_level_name(msg.level) or "INFO"
            data = convert.value_to_py(msg.data, "log.data") if msg.HasField("data") else None
        except TripwireError as exc:
            self._send(_rejected("", msg.run_id, exc))
            return
        await self._guard(
            msg.run_id,
            msg.attempt,
            "",
            self.work.log(
                self.env,
                msg.run_id,
                msg.attempt,
                msg.seq,
                level,
                msg.message,
                data,
                len(msg.message.encode()) + msg.data.ByteSize(),
                suspended=suspended,
            ),
        )

    async def _on_run_result(self, msg: pb.RunResult) -> None:
        if self.suspended.get(msg.run_id) == msg.attempt:
            # From an attempt that suspended the run: stale, answered abandon, or
            # cancel once the run has ended (cancelled while waiting, say).
            still = await self._guard(
                msg.run_id,
                msg.attempt,
                "",
                self.work.check_suspended(self.env, msg.run_id, msg.attempt),
            )
            if still is None:
                return
        if self._owned(msg.run_id, msg.attempt) is None:
            return
        if msg.WhichOneof("outcome") is None:
            # Not taken for a success: a worker that lost its error would report one.
            self._send(_rejected("", msg.run_id, _no_outcome("run_result")))
            return
        size = _outcome_bytes(msg)
        output, error, _ = _outcome(msg, "run output")
        # The worker is done with it: its slot is free now, whatever the commit's pace.
        self._forget(msg.run_id, msg.attempt)
        self.dispatcher.finished(msg.run_id, msg.attempt)

        async def finish() -> Run:
            try:
                return await self.work.finish(
                    self.env, msg.run_id, msg.attempt, output, error, size
                )
            except Unavailable:  # the database could not take it (full, locked)
                self._requeue_unstored(msg.run_id, msg.attempt)
                raise
            except TripwireError:
                raise
            except Exception:
                self._requeue_unstored(msg.run_id, msg.attempt)
                raise

        await self._guard(msg.run_id, msg.attempt, "", finish())

    def _requeue_unstored(self, run_id: str, attempt: int) -> None:
        """A result not stored, its slot already free: the run goes back to the queue
        (retried until the store takes it) rather than stay EXECUTING with nobody
        on it."""
        self.servicer.requeue_later([(run_id, attempt)], 0)

    async def _on_drain(self, msg: pb.Drain) -> None:
        """The worker shuts down on its own: no more runs for it."""
        if self.session is not None:
            self.session.draining = True
            log.info(
                "worker %s drains (%d ms for its runs)", self.session.worker_id, msg.deadline_ms
            )

    async def _on_hello(self, msg: pb.Hello) -> None:
        self._send(_rejected("", "", InvalidArgument("hello", "was already sent on this stream")))

    # -- the dispatcher's side (WorkerLink) -----------------------------------------

    def start_run(self, run: Run, event: Event | None) -> None:
        self.runs[run.id] = run
        self.suspended.pop(run.id, None)
        task = asyncio.create_task(self._start_run(run, event))
        self._track(task)

    async def _start_run(self, run: Run, event: Event | None) -> None:
        try:
            tasks: list[Task] = []
            if event is None or run.attempt > 1:
                event, tasks = await self.work.store.dispatch_context(self.env, run)
            job = await self.work.job(self.env, run.job_id, run.job_version)
        except Exception:
            log.exception("preparing run %s failed; it goes back to the queue", run.id)
            if self.runs.get(run.id) is run:
                self._forget(run.id, run.attempt)
                self.dispatcher.finished(run.id, run.attempt)
                # After a pause, so that a lasting fault does not spin through attempts.
                self.servicer.requeue_later([(run.id, run.attempt)], START_FAILED_PAUSE_SECONDS)
            return
        if self.runs.get(run.id) is not run:
            return  # cancelled or abandoned while we read: the worker never hears of it
        reply = pb.RunJobResponse()
        request = reply.run_request
        convert.run_to_pb(run, request.run)
        request.run.status = run_pb2.RUN_STATUS_EXECUTING
        if event is not None:
            # Without runs, whichever way the run came: the runs of the delivery at
            # hand are not read back for a run loaded from the store (GetEvent has them).
            convert.event_to_pb(event, request.event, with_runs=False)
        request.job.CopyFrom(self.servicer.job_message(job))
        convert.py_to_value(_ctx(self.env, run, event, job.id, job.version), request.ctx)
        pages = _pages(tasks, TASK_PAGE_BYTES - request.ByteSize())
        request.cached_tasks.extend(pages[0])
        request.cached_tasks_complete = len(pages) == 1
        self._send(reply)
        for i, page in enumerate(pages[1:], start=2):
            more = pb.RunJobResponse()
            more.cached_tasks.run_id, more.cached_tasks.attempt = run.id, run.attempt
            more.cached_tasks.last = i == len(pages)
            more.cached_tasks.tasks.extend(page)
            self._send(more)

    def _forget(self, run_id: str, attempt: int) -> None:
        run = self.runs.get(run_id)
        if run is not None and run.attempt == attempt:
            del self.runs[run_id]

    def stop_run(self, run_id: str, attempt: int, reason: str, *, ended: bool) -> None:
        self._forget(run_id, attempt)
        if ended:
            self._send(
                pb.RunJobResponse(
                    cancel=pb.CancelRunNotice(run_id=run_id, attempt=attempt, reason=reason)
                )
            )
        else:
            self._send(
                pb.RunJobResponse(
                    abandon=pb.AbandonRun(run_id=run_id, attempt=attempt, reason=reason)
                )
            )


async def outgoing(
    outbox: asyncio.Queue[pb.RunJobResponse | None], batches: bool
) -> AsyncIterator[pb.RunJobResponse]:
    """A stream's replies, in order, until None. With `batches` (the worker reads
    them), what has piled up in the outbox goes as one message of up to about
    BATCH_BYTES: under load, many fewer and larger messages, each costing gRPC far
    less than its share of the small ones. A reply that finds nothing behind it
    goes alone, at once."""
    held: pb.RunJobResponse | None = None
    while True:
        reply = held if held is not None else await outbox.get()
        held = None
        if reply is None:
            return
        if not batches or outbox.empty():
            yield reply
            continue
        batch = pb.RunJobResponse()
        messages = batch.batch.messages
        messages.append(reply)
        size, end = reply.ByteSize(), False
        while not outbox.empty():
            more = outbox.get_nowait()
            if more is None:
                end = True
                break
            grown = size + more.ByteSize()
            if grown > BATCH_BYTES:
                held = more
                break
            messages.append(more)
            size = grown
        yield batch if len(messages) > 1 else reply
        if end:
            return


def _pages(tasks: list[Any], first_budget: int) -> list[list[run_pb2.Task]]:
    """Cached tasks as messages, in pages of about TASK_PAGE_BYTES encoded (the
    first shares its message with the run request, so it gets what that leaves,
    and may be empty). A task larger than a page has a page of its own."""
    pages: list[list[run_pb2.Task]] = [[]]
    size, budget = 0, first_budget
    for task in tasks:
        message = convert.task_to_pb(task, run_pb2.Task())
        weight = message.ByteSize() + 8  # + the field's tag and length
        if size + weight > budget and (pages[-1] or len(pages) == 1):
            pages.append([])
            size, budget = 0, TASK_PAGE_BYTES
        pages[-1].append(message)
        size += weight
    return pages


def _ctx(env: str, run: Run, event: Event | None, job_id: str, version: str) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "run": {"id": run.id, "attempt": run.attempt},
        "job": {"id": job_id, "version": version},
        "environment": env,
    }
    if event is not None:
        ctx["event"] = {
            "id": event.id,
            "name": event.name,
            "source": event.source,
            "context": event.context,
        }
    if run.account_id:
        ctx["account"] = {"id": run.account_id}
    return ctx


_HEARTBEAT = pb.RunJobResponse(heartbeat=pb.Heartbeat())


def _no_outcome(message: str) -> InvalidArgument:
    return InvalidArgument(
        f"{message}.outcome", "is required: set output (a null Value for none) or error"
    )


def _rejected(request_id: str, run_id: str, exc: TripwireError) -> pb.RunJobResponse:
    return pb.RunJobResponse(
        rejected=pb.Rejected(
            request_id=request_id,
            run_id=run_id,
            code=status_of(exc).value[0],
            message=exc.message,
        )
    )


_SEND_PARAMS = {
    run_pb2.TASK_KIND_SEND_EVENT: frozenset({"event", "options"}),
    run_pb2.TASK_KIND_SEND_EVENTS: frozenset({"events", "options"}),
}


def _task_input(msg: pb.TaskRequest, settings: Settings) -> TaskInput:
    allowed = _SEND_PARAMS.get(msg.kind)
    if allowed is not None:
        # Its events are limited one by one (and together), so nothing else may
        # ride along in the params the task stores.
        fields = msg.params.struct_value.fields
        for key in fields:
            if key not in allowed:
                raise InvalidArgument(
                    f"task.params.{key}", f"is not a parameter of this kind: {sorted(allowed)}"
                )
        if "events" in fields:
            events_value = fields["events"]
            if events_value.HasField("list_value"):
                count = len(events_value.list_value.values)
                check_batch_count(count, settings.max_batch, "task.params.events")
            # The task stores its events twice, as params and in its output (the
            # events as sent): half the SendEvents limit keeps it within one reply.
            check_batch_size(
                events_value.ByteSize(), settings.max_batch_bytes // 2, "task.params.events"
            )
    params = convert.value_to_py(msg.params, "task.params") if msg.HasField("params") else None
    retry = convert._retry_from_pb(msg.retry) if msg.HasField("retry") else None
    kind = convert.task_kind_name(msg.kind)
    events: tuple[EventDraft, ...] = ()
    options = convert.options(event_pb2.SendEventOptions())
    if allowed is not None and params is not None and not isinstance(params, dict):
        raise InvalidArgument(
            "task.params", f"must be an object with {' and/or '.join(sorted(allowed))}"
        )
    if kind in ("SEND_EVENT", "SEND_EVENTS") and isinstance(params, dict):
        raw = [params.get("event")] if kind == "SEND_EVENT" else params.get("events") or []
        if not isinstance(raw, list):
            raise InvalidArgument("task.params.events", "must be a list of events")
        parsed = []
        for i, item in enumerate(raw):
            if item is None and kind == "SEND_EVENT":
                continue  # no event: refused as one missing
            # A null among the events is refused as one that is not an object: skipped,
            # it would shift the index of the rest (their default ids, their errors).
            where = "task.params.event" if kind == "SEND_EVENT" else f"task.params.events[{i}]"
            given = _parse(item, event_pb2.EventInput(), where)
            check_payload_size(given, settings.max_payload_bytes, where)
            parsed.append(convert.draft(given, where))
        events = tuple(parsed)
        if params.get("options"):
            where = "task.params.options"
            options = convert.options(
                _parse(params["options"], event_pb2.SendEventOptions(), where), where
            )
    return TaskInput(
        msg.key,
        msg.parent_id,
        kind,
        msg.name,
        params,
        retry,
        events,
        options,
        msg.params.ByteSize(),
    )


def _outcome(msg: pb.TaskComplete | pb.RunResult, what: str) -> tuple[Any, Any, bool]:
    """A result's output and error as they are stored, and whether the error is
    final. An output JSON cannot carry (NaN, Infinity) becomes an error, final:
    running the task again would only make it again."""
    if msg.HasField("error"):
        # A task's worker may say that its error is final (RunResult has no such flag).
        final = isinstance(msg, pb.TaskComplete) and msg.final
        return None, convert.error_from_pb(msg.error), final
    try:
        return convert.value_to_py(msg.output, what), None, False
    except InvalidArgument as exc:
        return None, {"type": "InvalidOutput", "message": str(exc), "stack": ""}, True


def _outcome_bytes(msg: pb.TaskComplete | pb.RunResult) -> int:
    """The wire size of a result's output or error."""
    return msg.output.ByteSize() if msg.HasField("output") else msg.error.ByteSize()


M = TypeVar("M", bound=Message)


# What json_format says of a field's value, without its wrapping.
_PARSE_ERROR = re.compile(r"Failed to parse \w+ field: (.*?)(?: at [\w.]+)?\.?", re.S)


def _parse(value: Any, message: M, field: str) -> M:
    """A message in its JSON form (as a worker sends a send_event task's event or
    options); an error names the field at fault, as a request's would."""
    if not isinstance(value, dict):
        raise InvalidArgument(field, "must be an object")
    fields = message.DESCRIPTOR.fields
    by_name = {f.json_name: f for f in fields} | {f.name: f for f in fields}
    for key, item in value.items():
        described = by_name.get(key)
        if described is None:
            names = ", ".join(f.name for f in fields)
            raise InvalidArgument(
                f"{field}.{key}", f"is not a field of {message.DESCRIPTOR.name} ({names})"
            )
        try:
            json_format.ParseDict({key: item}, type(message)())
        except (json_format.ParseError, TypeError, ValueError) as exc:
            found = _PARSE_ERROR.fullmatch(str(exc))
            reason = found.group(1) if found else str(exc)
            if described.message_type is not None and described.message_type.full_name == (
                "google.protobuf.Timestamp"
            ):
                reason = f'is not an RFC 3339 time such as "2026-01-02T15:04:05Z" ({reason})'
            raise InvalidArgument(f"{field}.{described.name}", reason) from None
    try:
        return json_format.ParseDict(value, message)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise InvalidArgument(field, str(exc)) from None
