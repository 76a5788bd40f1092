"""tripwire.v1.JobService."""

from __future__ import annotations

from typing import Any

from tripwire.v1 import job_service_pb2 as pb
from tripwire.v1 import job_service_pb2_grpc

from ..errors import InvalidArgument
from ..jobs import JobService
from . import convert
from .rpc import (
    Authenticator,
    check_job_size,
    check_payload_size,
    fill,
    fill_page,
    name_after,
    name_token,
    offset_token,
    page_size,
    unary,
)

# SetJobEnabled names at most this many of the runs it aborted (~320 KB).
MAX_ABORTED_IDS = 10_000


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: JobService, auth: Authenticator, max_payload_bytes: int) -> None:
        self.jobs = jobs
        self.auth = auth
        self.max_payload_bytes = max_payload_bytes

    @unary
    async def RegisterJob(
        self, request: pb.RegisterJobRequest, context: Any, env: str
    ) -> pb.RegisterJobResponse:
        if not request.HasField("job"):
            raise InvalidArgument("job", "is required")
        check_job_size(request.job, self.max_payload_bytes, "job")
        job = await self.jobs.register(env, convert.job_from_pb(request.job))
        reply = pb.RegisterJobResponse()
        convert.job_to_pb(job, reply.job)
        return reply

    @unary
    async def GetJob(self, request: pb.GetJobRequest, context: Any, env: str) -> pb.GetJobResponse:
        start = offset_token(request.page_token)
        job, versions = await self.jobs.get(env, request.id, request.version)
        reply = pb.GetJobResponse()
        convert.job_to_pb(job, reply.job)
        end = start + fill(versions[start:], reply.versions, convert.job_to_pb, reply.ByteSize())
        if end < len(versions):
            reply.next_page_token = str(end)
        return reply

    @unary
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: Any, env: str
    ) -> pb.ListJobsResponse:
        page = await self.jobs.find(
            env, limit=page_size(request.page_size), after=name_after(request.page_token)
        )
        reply = pb.ListJobsResponse()
        reply.next_page_token = fill_page(
            page.items,
            reply.jobs,
            convert.job_to_pb,
            name_token(page.next_cursor) if page.next_cursor else "",
            lambda j: name_token(j.id),
        )
        return reply

    @unary
    async def SetJobEnabled(
        self, request: pb.SetJobEnabledRequest, context: Any, env: str
    ) -> pb.SetJobEnabledResponse:
        jobs, aborted = await self.jobs.set_enabled(
            env, request.job_id, request.version, request.enabled
        )
        reply = pb.SetJobEnabledResponse(
            aborted_run_ids=aborted[:MAX_ABORTED_IDS], aborted_run_count=len(aborted)
        )
        reply.more_jobs = fill(jobs, reply.jobs, convert.job_to_pb, reply.ByteSize()) < len(jobs)
        return reply

    @unary
    async def InvokeJob(
        self, request: pb.InvokeJobRequest, context: Any, env: str
    ) -> pb.InvokeJobResponse:
        check_payload_size(request, self.max_payload_bytes, "")
        run, deduplicated = await self.jobs.invoke(
            env,
            request.job_id,
            convert.value_to_py(request.payload, "payload")
            if request.HasField("payload")
            else None,
            convert.value_to_py(request.context, "context")
            if request.HasField("context")
            else None,
            request.idempotency_key,
            request.account_id,
        )
        reply = pb.InvokeJobResponse(deduplicated=deduplicated)
        convert.run_to_pb(run, reply.run)
        return reply
