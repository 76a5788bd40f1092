"""How the services sit on the gRPC server: undecodable requests, health's List."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tripwire.v1 import event_service_pb2 as ev

from ..conftest import Stubs
from .helpers import js

# SendEventRequest{event: EventInput{name: <the byte 0xFF>}}: a string that is not UTF-8.
NOT_UTF8 = b"\x0a\x03\x0a\x01\xff"
# A length running past the end of the message.
CORRUPT = b"\x0a\x7f\x0a"


@pytest.mark.parametrize(
    ("method", "data", "reason"),
    [
        ("tripwire.v1.EventService/SendEvent", NOT_UTF8, "tripwire.v1.SendEventRequest"),
        ("tripwire.v1.EventService/SendEvent", CORRUPT, "tripwire.v1.SendEventRequest"),
        ("tripwire.v1.JobService/GetJob", CORRUPT, "tripwire.v1.GetJobRequest"),
        ("tripwire.v1.RunService/WatchRun", CORRUPT, "tripwire.v1.WatchRunRequest"),
    ],
)
async def test_an_undecodable_request_is_invalid_argument_naming_its_type(
    stubs: Stubs, caplog: pytest.LogCaptureFixture, method: str, data: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO)
    call = (
        stubs.channel.unary_stream(f"/{method}")
        if method.endswith("WatchRun")
        else stubs.channel.unary_unary(f"/{method}")
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        reply = call(data)
        if method.endswith("WatchRun"):
            async for _ in reply:
                pass
        else:
            await reply
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"the request is not a valid {reason}: ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}


def _nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"a": value}
    return value


async def test_a_value_nested_past_what_protobuf_decodes_is_refused_saying_so(
    stubs: Stubs,
) -> None:
    request = json_format.ParseDict(
        {"event": {"name": "deep", "payload": _nested(40)}}, ev.SendEventRequest()
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.events.SendEvent(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nests objects and arrays too deep (30 levels at most)" in (err.value.details() or "")
    # Within protobuf's limit, the value's own check names the field.
    request = json_format.ParseDict(
        {"event": {"name": "deep", "payload": _nested(31)}}, ev.SendEventRequest()
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.events.SendEvent(request)
    assert (err.value.details() or "").startswith("event.payload: nests objects and arrays")


async def test_health_lists_every_service_as_check_answers_it(stubs: Stubs) -> None:
    health = health_pb2_grpc.HealthStub(stubs.channel)
    listed = await health.List(health_pb2.HealthListRequest())
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": serving,
        "tripwire.v1.EventService": serving,
        "tripwire.v1.JobService": serving,
        "tripwire.v1.RunService": serving,
        "tripwire.v1.WorkerService": serving,
    }
    check = await health.Check(health_pb2.HealthCheckRequest(service="tripwire.v1.RunService"))
    assert check.status == serving


async def test_an_enum_number_out_of_range_is_refused_naming_the_values(stubs: Stubs) -> None:
    """grpcurl sends any number for an enum ("status": 7): the reply says which
    values there are."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.events.ListEvents(ev.ListEventsRequest(status=7))  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "status: 7 is not a value of EventStatus "
        "(EVENT_STATUS_PENDING, EVENT_STATUS_DELIVERED, EVENT_STATUS_CANCELLED)"
    )
