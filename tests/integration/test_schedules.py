"""Cron and interval schedules through the timer loop: SPEC §4."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from tripwire.server import schedules
from tripwire.v1 import event_service_pb2 as ev
from tripwire.v1 import job_service_pb2 as jb
from tripwire.v1 import run_service_pb2 as rn

from ..conftest import FakeClock, StartServer, Stubs, eventually, make_stubs
from .helpers import event_job, js, req
from .test_events import register

START = 1_700_000_000_000  # a whole second, so interval arithmetic is easy to read


async def runs_of(stubs: Stubs, job_id: str) -> list[dict]:
    return js(await stubs.runs.ListRuns(rn.ListRunsRequest(job_id=job_id))).get("runs", [])


async def wait_runs(stubs: Stubs, job_id: str, count: int) -> list[dict]:
    async def enough() -> list[dict] | None:
        found = await runs_of(stubs, job_id)
        return found if len(found) >= count else None

    return await eventually(enough)


async def test_interval_fires_idempotent_events_with_timestamps(start_server: StartServer) -> None:
    clock = FakeClock(START)
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(
            stubs,
            {"job": {"id": "tick", "version": "1.0.0", "trigger": {"interval": {"seconds": 10}}}},
        )
        clock.advance(10)
        (first,) = await wait_runs(stubs, "tick", 1)
        assert first["eventId"] == f"tick:{START + 10_000}"
        clock.advance(10)
        runs = await wait_runs(stubs, "tick", 2)
        assert runs[0]["eventId"] == f"tick:{START + 20_000}"
        event = js(await stubs.events.GetEvent(ev.GetEventRequest(id=runs[0]["eventId"])))
        assert event["event"]["name"] == "tripwire.scheduled"
        assert event["event"]["payload"] == {
            "ts": "2023-11-14T22:13:40.000Z",
            "lastTimestamp": "2023-11-14T22:13:30.000Z",
        }


async def test_a_grace_of_zero_fires_ticks_on_time_and_skips_late_ones(
    start_server: StartServer,
) -> None:
    """The timer loop finds a tick a little after it: that is on time, whatever the
    grace. Only a tick found over ON_TIME late is skipped."""
    clock = FakeClock(START)
    server = await start_server(clock=clock, schedule_grace=0.0)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(
            stubs,
            {"job": {"id": "tick", "version": "1.0.0", "trigger": {"interval": {"seconds": 10}}}},
        )
        clock.advance(10.3)  # found 300 ms after the tick
        (first,) = await wait_runs(stubs, "tick", 1)
        assert first["eventId"] == f"tick:{START + 10_000}"
        clock.advance(11.9)  # the tick at +20 s found 2.2 s late: skipped; +30 s is next
        clock.advance(7.9)
        runs = await wait_runs(stubs, "tick", 2)
        assert [r["eventId"] for r in runs] == [f"tick:{START + 30_000}", first["eventId"]]


async def test_restart_skips_missed_ticks_unless_catch_up(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        for job_id, catch_up in (("skip", False), ("catch", True)):
            await register(
                stubs,
                {
                    "job": {
                        "id": job_id,
                        "version": "1.0.0",
                        "trigger": {"interval": {"seconds": 10, "catchUp": catch_up}},
                    }
                },
            )
    await server.stop(grace=0.5)

    clock.advance(305)  # down for five minutes: 30 ticks missed, the last 5 s ago
    restarted = await start_server(clock=clock, schedule_grace=1.0)
    async with grpc.aio.insecure_channel(restarted.address) as channel:
        stubs = make_stubs(channel)
        (caught,) = await wait_runs(stubs, "catch", 1)
        assert caught["eventId"] == f"catch:{START + 300_000}"
        # The skipping job fires nothing for the missed ticks, then resumes on schedule.
        assert await runs_of(stubs, "skip") == []
        clock.advance(5)
        (resumed,) = await wait_runs(stubs, "skip", 1)
        assert resumed["eventId"] == f"skip:{START + 310_000}"
    # Each says, once, how many of its ticks it skipped.
    skipped = sorted(
        r.getMessage() for r in caplog.records if "planned tick(s) skipped" in r.getMessage()
    )
    assert skipped == [
        "job 'catch' (env 'default'): 29 planned tick(s) skipped: only the latest due tick fires",
        "job 'skip' (env 'default'): 30 planned tick(s) skipped: the latest was more than the "
        "grace period late",
    ]


async def test_changing_only_catch_up_keeps_the_next_fire(start_server: StartServer) -> None:
    # catch_up says what becomes of ticks missed while the server was down, not
    # when ticks are planned: the tick 100 s away still fires.
    clock = FakeClock(START)  # 22:13:20 UTC
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)

        async def hourly(version: str, catch_up: bool) -> dict:
            trigger = {"interval": {"seconds": 3600, "catchUp": catch_up}}
            body = {"job": {"id": "hourly", "version": version, "trigger": trigger}}
            return js((await stubs.jobs.RegisterJob(req(jb.RegisterJobRequest, body))).job)

        assert (await hourly("1.0.0", False))["nextFireAt"] == "2023-11-14T23:13:20Z"
        clock.advance(3500)
        assert (await hourly("1.0.1", True))["nextFireAt"] == "2023-11-14T23:13:20Z"
        clock.advance(100)
        (fired,) = await wait_runs(stubs, "hourly", 1)
        assert fired["eventId"] == f"hourly:{START + 3_600_000}"


async def test_a_schedule_spelled_otherwise_is_the_same_schedule(
    start_server: StartServer,
) -> None:
    """Spaces, letter case and UTC named or not change no tick: the next fire still
    says when the last one was."""
    clock = FakeClock(START)  # 22:13:20 UTC
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)

        async def hourly(version: str, cron: dict) -> dict:
            body = {"job": {"id": "h", "version": version, "trigger": {"cron": cron}}}
            return js((await stubs.jobs.RegisterJob(req(jb.RegisterJobRequest, body))).job)

        await hourly("1.0.0", {"cron": "0 * * * mon-fri"})
        clock.advance(2800)  # 23:00:00
        await wait_runs(stubs, "h", 1)
        again = await hourly("1.0.1", {"cron": " 0  *  * *  MON-FRI ", "timezone": "UTC"})
        assert again["nextFireAt"] == "2023-11-15T00:00:00Z"
        clock.advance(3600)
        latest = (await wait_runs(stubs, "h", 2))[0]
        event = js(await stubs.events.GetEvent(ev.GetEventRequest(id=latest["eventId"])))
        assert event["event"]["payload"] == {
            "ts": "2023-11-15T00:00:00.000Z",
            "lastTimestamp": "2023-11-14T23:00:00.000Z",
        }


@pytest.mark.parametrize(
    ("cron", "next_fire"),
    [
        ("5-5 * * * *", "2023-11-14T23:05:00Z"),  # not every minute
        ("0 0 * * 7/2", "2023-11-19T00:00:00Z"),  # Sundays only
        ("0 0 1 * */1", "2023-12-01T00:00:00Z"),  # */1 leaves no day out
        ("0 0 1 * 0-6", "2023-11-15T00:00:00Z"),  # 7 not written: a restriction
    ],
)
async def test_crons_croniter_reads_otherwise_fire_as_written(
    start_server: StartServer, cron: str, next_fire: str
) -> None:
    server = await start_server(clock=FakeClock(START))  # Tuesday 22:13:20 UTC
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        body = {"job": {"id": "c", "version": "1.0.0", "trigger": {"cron": {"cron": cron}}}}
        job = js((await stubs.jobs.RegisterJob(req(jb.RegisterJobRequest, body))).job)
        assert job["nextFireAt"] == next_fire


async def test_a_tick_fires_once_across_a_restart(start_server: StartServer) -> None:
    clock = FakeClock(START)
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(
            stubs,
            {"job": {"id": "once", "version": "1.0.0", "trigger": {"interval": {"seconds": 10}}}},
        )
        clock.advance(10)
        await wait_runs(stubs, "once", 1)
    await server.stop(grace=0.5)
    restarted = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(restarted.address) as channel:
        stubs = make_stubs(channel)
        clock.advance(10)
        runs = await wait_runs(stubs, "once", 2)
        assert [r["eventId"] for r in runs] == [f"once:{START + 20_000}", f"once:{START + 10_000}"]


async def test_client_ids_of_a_scheduled_jobs_fire_form_are_refused(
    start_server: StartServer,
) -> None:
    server = await start_server(clock=FakeClock(START))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(
            stubs,
            {"job": {"id": "tick", "version": "1.0.0", "trigger": {"interval": {"seconds": 10}}}},
        )
        await register(stubs, event_job("orders", ["x"]))
        fire_id = f"tick:{START + 10_000}"
        refused = [
            (
                stubs.events.SendEvent,
                req(ev.SendEventRequest, {"event": {"name": "x", "id": fire_id}}),
                "event.id",
            ),
            (
                stubs.events.SendEvents,
                req(
                    ev.SendEventsRequest, {"events": [{"name": "x"}, {"name": "x", "id": fire_id}]}
                ),
                "events[1].id",
            ),
            (
                stubs.jobs.InvokeJob,
                req(jb.InvokeJobRequest, {"jobId": "orders", "idempotencyKey": "tick:5"}),
                "idempotency_key",
            ),
        ]
        for call, request, field in refused:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(f"{field}: 'tick:")
        # The same form for a job without a schedule, or for no job, is an ordinary id.
        for free in ("orders:123", "nojob:123", "tick:12a"):
            await stubs.events.SendEvent(
                req(ev.SendEventRequest, {"event": {"name": "x", "id": free}})
            )
        listed = await stubs.events.ListEvents(ev.ListEventsRequest())
        assert sorted(e.id for e in listed.events) == ["nojob:123", "orders:123", "tick:12a"]


@pytest.mark.parametrize(
    "holder",
    [
        {"name": "x"},
        # Named and sourced as a fire's own event is: still not this job's fire.
        {"name": "tripwire.scheduled", "source": "tripwire"},
    ],
)
async def test_a_fire_whose_id_an_older_event_holds_is_skipped_loudly(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, holder: dict[str, str]
) -> None:
    clock = FakeClock(START)
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        # Sent while "tick" had no schedule, so nothing could refuse it.
        await stubs.events.SendEvent(
            req(ev.SendEventRequest, {"event": {**holder, "id": f"tick:{START + 10_000}"}})
        )
        await register(
            stubs,
            {"job": {"id": "tick", "version": "1.0.0", "trigger": {"interval": {"seconds": 10}}}},
        )

        async def warned() -> bool:
            return "the fire tick:" in caplog.text

        clock.advance(10)
        await eventually(warned)
        clock.advance(10)
        (run,) = await wait_runs(stubs, "tick", 1)
        assert run["eventId"] == f"tick:{START + 20_000}"
        # The job's first fire: the skipped tick is no previous fire of it.
        fired = js(await stubs.events.GetEvent(ev.GetEventRequest(id=run["eventId"])))
        assert "lastTimestamp" not in fired["event"]["payload"]
    assert f"the fire tick:{START + 10_000} is skipped" in caplog.text
    assert f"held by an event named {holder['name']!r}" in caplog.text


async def test_a_schedule_that_cannot_be_computed_stops_neither_the_others_nor_the_server(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = schedules.decide

    def broken_for_45_seconds(schedule: schedules.Schedule, *args: Any) -> Any:
        if schedule.seconds == 45:
            raise LookupError("no such time zone")  # as a zone gone from tzdata would
        return real(schedule, *args)

    monkeypatch.setattr(schedules, "decide", broken_for_45_seconds)
    clock = FakeClock(START)
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        for job_id, seconds in (("broken", 45), ("fine", 10)):
            trigger = {"interval": {"seconds": seconds}}
            await register(stubs, {"job": {"id": job_id, "version": "1.0.0", "trigger": trigger}})
        clock.advance(45)
        await wait_runs(stubs, "fine", 1)
        assert "job 'broken' (env 'default'): its schedule cannot be computed" in caplog.text
        monkeypatch.setattr(schedules, "decide", real)  # e.g. tzdata is back
        # The retry, a minute later, still knows the tick it was planning: the one at
        # 90 s is due within the grace and fires, as it would have without the fault.
        clock.advance(60)
        (fired,) = await wait_runs(stubs, "broken", 1)
    assert fired["eventId"] == f"broken:{START + 90_000}"


@pytest.mark.parametrize("failures", [1, 2])
async def test_a_tick_whose_schedule_failed_fires_on_the_retry_that_works(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    """The retries are past the default grace of 60 s, but the tick was on time when
    it was first tried: it fires, late, rather than being skipped as late."""
    real, calls = schedules.decide, []

    def fails_at_first(schedule: schedules.Schedule, *args: Any) -> Any:
        calls.append(args)
        if len(calls) <= failures:
            raise LookupError("no such time zone")
        return real(schedule, *args)

    monkeypatch.setattr(schedules, "decide", fails_at_first)
    clock = FakeClock(START)
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        trigger = {"interval": {"seconds": 3600}}
        await register(stubs, {"job": {"id": "hourly", "version": "1.0.0", "trigger": trigger}})
        clock.advance(3600.001)
        for failure in range(1, failures + 1):

            async def tried(times: int = failure) -> bool:
                return len(calls) >= times

            await eventually(tried)
            clock.advance(60)
        (fired,) = await wait_runs(stubs, "hourly", 1)
    assert fired["eventId"] == f"hourly:{START + 3_600_000}"
