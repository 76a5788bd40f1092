"""tripwire.v1.EventService."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tripwire.v1 import event_service_pb2 as pb
from tripwire.v1 import event_service_pb2_grpc

from ..errors import InvalidArgument
from ..events import EventService
from ..models import Event
from . import convert
from .rpc import (
    Authenticator,
    check_batch_count,
    check_batch_size,
    check_payload_size,
    check_reply_size,
    fill,
    fill_page,
    item_before,
    item_token,
    offset_token,
    page_size,
    unary,
)


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    def __init__(
        self,
        events: EventService,
        auth: Authenticator,
        max_payload_bytes: int,
        max_batch_bytes: int,
    ) -> None:
        self.events = events
        self.auth = auth
        self.max_payload_bytes = max_payload_bytes
        self.max_batch_bytes = max_batch_bytes

    def _check_size(self, event: Any, field: str) -> None:
        check_payload_size(event, self.max_payload_bytes, field)

    @unary
    async def SendEvent(
        self, request: pb.SendEventRequest, context: Any, env: str
    ) -> pb.SendEventResponse:
        if not request.HasField("event"):
            raise InvalidArgument("event", "is required")
        self._check_size(request.event, "event")
        (stored,) = await self.events.send(
            env,
            [convert.draft(request.event, "event")],
            convert.options(request.options),
            batch=False,
        )
        reply = pb.SendEventResponse()
        convert.event_to_pb(stored, reply.event, request.event)
        return reply

    @unary
    async def SendEvents(
        self, request: pb.SendEventsRequest, context: Any, env: str
    ) -> pb.SendEventsResponse:
        check_batch_count(len(request.events), self.events.limits.max_batch, "events")
        size = sum(given.ByteSize() for given in request.events)
        check_batch_size(size, self.max_batch_bytes, "events")
        for i, given in enumerate(request.events):
            self._check_size(given, f"events[{i}]")
        drafts = [convert.draft(e, f"events[{i}]") for i, e in enumerate(request.events)]
        reply = pb.SendEventsResponse()

        def build(events: list[Event]) -> None:
            """The reply, built before the commit: one no client could read (its
            runs' schema errors can outgrow the events) stores nothing."""
            # An id sent twice in one batch may have been rescheduled by its second
            # copy: those replies show what was stored, not what their request said.
            counts = Counter(e.id for e in events)
            repeated = {i for i, n in counts.items() if n > 1} if len(counts) < len(events) else ()
            for event, given in zip(events, request.events, strict=True):
                given_now = None if event.id in repeated else given
                convert.event_to_pb(event, reply.events.add(), given_now)
            check_reply_size(reply.ByteSize(), "events")

        options = convert.options(request.options)
        await self.events.send(env, drafts, options, batch=True, check=build)
        return reply

    @unary
    async def GetEvent(
        self, request: pb.GetEventRequest, context: Any, env: str
    ) -> pb.GetEventResponse:
        start = offset_token(request.page_token)
        event, runs = await self.events.get(env, request.id)
        reply = pb.GetEventResponse()
        convert.event_to_pb(event, reply.event)
        end = start + fill(runs[start:], reply.runs, convert.run_to_pb, reply.ByteSize())
        if end < len(runs):
            reply.next_page_token = str(end)
        return reply

    @unary
    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Any, env: str
    ) -> pb.ListEventsResponse:
        page = await self.events.find(
            env,
            name=request.name,
            status=convert.event_status_name(request.status),
            limit=page_size(request.page_size),
            before=item_before(request.page_token),
        )
        reply = pb.ListEventsResponse()
        reply.next_page_token = fill_page(
            page.items,
            reply.events,
            convert.event_to_pb,
            # The store's cursor is the page's last event: the token names it.
            item_token(page.items[-1].id, page.items[-1].created_at) if page.next_cursor else "",
            lambda e: item_token(e.id, e.created_at),
        )
        return reply

    @unary
    async def CancelEvent(
        self, request: pb.CancelEventRequest, context: Any, env: str
    ) -> pb.CancelEventResponse:
        event = await self.events.cancel(env, request.id)
        reply = pb.CancelEventResponse()
        convert.event_to_pb(event, reply.event)
        return reply

    @unary
    async def CancelRunsForEvent(
        self, request: pb.CancelRunsForEventRequest, context: Any, env: str
    ) -> pb.CancelRunsForEventResponse:
        cancelled, runs = await self.events.cancel_runs(env, request.id)
        reply = pb.CancelRunsForEventResponse(cancelled_run_ids=cancelled)
        reply.more_runs = fill(runs, reply.runs, convert.run_to_pb, reply.ByteSize()) < len(runs)
        return reply

    @unary
    async def MatchEvent(
        self, request: pb.MatchEventRequest, context: Any, env: str
    ) -> pb.MatchEventResponse:
        if not request.HasField("event"):
            raise InvalidArgument("event", "is required")
        self._check_size(request.event, "event")
        event, status, verdicts = await self.events.match(
            env, convert.draft(request.event, "event")
        )
        reply = pb.MatchEventResponse()
        for verdict in verdicts:
            convert.verdict_to_pb(verdict, reply.jobs.add())
        convert.py_to_value(
            {
                "id": event.id,
                "name": event.name,
                "source": event.source,
                "payload": event.payload,
                "context": event.context,
                "timestamp": convert.ts_json(event.timestamp),
                "status": f"EVENT_STATUS_{status.value}",
            },
            reply.event,
        )
        return reply
