"""The baseline of bench/send_event.py: a bare grpc.aio EventService.

    .venv/bin/python bench/echo_server.py [--address 127.0.0.1:0] [--event-loop uvloop]

It answers SendEvent and SendEvents with an `Event` built from the request (the
id from the request, or a counter) and stores nothing, so it measures what
gRPC, protobuf and asyncio cost on this machine. Like the tripwire server it
prints `echo listening on HOST:PORT` on one line and stops on SIGTERM/SIGINT,
and it runs on the same event loop as the tripwire server does by default
(uvloop), so that the ratio compares the servers' own work.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal

import grpc
import uvloop
from google.protobuf import struct_pb2, timestamp_pb2
from tripwire.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc

DEFAULT_SOURCE = "trigger.dev"


class EchoEventService(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def _event(self, given: event_pb2.EventInput, now: timestamp_pb2.Timestamp) -> event_pb2.Event:
        return event_pb2.Event(
            id=given.id or f"echo-{next(self._ids)}",
            name=given.name,
            source=given.source or DEFAULT_SOURCE,
            payload=given.payload if given.HasField("payload") else _EMPTY,
            context=given.context if given.HasField("context") else _EMPTY,
            timestamp=given.timestamp if given.HasField("timestamp") else now,
            deliver_at=now,
            delivered_at=now,
            created_at=now,
            status=event_pb2.EVENT_STATUS_DELIVERED,
        )

    async def SendEvent(
        self, request: event_service_pb2.SendEventRequest, context: grpc.aio.ServicerContext
    ) -> event_service_pb2.SendEventResponse:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        return event_service_pb2.SendEventResponse(event=self._event(request.event, now))

    async def SendEvents(
        self, request: event_service_pb2.SendEventsRequest, context: grpc.aio.ServicerContext
    ) -> event_service_pb2.SendEventsResponse:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        return event_service_pb2.SendEventsResponse(
            events=[self._event(e, now) for e in request.events]
        )


_EMPTY = struct_pb2.Value(struct_value=struct_pb2.Struct())


async def serve(address: str) -> None:
    server = grpc.aio.server()
    event_service_pb2_grpc.add_EventServiceServicer_to_server(EchoEventService(), server)
    port = server.add_insecure_port(address)
    await server.start()
    print(f"echo listening on {address.rpartition(':')[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:0")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    run = uvloop.run if args.event_loop == "uvloop" else asyncio.run
    run(serve(args.address))


if __name__ == "__main__":
    main()
