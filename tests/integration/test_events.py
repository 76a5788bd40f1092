"""EventService against a real server: SPEC §2."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from tripwire.server.store import sqlite as sqlite_store
from tripwire.server.store import writer as writer_module
from tripwire.v1 import event_pb2, run_pb2
from tripwire.v1 import event_service_pb2 as ev
from tripwire.v1 import job_service_pb2 as jb
from tripwire.v1 import run_service_pb2 as rn

from ..conftest import FakeClock, StartServer, Stubs, eventually, make_stubs
from .helpers import FailsOnce, event_job, js, req


async def send(stubs: Stubs, event: dict, **options: object) -> dict:
    reply = await stubs.events.SendEvent(
        req(ev.SendEventRequest, {"event": event, "options": options})
    )
    return js(reply.event)


async def register(stubs: Stubs, body: dict) -> dict:
    return js((await stubs.jobs.RegisterJob(req(jb.RegisterJobRequest, body))).job)


async def test_immediate_event_defaults_and_delivery(stubs: Stubs) -> None:
    event = await send(stubs, {"name": "new.user"})
    assert len(event["id"]) == 26  # a ULID
    assert event["source"] == "trigger.dev"
    assert event["payload"] == {} and event["context"] == {}
    assert event["status"] == "EVENT_STATUS_DELIVERED"
    assert "deliveredAt" in event and event["deliverAt"] == event["deliveredAt"]
    assert "deduplicated" not in event


async def test_immediate_event_creates_one_run_per_matching_job(stubs: Stubs) -> None:
    await register(stubs, event_job("welcome", ["new.user"]))
    await register(stubs, event_job("audit", ["new.user", "del.user"]))
    await register(stubs, event_job("other", ["other.event"]))
    event = await send(stubs, {"name": "new.user", "payload": {"userId": "u_1"}})
    assert sorted(r["jobId"] for r in event["runs"]) == ["audit", "welcome"]
    assert {r["status"] for r in event["runs"]} == {"RUN_STATUS_QUEUED"}
    got = js(await stubs.events.GetEvent(ev.GetEventRequest(id=event["id"])))
    assert sorted(r["jobId"] for r in got["runs"]) == ["audit", "welcome"]
    assert got["event"]["payload"] == {"userId": "u_1"}
    # A resend of the delivered id creates nothing new.
    again = await send(stubs, {"name": "new.user", "id": event["id"], "payload": {"x": 1}})
    assert again["deduplicated"] is True and again["payload"] == {"userId": "u_1"}
    assert "runs" not in again
    runs = js(await stubs.runs.ListRuns(rn.ListRunsRequest(event_id=event["id"])))
    assert len(runs["runs"]) == 2


async def test_delayed_event_is_pending_without_delivered_at(stubs: Stubs) -> None:
    event = await send(stubs, {"name": "later"}, deliver_after=60)
    assert event["status"] == "EVENT_STATUS_PENDING"
    assert "deliveredAt" not in event


async def test_deliver_at_wins_and_past_means_now(stubs: Stubs) -> None:
    event = await send(
        stubs, {"name": "past"}, deliver_at="2001-01-01T00:00:00Z", deliver_after=3600
    )
    assert event["status"] == "EVENT_STATUS_DELIVERED"


async def test_negative_deliver_after_is_rejected_and_nothing_stored(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await send(stubs, {"name": "x", "id": "neg"}, deliver_after=-1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deliver_after" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stubs.events.GetEvent(ev.GetEventRequest(id="neg"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("event", "options", "field"),
    [
        ({"name": ""}, {}, "event.name"),
        ({"name": "n" * 257}, {}, "event.name"),
        ({"name": "x", "id": "i" * 300}, {}, "event.id"),
        # Times a Timestamp cannot show again (past 9999) or SQLite cannot hold.
        ({"name": "x"}, {"deliver_after": 10**13}, "options.deliver_after"),
        ({"name": "x"}, {"deliver_after": 10**16}, "options.deliver_after"),
    ],
)
async def test_bad_events_name_the_field(
    stubs: Stubs, event: dict, options: dict, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await send(stubs, event, **options)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field)
    assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}


@pytest.mark.parametrize("field", ["timestamp", "deliver_at"])
@pytest.mark.parametrize(
    "far",
    [Timestamp(seconds=10**17), Timestamp(seconds=1, nanos=-1), Timestamp(nanos=10**9)],
    ids=["seconds", "negative nanos", "nanos of a whole second"],
)
async def test_times_outside_the_timestamp_range_name_the_field(
    stubs: Stubs, field: str, far: Timestamp
) -> None:
    request = ev.SendEventRequest(event=event_pb2.EventInput(name="x"))
    if field == "timestamp":
        request.event.timestamp.CopyFrom(far)
    else:
        request.options.deliver_at.CopyFrom(far)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.events.SendEvent(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    where = "event.timestamp" if field == "timestamp" else "options.deliver_at"
    assert (err.value.details() or "").startswith(where)
    assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}


async def test_an_account_id_is_at_most_256_characters_and_shown_as_given(stubs: Stubs) -> None:
    await register(stubs, {"job": {"id": "inv", "version": "1.0.0", "trigger": {"invoke": {}}}})
    long = "a" * 257
    for call, field in (
        (
            stubs.events.SendEvent(
                ev.SendEventRequest(
                    event=event_pb2.EventInput(name="x"),
                    options=event_pb2.SendEventOptions(account_id=long),
                )
            ),
            "options.account_id",
        ),
        (stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="inv", account_id=long)), "account_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == f"{field}: is longer than 256 characters"
    for call, field in (
        (send(stubs, {"name": "x"}, accountId="a\nb"), "options.account_id"),
        (stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="inv", account_id=" ")), "account_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        problem = "is blank" if field == "account_id" else "holds the control character U+000A at 1"
        assert err.value.details() == f"{field}: {problem}"
    assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}
    assert js(await stubs.runs.ListRuns(rn.ListRunsRequest())) == {}


async def test_a_name_may_hold_any_character_a_table_can_show(stubs: Stubs) -> None:
    for name in ("👨\u200d👩\u200d👧", "café", "名前", "a\u200bb", "\u00a0x"):
        assert (await send(stubs, {"name": name}))["name"] == name


@pytest.mark.parametrize(
    ("event", "field", "problem"),
    [
        ({"name": "   "}, "event.name", "is blank"),
        ({"name": "a\u0000b"}, "event.name", "holds the control character U+0000 at 1"),
        ({"name": "x", "id": " "}, "event.id", "is blank"),
        ({"name": "x", "id": "new\nline"}, "event.id", "holds the control character U+000A at 3"),
        ({"name": "x", "source": "\t"}, "event.source", "holds the control character U+0009 at 0"),
        ({"name": "x", "source": "a\u0085"}, "event.source", "holds the control character U+0085"),
        ({"name": "a\u2028b"}, "event.name", "holds the line separator U+2028 at 1"),
        ({"name": "x", "id": "a\u2029"}, "event.id", "holds the paragraph separator U+2029 at 1"),
        ({"name": "a\u202eb"}, "event.name", "holds the bidirectional control U+202E at 1"),
        (
            {"name": "x", "source": "\u2066s"},
            "event.source",
            "holds the bidirectional control U+2066",
        ),
        ({"name": "\u200b"}, "event.name", "is blank"),
        ({"name": "a\u061cb"}, "event.name", "holds the bidirectional control U+061C at 1"),
        ({"name": "\u3164\u00ad\u2800"}, "event.name", "is blank"),
        ({"name": "\ufe0f\U000e0020"}, "event.name", "is blank"),
        ({"name": "x", "id": " \ufeff\u2060 "}, "event.id", "is blank"),
        ({"name": "x" * 257}, "event.name", "is longer than the limit of 256 characters"),
    ],
)
async def test_names_ids_and_sources_that_could_never_be_typed_back_are_refused(
    stubs: Stubs, event: dict, field: str, problem: str
) -> None:
    await register(stubs, {"job": {"id": "inv", "version": "1.0.0", "trigger": {"invoke": {}}}})
    for call, where in (
        (stubs.events.SendEvent(req(ev.SendEventRequest, {"event": event})), field),
        (
            stubs.events.SendEvents(req(ev.SendEventsRequest, {"events": [{"name": "ok"}, event]})),
            field.replace("event.", "events[1]."),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(f"{where}: {problem}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="inv", idempotency_key="a\rb"))
    assert err.value.details() == "idempotency_key: holds the control character U+000D at 1"
    assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}
    # Spaces inside and any script are fine.
    sent = await send(stubs, {"name": "注文 作成", "id": "id with spaces", "source": "shop·jp"})
    assert sent["name"] == "注文 作成" and sent["id"] == "id with spaces"


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_numbers_json_cannot_carry_are_refused_naming_the_field(
    stubs: Stubs, number: float
) -> None:
    """A binary client can put NaN or Infinity in a Value; no JSON reader could read
    it back (grpcurl, the CLI's --json, any other language)."""
    one = event_pb2.EventInput(name="metric", id="m-1")
    one.payload.struct_value.fields["values"].list_value.values.add().number_value = number
    batch = ev.SendEventsRequest(events=[event_pb2.EventInput(name="metric", id="m-2")] * 2)
    batch.events[1].context.struct_value.fields["v"].number_value = number
    await register(stubs, {"job": {"id": "inv", "version": "1.0.0", "trigger": {"invoke": {}}}})
    invoke = jb.InvokeJobRequest(job_id="inv")
    invoke.payload.number_value = number
    bad_filter = req(
        jb.RegisterJobRequest,
        {"job": {"id": "f", "version": "1.0.0", "trigger": {"event": {"names": ["metric"]}}}},
    )
    bad_filter.job.trigger.event.filter.fields["v"].list_value.values.add().number_value = number
    for call, field in (
        (stubs.events.SendEvent(ev.SendEventRequest(event=one)), "event.payload"),
        (stubs.events.SendEvents(batch), "events[1].context"),
        (stubs.events.MatchEvent(ev.MatchEventRequest(event=one)), "event.payload"),
        (stubs.jobs.InvokeJob(invoke), "payload"),
        (stubs.jobs.RegisterJob(bad_filter), "job.trigger.event.filter"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == f"{field}: holds NaN or Infinity, which JSON cannot carry"
    assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}
    assert js(await stubs.runs.ListRuns(rn.ListRunsRequest())) == {}
    jobs = js(await stubs.jobs.ListJobs(jb.ListJobsRequest()))["jobs"]
    assert [j["id"] for j in jobs] == ["inv"]


@pytest.mark.parametrize("token", ["garbage", "\u00b2", "1" * 5000, "-1"])
async def test_page_tokens_this_server_never_issued_are_invalid(stubs: Stubs, token: str) -> None:
    for call in (
        stubs.events.ListEvents(ev.ListEventsRequest(page_token=token)),
        stubs.runs.ListRuns(rn.ListRunsRequest(page_token=token)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("page_token")


async def test_unknown_status_numbers_are_invalid(stubs: Stubs) -> None:
    for call in (
        stubs.events.ListEvents(ev.ListEventsRequest(status=99)),  # type: ignore[arg-type]
        stubs.runs.ListRuns(rn.ListRunsRequest(status=99)),  # type: ignore[arg-type]
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("status")


async def test_payload_limit(start_server: StartServer) -> None:
    server = await start_server(max_payload_bytes=1000)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await send(stubs, {"name": "big", "payload": {"blob": "x" * 2000}})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit of 1000 bytes" in (err.value.details() or "")
        assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}


async def test_the_name_length_limit_is_the_servers_setting(start_server: StartServer) -> None:
    server = await start_server(max_name_length=5)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        assert (await send(stubs, {"name": "abcde", "source": "s.b.c"}))["name"] == "abcde"
        for event, field in (
            ({"name": "abcdef"}, "name"),
            ({"name": "a", "source": "abcdef"}, "source"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await send(stubs, event)
            assert err.value.details() == f"event.{field}: is longer than the limit of 5 characters"
        # The server's own event names are not held to it.
        await register(stubs, {"job": {"id": "inv", "version": "1.0.0", "trigger": {"invoke": {}}}})
        invoked = await stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="inv"))
        assert invoked.run.job_id == "inv"


async def test_a_reschedule_keeping_the_stored_payload_or_context_is_held_to_the_limit(
    start_server: StartServer,
) -> None:
    """Each request is within the limit, but a resend that gives only a context
    keeps the stored payload: the two together would pass it, so it is refused,
    naming the part it gave, and the event stays as it was."""
    server = await start_server(max_payload_bytes=1000)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        half = "x" * 600
        first = await send(
            stubs, {"name": "n", "id": "e", "payload": {"p": half}}, deliverAfter=600
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await send(stubs, {"name": "n", "id": "e", "context": {"c": half}}, deliverAfter=900)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == (
            "event.context: payload and context would be 1230 bytes with the stored payload "
            "kept, over the limit of 1000 bytes"
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:  # counted as one request is
            await send(stubs, {"name": "n", "payload": {"p": half}, "context": {"c": half}})
        assert "are 1230 bytes, over the limit" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.SendEvents(
                req(
                    ev.SendEventsRequest,
                    {
                        "events": [
                            {"name": "n", "id": "ok"},
                            {"name": "n", "id": "e", "context": {"c": half}},
                        ],
                        "options": {"deliverAfter": 900},
                    },
                )
            )
        assert (err.value.details() or "").startswith("events[1].context: payload and context")
        got = js(await stubs.events.GetEvent(ev.GetEventRequest(id="e")))["event"]
        assert got == first
        with pytest.raises(grpc.aio.AioRpcError):  # the batch stored nothing
            await stubs.events.GetEvent(ev.GetEventRequest(id="ok"))
        # MatchEvent refuses the same resend as SendEvent would.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.MatchEvent(
                req(
                    ev.MatchEventRequest,
                    {"event": {"name": "n", "id": "e", "context": {"c": half}}},
                )
            )
        assert (err.value.details() or "").startswith("event.context: payload and context would")
        # At the limit exactly: the stored {} context counts nothing, as an absent one did.
        exact = {"p": "x" * 985}
        assert json_format.ParseDict(exact, struct_pb2.Value()).ByteSize() == 1000
        await send(stubs, {"name": "n", "id": "at", "payload": exact}, deliverAfter=600)
        again = await send(stubs, {"name": "n", "id": "at", "payload": exact}, deliverAfter=900)
        assert again["deduplicated"] and again["payload"] == exact
        # A smaller context fits beside the stored payload; a new payload replaces it.
        fits = await send(stubs, {"name": "n", "id": "e", "context": {"c": "y"}}, deliverAfter=900)
        assert fits["payload"] == {"p": half} and fits["context"] == {"c": "y"}
        both = await send(
            stubs, {"name": "n", "id": "e", "payload": {"p": "z"}, "context": {"c": half}}
        )
        assert both["payload"] == {"p": "z"} and both["context"] == {"c": half}


async def test_a_payload_nested_deeper_than_protobuf_decodes_is_refused(stubs: Stubs) -> None:
    deepest: object = 1
    for _ in range(30):  # the limit: 30 objects deep
        deepest = {"k": deepest}
    stored = await send(stubs, {"name": "deep", "id": "ok", "payload": deepest})
    assert stored["payload"] == deepest
    got = js(await stubs.events.GetEvent(ev.GetEventRequest(id="ok")))
    assert got["event"]["payload"] == deepest
    for field in ("payload", "context"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await send(stubs, {"name": "deep", "id": "no", field: [deepest]})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == (
            f"event.{field}: nests objects and arrays more than 30 levels deep"
        )
    with pytest.raises(grpc.aio.AioRpcError):
        await stubs.events.GetEvent(ev.GetEventRequest(id="no"))


async def test_resend_rules_for_pending_events(stubs: Stubs) -> None:
    await register(stubs, event_job("on-d", ["d"]))
    far = await send(stubs, {"name": "d", "id": "far", "payload": {"v": 1}}, deliver_after=600)
    moved = await send(
        stubs,
        {"name": "d", "id": "far", "payload": {"v": 2}, "context": {"c": 1}},
        deliver_after=900,
    )
    assert moved["deduplicated"] is True
    assert moved["payload"] == {"v": 2} and moved["context"] == {"c": 1}
    assert moved["deliverAt"] > far["deliverAt"]
    assert moved["status"] == "EVENT_STATUS_PENDING"
    # Absent (or null) keeps what is stored, as in v2; only deliver_at moves.
    kept = await send(stubs, {"name": "d", "id": "far", "context": None}, deliver_after=1200)
    assert kept["payload"] == {"v": 2} and kept["context"] == {"c": 1}
    assert kept["deliverAt"] > moved["deliverAt"]
    stored = js(await stubs.events.GetEvent(ev.GetEventRequest(id="far")))["event"]
    assert stored["payload"] == {"v": 2} and stored["context"] == {"c": 1}

    near = await send(stubs, {"name": "d", "id": "near", "payload": {"v": 1}}, deliver_after=3)
    same = await send(stubs, {"name": "d", "id": "near", "payload": {"v": 2}}, deliver_after=900)
    assert same["deduplicated"] is True
    assert same["payload"] == {"v": 1} and same["deliverAt"] == near["deliverAt"]

    # A resend with no delay reschedules to now: delivered in that call.
    now = await send(stubs, {"name": "d", "id": "far", "payload": {"v": 3}})
    assert now["deduplicated"] is True and now["status"] == "EVENT_STATUS_DELIVERED"
    assert now["payload"] == {"v": 3}
    assert [r["jobId"] for r in now["runs"]] == ["on-d"]  # this call's delivery made it
    again = await send(stubs, {"name": "d", "id": "far"})
    assert again["deduplicated"] is True and "runs" not in again


async def test_cancel_event_rules(start_server: StartServer) -> None:
    clock = FakeClock()
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(stubs, event_job("j", ["c"]))
        await send(stubs, {"name": "c", "id": "e1"}, deliver_after=60)
        cancelled = js((await stubs.events.CancelEvent(ev.CancelEventRequest(id="e1"))).event)
        assert cancelled["status"] == "EVENT_STATUS_CANCELLED" and "cancelledAt" in cancelled
        again = js((await stubs.events.CancelEvent(ev.CancelEventRequest(id="e1"))).event)
        assert again == cancelled
        # Sending the id again does not revive it (v2 did).
        resent = await send(stubs, {"name": "c", "id": "e1"})
        assert resent["status"] == "EVENT_STATUS_CANCELLED" and resent["deduplicated"]
        clock.advance(120)
        await server.store.deliver_due(clock())
        got = js(await stubs.events.GetEvent(ev.GetEventRequest(id="e1")))
        assert got["event"]["status"] == "EVENT_STATUS_CANCELLED" and "runs" not in got

        await send(stubs, {"name": "c", "id": "e2"})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.CancelEvent(ev.CancelEventRequest(id="e2"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.CancelEvent(ev.CancelEventRequest(id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delayed_event_is_delivered_by_the_timer_loop(start_server: StartServer) -> None:
    clock = FakeClock()
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(stubs, event_job("j", ["later"]))
        await send(stubs, {"name": "later", "id": "d1"}, deliver_after=30)
        clock.advance(31)

        async def delivered() -> dict | None:
            got = js(await stubs.events.GetEvent(ev.GetEventRequest(id="d1")))
            return got if got["event"]["status"] == "EVENT_STATUS_DELIVERED" else None

        got = await eventually(delivered)
        assert [r["jobId"] for r in got["runs"]] == ["j"]


async def test_send_events_is_atomic_ordered_and_capped(start_server: StartServer) -> None:
    server = await start_server(max_batch=3)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        good = {"events": [{"name": "a", "id": "1"}, {"name": "b", "id": "2"}]}
        bad = {"events": [{"name": "a", "id": "3"}, {"name": ""}, {"name": "b", "id": "4"}]}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.SendEvents(req(ev.SendEventsRequest, bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("events[1].name")
        with pytest.raises(grpc.aio.AioRpcError):
            await stubs.events.GetEvent(ev.GetEventRequest(id="3"))
        over = {"events": [{"name": "a"}] * 4}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.SendEvents(req(ev.SendEventsRequest, over))
        assert "batch limit of 3" in (err.value.details() or "")
        # The count comes first, before any event is converted (a batch of half a
        # million tiny events fits the byte limit): not events[0].payload's error.
        deep: dict = {}
        for _ in range(31):
            deep = {"a": deep}
        too_deep = {"name": "a", "payload": deep}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.SendEvents(req(ev.SendEventsRequest, {"events": [too_deep] * 3}))
        assert (err.value.details() or "").startswith("events[0].payload")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.SendEvents(req(ev.SendEventsRequest, {"events": [too_deep] * 4}))
        assert err.value.details() == "events: 4 events exceed the batch limit of 3"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.SendEvents(ev.SendEventsRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reply = js(await stubs.events.SendEvents(req(ev.SendEventsRequest, good)))
        assert [e["id"] for e in reply["events"]] == ["1", "2"]


async def test_a_batch_rescheduling_its_own_event_replies_with_what_was_stored(
    stubs: Stubs,
) -> None:
    body = {
        "events": [
            {"name": "a", "id": "dup", "payload": {"v": 1}},
            {"name": "a", "id": "dup", "payload": {"v": 2}},
        ],
        "options": {"deliver_after": 60},
    }
    reply = js(await stubs.events.SendEvents(req(ev.SendEventsRequest, body)))
    stored = js(await stubs.events.GetEvent(ev.GetEventRequest(id="dup")))["event"]
    assert stored["payload"] == {"v": 2}
    assert [e["payload"] for e in reply["events"]] == [{"v": 2}, {"v": 2}]
    assert "deduplicated" not in reply["events"][0] and reply["events"][1]["deduplicated"]


async def test_a_batch_rescheduling_a_pending_event_delivers_in_request_order(
    stubs: Stubs,
) -> None:
    await register(stubs, event_job("j", ["a"]))
    await send(stubs, {"name": "a", "id": "X"}, deliver_after=60)
    body = {"events": [{"name": "a", "id": "X"}, {"name": "a", "id": "Y"}]}  # X: now
    reply = js(await stubs.events.SendEvents(req(ev.SendEventsRequest, body)))
    assert [e["status"] for e in reply["events"]] == ["EVENT_STATUS_DELIVERED"] * 2
    runs = js(await stubs.runs.ListRuns(rn.ListRunsRequest(job_id="j")))["runs"]
    assert [r["eventId"] for r in runs] == ["Y", "X"]  # newest first: X's run came first


async def test_send_events_dedups_within_a_batch(stubs: Stubs) -> None:
    await register(stubs, event_job("j", ["a"]))
    body = {"events": [{"name": "a", "id": "same"}, {"name": "a", "id": "same"}]}
    reply = js(await stubs.events.SendEvents(req(ev.SendEventsRequest, body)))
    first, second = reply["events"]
    assert "deduplicated" not in first and second["deduplicated"] is True
    assert len(first["runs"]) == 1


async def test_list_events_newest_first_with_name_filter_and_pages(stubs: Stubs) -> None:
    for i in range(5):
        await send(stubs, {"name": "even" if i % 2 == 0 else "odd", "id": f"e{i}"})
    page = js(await stubs.events.ListEvents(ev.ListEventsRequest(page_size=2)))
    assert [e["id"] for e in page["events"]] == ["e4", "e3"]
    rest = js(await stubs.events.ListEvents(ev.ListEventsRequest(page_token=page["nextPageToken"])))
    assert [e["id"] for e in rest["events"]] == ["e2", "e1", "e0"]
    assert "nextPageToken" not in rest
    evens = js(await stubs.events.ListEvents(ev.ListEventsRequest(name="even")))
    assert [e["id"] for e in evens["events"]] == ["e4", "e2", "e0"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.events.ListEvents(ev.ListEventsRequest(page_token="garbage"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancel_runs_for_event_and_cancel_run(stubs: Stubs) -> None:
    await register(stubs, event_job("a", ["x"]))
    await register(stubs, event_job("b", ["x"]))
    event = await send(stubs, {"name": "x", "id": "ex"})
    first = event["runs"][0]["id"]
    cancelled = js((await stubs.runs.CancelRun(rn.CancelRunRequest(id=first))).run)
    assert cancelled["status"] == "RUN_STATUS_CANCELED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.runs.CancelRun(rn.CancelRunRequest(id=first))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reply = js(await stubs.events.CancelRunsForEvent(ev.CancelRunsForEventRequest(id="ex")))
    assert reply["cancelledRunIds"] == [event["runs"][1]["id"]]
    assert {r["status"] for r in reply["runs"]} == {"RUN_STATUS_CANCELED"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.events.CancelRunsForEvent(ev.CancelRunsForEventRequest(id="none"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_filter_on_an_array_payload_passes_when_any_element_does(stubs: Stubs) -> None:
    # v2 matches the record {payload: [...]} against {payload: filter}.
    await register(stubs, event_job("orders", ["order"], filter={"type": ["a"]}))
    await register(stubs, event_job("eu", ["order"], context_filter={"region": ["eu"]}))
    hit = await send(
        stubs,
        {"name": "order", "payload": [{"type": "b"}, {"type": "a"}], "context": [{"region": "eu"}]},
    )
    assert sorted(r["jobId"] for r in hit["runs"]) == ["eu", "orders"]
    miss = await send(stubs, {"name": "order", "payload": [{"type": "b"}], "context": []})
    assert "runs" not in miss
    reply = js(
        await stubs.events.MatchEvent(
            req(ev.MatchEventRequest, {"event": {"name": "order", "payload": [{"type": "b"}]}})
        )
    )
    reason = {j["jobId"]: j for j in reply["jobs"]}["orders"]["reason"]
    assert reason.startswith("filter: no element of payload matches"), reason


async def test_an_empty_filter_is_no_filter_and_takes_an_empty_array_payload(
    stubs: Stubs,
) -> None:
    # v2 matched no element of [] against {} (`[].some(...)` is false), so a job
    # filtering only the context never ran for such an event.
    await register(stubs, event_job("any", ["order"], filter={}))
    await register(stubs, event_job("eu", ["order"], context_filter={"region": ["eu"]}))
    hit = await send(stubs, {"name": "order", "payload": [], "context": {"region": "eu"}})
    assert sorted(r["jobId"] for r in hit["runs"]) == ["any", "eu"]


async def test_match_event_explains(stubs: Stubs) -> None:
    await register(stubs, event_job("hit", ["signup"], filter={"plan": ["pro"]}))
    await register(stubs, event_job("wrong-name", ["login"]))
    await register(stubs, event_job("wrong-filter", ["signup"], filter={"plan": ["free"]}))
    await register(stubs, event_job("wrong-source", ["signup"], source="stripe"))
    await register(
        stubs,
        event_job("bad-payload", ["signup"], schema={"type": "object", "required": ["email"]}),
    )
    reply = js(
        await stubs.events.MatchEvent(
            req(ev.MatchEventRequest, {"event": {"name": "signup", "payload": {"plan": "pro"}}})
        )
    )
    verdicts = {j["jobId"]: j for j in reply["jobs"]}
    assert verdicts["hit"]["matched"] is True
    assert verdicts["bad-payload"]["matched"] is True
    assert verdicts["bad-payload"]["validationErrors"][0]["message"]
    assert "login" in verdicts["wrong-name"]["reason"]
    assert "plan" in verdicts["wrong-filter"]["reason"]
    assert "stripe" in verdicts["wrong-source"]["reason"]
    assert [j["jobId"] for j in reply["jobs"]][:2] == ["bad-payload", "hit"]
    event = reply["event"]  # as it would be stored: an Event's JSON form
    assert len(event.pop("id")) == 26 and event.pop("timestamp").endswith("Z")
    assert event == {
        "name": "signup",
        "source": "trigger.dev",
        "payload": {"plan": "pro"},
        "context": {},
        "status": "EVENT_STATUS_DELIVERED",
    }
    # Nothing was stored.
    assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}


async def match(stubs: Stubs, event: dict) -> dict:
    return js(await stubs.events.MatchEvent(req(ev.MatchEventRequest, {"event": event})))


async def test_match_event_with_a_known_id_says_what_sending_it_again_would_do(
    stubs: Stubs,
) -> None:
    await register(stubs, event_job("pro", ["signup"], filter={"plan": ["pro"]}))
    await send(stubs, {"name": "signup", "id": "done", "payload": {"plan": "pro"}})
    # Due within the 5 s window, and late enough that a slow machine still finds it pending.
    await send(stubs, {"name": "signup", "id": "soon", "payload": {"plan": "pro"}}, deliverAfter=4)
    later = {"name": "signup", "id": "later", "payload": {"plan": "free"}}
    await send(stubs, later, deliverAfter=3600)
    await send(stubs, {"name": "signup", "id": "off"}, deliverAfter=3600)
    await stubs.events.CancelEvent(ev.CancelEventRequest(id="off"))

    for event_id, status, why in [
        ("done", "DELIVERED", "delivered already"),
        ("soon", "PENDING", "is pending, due within 5 s"),
        ("off", "CANCELLED", "was cancelled"),
    ]:
        reply = await match(stubs, {"name": "signup", "id": event_id, "payload": {"plan": "pro"}})
        (verdict,) = reply["jobs"]
        assert verdict.get("matched") is None, event_id  # false
        assert why in verdict["reason"] and repr(event_id) in verdict["reason"]
        assert reply["event"]["status"] == f"EVENT_STATUS_{status}"
    # A pending event due later is rescheduled to now by a send: with the payload
    # the send gives, or the stored one.
    reply = await match(stubs, {"name": "signup", "id": "later", "payload": {"plan": "pro"}})
    assert reply["jobs"][0]["matched"] is True
    assert reply["event"]["status"] == "EVENT_STATUS_DELIVERED"
    reply = await match(stubs, {"name": "signup", "id": "later"})
    assert reply["jobs"][0].get("matched") is None and "plan" in reply["jobs"][0]["reason"]
    assert reply["event"]["payload"] == {"plan": "free"}
    # What the dry run said is what the sends do.
    again = await send(stubs, {"name": "signup", "id": "done", "payload": {"plan": "pro"}})
    assert again["deduplicated"] is True and "runs" not in again
    sent = await send(stubs, {"name": "signup", "id": "later", "payload": {"plan": "pro"}})
    assert [r["jobId"] for r in sent["runs"]] == ["pro"]


async def test_match_event_refuses_a_reserved_id_as_send_event_does(stubs: Stubs) -> None:
    tick = {"id": "tick", "version": "1.0.0", "trigger": {"interval": {"seconds": 60}}}
    await register(stubs, {"job": tick})
    body = {"event": {"name": "x", "id": "tick:1700000000000"}}
    for call in (
        stubs.events.MatchEvent(req(ev.MatchEventRequest, body)),
        stubs.events.SendEvent(req(ev.SendEventRequest, body)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "event.id" in (error.value.details() or "")


async def test_a_failed_timer_round_is_retried_and_the_server_keeps_serving(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    server = await start_server(clock=clock)
    round_ = FailsOnce(server.store, "deliver_due", monkeypatch)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        event = await send(stubs, {"name": "later", "id": "l1"}, deliver_after=60)
        clock.advance(61)

        async def delivered() -> bool:
            got = js(await stubs.events.GetEvent(ev.GetEventRequest(id=event["id"])))
            return got["event"]["status"] == "EVENT_STATUS_DELIVERED"

        await eventually(delivered)
    assert round_.failed and "timer round failed" in caplog.text


async def test_a_list_page_ends_early_rather_than_outgrow_a_clients_4_mib_limit(
    stubs: Stubs,
) -> None:
    blob = "x" * 700_000  # 8 of these are 5.6 MB; the channel takes 4 MiB per reply
    for i in range(8):
        await send(stubs, {"name": "big", "id": f"b{i}", "payload": {"blob": blob}})
    seen: list[str] = []
    pages = 0
    token = ""
    while True:
        page = await stubs.events.ListEvents(ev.ListEventsRequest(name="big", page_token=token))
        pages += 1
        seen += [e.id for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"b{i}" for i in reversed(range(8))]  # newest first, each once
    assert pages >= 2


async def test_send_events_is_capped_in_bytes_and_an_over_batch_stores_nothing(
    start_server: StartServer,
) -> None:
    server = await start_server(max_batch_bytes=5000)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(stubs, event_job("j", ["a"]))
        events = [{"name": "a", "id": f"e{i}", "payload": {"blob": "x" * 1000}} for i in range(5)]
        over = req(ev.SendEventsRequest, {"events": events})
        size = sum(e.ByteSize() for e in over.events)
        assert size > 5000
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.SendEvents(over)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == (
            f"events: are {size} bytes, over the limit of 5000 bytes; send fewer events per call"
        )
        assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}
        assert js(await stubs.runs.ListRuns(rn.ListRunsRequest())) == {}
        fewer = req(ev.SendEventsRequest, {"events": events[:4]})
        reply = js(await stubs.events.SendEvents(fewer))
        assert [e["id"] for e in reply["events"]] == ["e0", "e1", "e2", "e3"]


async def test_a_batch_just_under_the_default_byte_limit_replies_within_a_clients_4_mib(
    start_server: StartServer,
) -> None:
    """The reply echoes every payload and context, and adds ids, times and runs:
    the default limit leaves it room under the 4 MiB a default client accepts."""
    server = await start_server()
    limit, count = server.settings.max_batch_bytes, server.settings.max_batch
    assert limit == 3 * 1024 * 1024

    def event(blob: int) -> event_pb2.EventInput:
        return req(event_pb2.EventInput, {"name": "a", "payload": {"b": "x" * blob}, "context": {}})

    blob = 3000 + limit // count - event(3000).ByteSize()
    request = ev.SendEventsRequest(events=[event(blob)] * count)
    size = sum(e.ByteSize() for e in request.events)
    assert limit - count < size <= limit
    # Default channel options: replies over 4 MiB are refused (RESOURCE_EXHAUSTED).
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(stubs, event_job("j", ["a"]))
        reply = await stubs.events.SendEvents(request)
    assert len(reply.events) == count and all(len(e.runs) == 1 for e in reply.events)
    assert reply.ByteSize() < 4 * 1024 * 1024


async def test_a_batch_whose_reply_no_client_could_read_is_refused_and_stores_nothing(
    start_server: StartServer,
) -> None:
    """A tenth of the byte limit, but every event fails two jobs' schema, whose
    errors quote a long string: the reply would be over 4 MiB, so the batch is
    refused before anything is stored (a stored batch that looked failed would be
    sent again)."""
    server = await start_server()
    schema = {"properties": {"items": {"items": {"pattern": "^" + "a" * 300 + "$"}}}}
    events = [{"name": "x", "payload": {"items": ["0"] * 25}} for _ in range(1000)]
    request = req(ev.SendEventsRequest, {"events": events})
    async with grpc.aio.insecure_channel(server.address) as channel:  # 4 MiB replies at most
        stubs = make_stubs(channel)
        await register(stubs, event_job("j", ["x"], schema=schema))
        await register(stubs, event_job("k", ["x"], schema=schema))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.events.SendEvents(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("events: the reply would be ")
        assert js(await stubs.events.ListEvents(ev.ListEventsRequest())) == {}
        assert js(await stubs.runs.ListRuns(rn.ListRunsRequest())) == {}
        half = req(ev.SendEventsRequest, {"events": events[:400]})
        reply = await stubs.events.SendEvents(half)  # one that fits still goes through
    assert [r.status for r in reply.events[0].runs] == [run_pb2.RUN_STATUS_INVALID_PAYLOAD] * 2


async def test_the_wal_shrinks_back_after_a_burst_of_large_writes(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 1024 * 1024  # below one call's worth, so that one call is a burst
    monkeypatch.setattr(sqlite_store, "WAL_SIZE_LIMIT", limit)
    server = await start_server()
    wal = server.settings.db_path + "-wal"
    blob = "x" * 900_000
    batch = {"events": [{"name": "big", "payload": {"blob": blob}} for _ in range(3)]}
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        # One call, one transaction of ~2.7 MB: all of it in the WAL at once.
        await stubs.events.SendEvents(req(ev.SendEventsRequest, batch))
        assert await asyncio.to_thread(os.path.getsize, wal) > limit

        async def cut_back() -> bool:
            await send(stubs, {"name": "small"})  # a write after the checkpoint cuts it
            return await asyncio.to_thread(os.path.getsize, wal) <= limit

        await eventually(cut_back)


async def test_a_write_lock_another_process_holds_delays_only_the_writes(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    outsider = await asyncio.to_thread(
        sqlite3.connect, server.settings.db_path, isolation_level=None, check_same_thread=False
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await asyncio.to_thread(outsider.execute, "BEGIN IMMEDIATE")  # an operator's shell
        sending = asyncio.ensure_future(send(stubs, {"name": "x", "id": "waited"}))
        # Meanwhile everything else is served: reads, health, other calls.
        listed = await stubs.events.ListEvents(ev.ListEventsRequest(), timeout=2)
        assert js(listed) == {}
        assert not sending.done()
        await asyncio.to_thread(outsider.execute, "COMMIT")
        assert (await sending)["id"] == "waited"
        # Held past the writer's patience: the call says so, and nothing is stored.
        monkeypatch.setattr(writer_module, "BUSY_SECONDS", 0.2)
        await asyncio.to_thread(outsider.execute, "BEGIN IMMEDIATE")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await send(stubs, {"name": "x", "id": "refused"})
        await asyncio.to_thread(outsider.execute, "COMMIT")
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "database is locked" in (error.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stubs.events.GetEvent(ev.GetEventRequest(id="refused"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await asyncio.to_thread(outsider.close)
