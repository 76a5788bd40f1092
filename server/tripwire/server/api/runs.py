"""tripwire.v1.RunService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from tripwire.v1 import run_service_pb2 as pb
from tripwire.v1 import run_service_pb2_grpc

from ..errors import InvalidArgument, TripwireError
from ..models import Run, Task
from ..runs import RunService
from . import convert
from .rpc import (
    Authenticator,
    abort_internal,
    fill,
    fill_page,
    item_before,
    item_token,
    page_size,
    status_of,
    unary,
)


class RunServicer(run_service_pb2_grpc.RunServiceServicer):
    def __init__(self, runs: RunService, auth: Authenticator) -> None:
        self.runs = runs
        self.auth = auth

    @unary
    async def GetRun(self, request: pb.GetRunRequest, context: Any, env: str) -> pb.GetRunResponse:
        after_task, after_log = _detail_token(request.page_token)
        run, tasks, logs = await self.runs.details(env, request.id)
        reply = pb.GetRunResponse()
        convert.run_to_pb(run, reply.run)
        tasks = [t for t in tasks if t.position > after_task]
        logs = [entry for entry in logs if entry.seq > after_log]
        added = fill(tasks, reply.tasks, convert.task_to_pb, reply.ByteSize())
        if added:
            after_task = tasks[added - 1].position
        if added == len(tasks):
            at_least = 0 if tasks else 1
            added = fill(logs, reply.logs, convert.log_to_pb, reply.ByteSize(), at_least)
            if added:
                after_log = logs[added - 1].seq
            if added == len(logs):
                return reply
        reply.next_page_token = f"{after_task}.{after_log}"
        return reply

    @unary
    async def ListRuns(
        self, request: pb.ListRunsRequest, context: Any, env: str
    ) -> pb.ListRunsResponse:
        page = await self.runs.find(
            env,
            job_id=request.job_id,
            event_id=request.event_id,
            status=convert.run_status_name(request.status),
            limit=page_size(request.page_size),
            before=item_before(request.page_token),
        )
        reply = pb.ListRunsResponse()
        reply.next_page_token = fill_page(
            page.items,
            reply.runs,
            convert.run_to_pb,
            # The store's cursor is the page's last run: the token names it.
            item_token(page.items[-1].id, page.items[-1].created_at) if page.next_cursor else "",
            lambda r: item_token(r.id, r.created_at),
        )
        return reply

    @unary
    async def CancelRun(
        self, request: pb.CancelRunRequest, context: Any, env: str
    ) -> pb.CancelRunResponse:
        run = await self.runs.cancel(env, request.id)
        reply = pb.CancelRunResponse()
        convert.run_to_pb(run, reply.run)
        return reply

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Any
    ) -> AsyncIterator[pb.WatchRunResponse]:
        try:
            env = self.auth.environment(context)
            async for update in self.runs.watch(env, request.id):
                reply = pb.WatchRunResponse()
                if isinstance(update, Run):
                    convert.run_to_pb(update, reply.run)
                elif isinstance(update, Task):
                    convert.task_to_pb(update, reply.task)
                else:
                    convert.log_to_pb(update, reply.log)
                yield reply
        except TripwireError as exc:
            await context.abort(status_of(exc), exc.message)
        except Exception:  # as the unary calls answer it, not UNKNOWN naming the cause
            await abort_internal(context, "RunServicer.WatchRun")


def _detail_token(token: str) -> tuple[int, int]:
    """A GetRun page token: the last task position and log seq sent so far."""
    if not token:
        return -1, 0
    task, dot, log = token.partition(".")
    try:
        if dot and len(token) < 50:
            after_task, after_log = int(task), int(log)
            if after_task >= -1 and after_log >= 0:
                return after_task, after_log
    except ValueError:
        pass
    raise InvalidArgument("page_token", "is not a token this server issued")
