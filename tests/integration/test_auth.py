"""API keys and environments: SPEC §6."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tripwire.v1 import event_service_pb2 as ev
from tripwire.v1 import job_service_pb2 as jb
from tripwire.v1 import run_service_pb2 as rn

from ..conftest import FakeClock, StartServer, make_stubs
from .helpers import event_job, js, req
from .raw_worker import RawWorker, job


async def test_keys_select_environments_and_isolate_them(start_server: StartServer) -> None:
    server = await start_server(api_keys={"k-prod": "prod", "k-dev": "dev"})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        prod = (("authorization", "Bearer k-prod"),)
        dev = (("authorization", "Bearer k-dev"),)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "k-prod"),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stubs.events.SendEvent(
                    req(ev.SendEventRequest, {"event": {"name": "x"}}), metadata=metadata
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await stubs.jobs.RegisterJob(
            req(jb.RegisterJobRequest, event_job("j", ["x"])), metadata=prod
        )
        reply = await stubs.events.SendEvent(
            req(ev.SendEventRequest, {"event": {"name": "x", "id": "same"}}), metadata=prod
        )
        assert len(reply.event.runs) == 1
        # The same id in another environment is another event, matching no job there.
        other = await stubs.events.SendEvent(
            req(ev.SendEventRequest, {"event": {"name": "x", "id": "same"}}), metadata=dev
        )
        assert not other.event.deduplicated and len(other.event.runs) == 0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.runs.GetRun(rn.GetRunRequest(id=reply.event.runs[0].id), metadata=dev)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        listed = js(await stubs.events.ListEvents(ev.ListEventsRequest(), metadata=dev))
        assert len(listed["events"]) == 1
        # Health needs no key.
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_delayed_events_sharing_an_id_reach_the_workers_of_their_own_environment(
    start_server: StartServer,
) -> None:
    # Both come due in the same tick, so one store write delivers the two of them.
    clock = FakeClock()
    server = await start_server(clock=clock, api_keys={"kp": "prod", "kd": "dev"})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        prod = (("authorization", "Bearer kp"),)
        dev = (("authorization", "Bearer kd"),)
        prod_worker, dev_worker = RawWorker(stubs.workers), RawWorker(stubs.workers)
        await prod_worker.connect([job("j", ["x"])], worker_id="wp", metadata=prod)
        await dev_worker.connect([job("j", ["x"])], worker_id="wd", metadata=dev)
        for metadata, env in ((prod, "prod"), (dev, "dev")):
            body = {
                "event": {"name": "x", "id": "same", "payload": {"env": env}},
                "options": {"deliverAfter": 60},
            }
            await stubs.events.SendEvent(req(ev.SendEventRequest, body), metadata=metadata)
        clock.advance(61)
        to_prod = await prod_worker.run_request()
        to_dev = await dev_worker.run_request()
        await prod_worker.close()
        await dev_worker.close()
    assert to_prod["event"]["payload"] == {"env": "prod"}
    assert to_dev["event"]["payload"] == {"env": "dev"}


async def test_a_request_is_decoded_only_once_its_key_is_checked(
    start_server: StartServer,
) -> None:
    """Bytes no tripwire message decodes from: without a key the call is refused
    UNAUTHENTICATED, as any would be, rather than INVALID_ARGUMENT, which only
    decoding can tell (and which a caller without a key must not make the
    server spend time on); with the key, the decoding refuses them."""
    server = await start_server(api_keys={"k": "prod"})
    garbage = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, a length past the end
    async with grpc.aio.insecure_channel(server.address) as channel:
        unary = channel.unary_unary("/tripwire.v1.EventService/SendEvent")
        streaming = channel.unary_stream("/tripwire.v1.RunService/WatchRun")
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer k"),), grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await unary(garbage, metadata=metadata)
            assert err.value.code() == code
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in streaming(garbage, metadata=metadata):
                    pass
            assert err.value.code() == code
        assert "not a valid tripwire.v1.WatchRunRequest" in (err.value.details() or "")


async def test_two_authorization_headers_are_refused_whatever_their_order(
    start_server: StartServer,
) -> None:
    """The environment must not depend on which of two headers comes first (a
    proxy that adds its own after the client's)."""
    server = await start_server(api_keys={"k-prod": "prod", "k-dev": "dev"})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        for first, second in (("k-prod", "k-dev"), ("k-dev", "k-prod"), ("k-prod", "k-prod")):
            metadata = (("authorization", f"Bearer {first}"), ("authorization", f"Bearer {second}"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stubs.events.ListEvents(ev.ListEventsRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization is given 2 times" in (err.value.details() or "")
            assert first not in (err.value.details() or "")


async def test_list_page_tokens_tell_nothing_of_other_environments(
    start_server: StartServer,
) -> None:
    """A token names where its environment's page ended, not a row number all the
    environments share: how far such numbers moved between two pages told how many
    events and runs the other environments had made meanwhile."""
    server = await start_server(api_keys={"ka": "a", "kb": "b"})
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        a, b = (("authorization", "Bearer ka"),), (("authorization", "Bearer kb"),)
        for metadata in (a, b):
            await stubs.jobs.RegisterJob(
                req(jb.RegisterJobRequest, event_job("j", ["x"])), metadata=metadata
            )

        async def tokens() -> tuple[str, str]:
            events = await stubs.events.ListEvents(ev.ListEventsRequest(page_size=1), metadata=b)
            runs = await stubs.runs.ListRuns(rn.ListRunsRequest(page_size=1), metadata=b)
            return events.next_page_token, runs.next_page_token

        for i in range(2):
            body = {"event": {"name": "x", "id": f"b{i}"}}
            await stubs.events.SendEvent(req(ev.SendEventRequest, body), metadata=b)
        before = await tokens()
        assert all(before)
        body = {"events": [{"name": "x"} for _ in range(37)]}
        await stubs.events.SendEvents(req(ev.SendEventsRequest, body), metadata=a)
        assert await tokens() == before
        # Each still pages on in its own environment only.
        rest = js(
            await stubs.events.ListEvents(ev.ListEventsRequest(page_token=before[0]), metadata=b)
        )
        assert [e["id"] for e in rest["events"]] == ["b0"]
        # Another environment's token continues from nothing it has.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.ListEvents(ev.ListEventsRequest(page_token=before[0]), metadata=a)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(
            "page_token: continues from an event this environment does not have"
        )
