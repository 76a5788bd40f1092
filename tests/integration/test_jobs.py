"""JobService and matching against a real server: SPEC §3."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import grpc
import pytest
from tripwire.server import matching
from tripwire.server.api import jobs as api_jobs
from tripwire.v1 import event_service_pb2 as ev
from tripwire.v1 import job_service_pb2 as jb
from tripwire.v1 import run_pb2
from tripwire.v1 import run_service_pb2 as rn

from ..conftest import FakeClock, StartServer, Stubs, eventually, make_stubs
from .helpers import event_job, js, req
from .test_events import register, send


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"version": "1.0.0", "trigger": {"invoke": {}}}, "job.id"),
        ({"id": "Bad Id", "version": "1.0.0", "trigger": {"invoke": {}}}, "job.id"),
        ({"id": "j", "trigger": {"invoke": {}}}, "job.version"),
        ({"id": "j", "version": "1.0", "trigger": {"invoke": {}}}, "job.version"),
        ({"id": "j", "version": "1.0.0"}, "job.trigger"),
        (
            {"id": "j", "version": "1.0.0", "trigger": {"invoke": {}}, "logLevel": 99},
            "job.log_level",
        ),
        ({"id": "j", "version": "1.0.0", "trigger": {"event": {}}}, "job.trigger.event.names"),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {"event": {"names": ["x"], "filter": {"age": [1, "a"]}}},
            },
            "job.trigger.event.filter.age",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {
                    "event": {"names": ["x"], "filter": {"user": {"age": [{"$gt": 1, "$lt": 5}]}}}
                },
            },
            "job.trigger.event.filter.user.age[0]",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {"event": {"names": ["x"], "context_filter": {"a": [{"$nope": 1}]}}},
            },
            "job.trigger.event.context_filter.a[0]",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {"event": {"names": ["x"], "schema": {"type": "nonsense"}}},
            },
            "job.trigger.event.schema",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {"event": {"names": ["x"], "schema": {"$ref": "urn:elsewhere"}}},
            },
            "job.trigger.event.schema/$ref",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {"event": {"names": ["x"], "schema": {"$ref": "#"}}},
            },
            "job.trigger.event.schema",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {"invoke": {"schema": {"$ref": "#/$defs/nope"}}},
            },
            "job.trigger.invoke.schema/$ref",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {
                    "event": {
                        "names": ["x"],
                        "schema": {"properties": {"a": {"$ref": "#no-such-anchor"}}},
                    }
                },
            },
            "job.trigger.event.schema/properties/a/$ref",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {
                    "event": {
                        "names": ["x"],
                        # a list's element named by a word: not a pointer into the schema
                        "schema": {
                            "required": ["a"],
                            "properties": {"a": {"$ref": "#/required/a"}},
                        },
                    }
                },
            },
            "job.trigger.event.schema/properties/a/$ref",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {
                    "event": {
                        "names": ["x"],
                        "schema": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
                    }
                },
            },
            "job.trigger.event.schema",
        ),
        (
            {"id": "j", "version": "1.0.0", "trigger": {"cron": {"cron": "61 * * * *"}}},
            "job.trigger.cron.cron",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {"cron": {"cron": "0 9 * * *", "timezone": "Mars/Olympus"}},
            },
            "job.trigger.cron.timezone",
        ),
        (
            {"id": "j", "version": "1.0.0", "trigger": {"interval": {"seconds": 0}}},
            "job.trigger.interval.seconds",
        ),
        (
            {"id": "j", "version": "1.0.0", "trigger": {"invoke": {}}, "retry": {"limit": 0}},
            "job.retry.limit",
        ),
        ({"id": "j\n", "version": "1.0.0", "trigger": {"invoke": {}}}, "job.id"),
        (
            {"id": "j", "version": "1" * 4301 + ".0.0", "trigger": {"invoke": {}}},
            "job.version: is longer than 256 characters",
        ),
        (
            {"id": "j", "version": "1.0.0-" + "1" * 251, "trigger": {"invoke": {}}},
            "job.version: is longer than 256 characters",
        ),
        (
            {
                "id": "j",
                "version": "1.0.0",
                "trigger": {"invoke": {"schema": {"description": "x" * 2_000_000}}},
            },
            "job: is 2000",
        ),
    ],
)
async def test_register_job_rejects_bad_input_naming_the_path(
    stubs: Stubs, job: dict, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.RegisterJob(req(jb.RegisterJobRequest, {"job": job}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field), err.value.details()
    assert js(await stubs.jobs.ListJobs(jb.ListJobsRequest())) == {}


@pytest.mark.parametrize(
    "order",
    [("1.0.0+a", "1.0.0+b"), ("1.0.0+b", "1.0.0+a"), ("1.0.0+a", "1.0.0+b", "1.0.0+a")],
)
async def test_of_versions_differing_only_in_build_the_last_registered_is_latest(
    stubs: Stubs, order: tuple[str, ...]
) -> None:
    for version in order:
        await register(stubs, event_job("j", ["e"], version=version))
    got = js(await stubs.jobs.GetJob(jb.GetJobRequest(id="j")))
    assert got["job"]["version"] == order[-1]
    other = next(v for v in order if v != order[-1])
    # Highest first: of equal precedence, the latest (the one events run) first.
    assert [v["version"] for v in got["versions"]] == [order[-1], other]
    assert (await send(stubs, {"name": "e"}))["runs"][0]["jobVersion"] == order[-1]
    every = await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="j", enabled=True))
    assert [j.version for j in every.jobs] == [order[-1], other]
    # Enabling or disabling another version is not a registration: latest stays.
    request = jb.SetJobEnabledRequest(job_id="j", version=other, enabled=False)
    await stubs.jobs.SetJobEnabled(request)
    assert js(await stubs.jobs.GetJob(jb.GetJobRequest(id="j")))["job"]["version"] == order[-1]


async def test_latest_version_is_the_highest_semver(stubs: Stubs) -> None:
    await register(stubs, event_job("j", ["e"], version="1.9.0"))
    await register(stubs, event_job("j", ["e"], version="1.10.0"))
    await register(stubs, event_job("j", ["e"], version="1.2.0"))
    got = js(await stubs.jobs.GetJob(jb.GetJobRequest(id="j")))
    assert got["job"]["version"] == "1.10.0" and got["job"]["latest"] is True
    assert [v["version"] for v in got["versions"]] == ["1.10.0", "1.9.0", "1.2.0"]
    event = await send(stubs, {"name": "e"})
    assert event["runs"][0]["jobVersion"] == "1.10.0"
    old = js(await stubs.jobs.GetJob(jb.GetJobRequest(id="j", version="1.2.0")))
    assert old["job"].get("latest") is None
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.GetJob(jb.GetJobRequest(id="j", version="9.9.9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_register_is_an_upsert_and_round_trips(stubs: Stubs) -> None:
    body = event_job(
        "j",
        ["a", "b"],
        source="stripe",
        filter={"amount": [{"$gt": 10}]},
        contextFilter={"env": ["prod"]},
        schema={"type": "object", "properties": {"amount": {"type": "number"}}},
    )
    body["job"].update(
        concurrencyLimit=3,
        maxDurationSeconds=60,
        logLevel="LOG_LEVEL_DEBUG",
        retry={"limit": 3, "factor": 2},
    )
    first = await register(stubs, body)
    assert first["trigger"] == body["job"]["trigger"]
    assert first["concurrencyLimit"] == 3 and first["retry"] == {"limit": 3, "factor": 2.0}
    assert first["enabled"] is True and first["logLevel"] == "LOG_LEVEL_DEBUG"
    body["job"]["name"] = "Renamed"
    second = await register(stubs, body)
    assert second["name"] == "Renamed" and second["createdAt"] == first["createdAt"]
    listed = js(await stubs.jobs.ListJobs(jb.ListJobsRequest()))
    assert [j["id"] for j in listed["jobs"]] == ["j"]


async def test_matching_names_source_filters_and_context(stubs: Stubs) -> None:
    await register(stubs, event_job("pro", ["signup"], filter={"plan": ["pro", "team"]}))
    await register(stubs, event_job("stripe", ["signup"], source="stripe"))
    await register(stubs, event_job("prod", ["signup"], context_filter={"env": ["prod"]}))
    await register(stubs, event_job("adult", ["signup"], filter={"age": [{"$gte": 18}]}))

    async def jobs_for(event: dict) -> list[str]:
        return sorted(r["jobId"] for r in (await send(stubs, event)).get("runs", []))

    assert await jobs_for({"name": "signup", "payload": {"plan": "pro"}}) == ["pro"]
    assert await jobs_for({"name": "signup", "source": "stripe"}) == ["stripe"]
    assert await jobs_for({"name": "Signup", "payload": {"plan": "pro"}}) == []
    assert await jobs_for(
        {"name": "signup", "context": {"env": "prod"}, "payload": {"age": 30}}
    ) == ["adult", "prod"]


async def test_schema_failure_creates_an_invalid_payload_run(stubs: Stubs) -> None:
    schema = {
        "type": "object",
        "required": ["userId"],
        "properties": {"userId": {"type": "string"}},
    }
    await register(stubs, event_job("typed", ["new.user"], schema=schema))
    ok = await send(stubs, {"name": "new.user", "payload": {"userId": "u_1"}})
    assert ok["runs"][0]["status"] == "RUN_STATUS_QUEUED"
    bad = await send(stubs, {"name": "new.user", "payload": {"userId": 7}})
    run = bad["runs"][0]
    assert run["status"] == "RUN_STATUS_INVALID_PAYLOAD" and "completedAt" in run
    assert run["validationErrors"] == [{"path": "/userId", "message": "7 is not of type 'string'"}]


async def test_a_schema_that_recurses_for_some_payloads_gives_invalid_payload_runs(
    start_server: StartServer,
) -> None:
    # Registration cannot see this cycle: only a payload with "x" walks into it.
    schema = {"properties": {"x": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"$ref": "#/$defs/a"}}}
    clock = FakeClock()
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(stubs, event_job("loop", ["e"], schema=schema))
        fine = await send(stubs, {"name": "e", "payload": {"y": 1}})
        assert fine["runs"][0]["status"] == "RUN_STATUS_QUEUED"
        now = await send(stubs, {"name": "e", "payload": {"x": 1}})
        run = now["runs"][0]
        assert run["status"] == "RUN_STATUS_INVALID_PAYLOAD"
        assert "recurses without end" in run["validationErrors"][0]["message"]
        # Delivered later by the timer loop, which must survive it.
        await send(stubs, {"name": "e", "id": "later", "payload": {"x": 2}}, deliver_after=30)
        clock.advance(31)

        async def delivered() -> dict | None:
            got = js(await stubs.events.GetEvent(ev.GetEventRequest(id="later")))
            return got if got["event"]["status"] == "EVENT_STATUS_DELIVERED" else None

        got = await eventually(delivered)
        assert got["runs"][0]["status"] == "RUN_STATUS_INVALID_PAYLOAD"
        assert (await send(stubs, {"name": "other"}))["status"] == "EVENT_STATUS_DELIVERED"


async def test_a_call_whose_payloads_cost_too_much_to_validate_is_refused_whole(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each level of "a" applies the level below twice: 2^depth steps for a list that deep.
    schema = {
        "$defs": {"a": {"type": "array", "items": {"allOf": [{"$ref": "#/$defs/a"}] * 2}}},
        "$ref": "#/$defs/a",
    }
    monkeypatch.setattr(matching, "MAX_CALL_STEPS", 100_000)
    costly: list = []
    for _ in range(12):  # 28,668 steps: a value's own budget takes it, four do not
        costly = [costly]
    clock = FakeClock()
    server = await start_server(clock=clock)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stubs = make_stubs(channel)
        await register(stubs, event_job("deep", ["e"], schema=schema))
        three = [{"name": "e", "payload": costly} for _ in range(3)]
        sent = await stubs.events.SendEvents(req(ev.SendEventsRequest, {"events": three}))
        assert [r.status for e in sent.events for r in e.runs] == [run_pb2.RUN_STATUS_QUEUED] * 3
        four = [{"name": "e", "id": f"four-{i}", "payload": costly} for i in range(4)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.events.SendEvents(req(ev.SendEventsRequest, {"events": four}))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "takes over 100,000 steps: send fewer or smaller events" in (
            refused.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stubs.events.GetEvent(ev.GetEventRequest(id="four-0"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # MatchEvent says what a send would: each job's validation shares the budget.
        for i in range(4):
            await register(stubs, event_job(f"deep{i}", ["m"], schema=schema))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.events.MatchEvent(
                req(ev.MatchEventRequest, {"event": {"name": "m", "payload": costly}})
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Delayed events are delivered a budget's worth per round, every one in the end,
        # even one whose own jobs need more than a round's budget.
        await send(stubs, {"name": "m", "id": "alone", "payload": costly}, deliver_after=30)
        for i in range(4):
            await send(
                stubs, {"name": "e", "id": f"later-{i}", "payload": costly}, deliver_after=30
            )
        clock.advance(31)

        async def delivered() -> list[dict] | None:
            got = [
                js(await stubs.events.GetEvent(ev.GetEventRequest(id=i)))
                for i in ("alone", *(f"later-{n}" for n in range(4)))
            ]
            done = all(g["event"]["status"] == "EVENT_STATUS_DELIVERED" for g in got)
            return got if done else None

        got = await eventually(delivered, within=60)  # CPU-bound: a slow machine takes long
        assert [len(g["runs"]) for g in got] == [4, 1, 1, 1, 1]
        statuses = {r["status"] for g in got for r in g["runs"]}
        assert statuses == {"RUN_STATUS_QUEUED"}


async def test_nothing_stored_after_a_disable_runs_the_disabled_version(stubs: Stubs) -> None:
    # Writes that arrive together share a transaction: the invokes and events after
    # the disable in it must already see the job disabled.
    await register(stubs, event_job("j", ["e"]))
    for round_ in range(10):
        await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="j", enabled=True))

        async def invoke(key: str) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):  # FAILED_PRECONDITION once disabled
                await stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="j", idempotency_key=key))

        await asyncio.gather(
            *(invoke(f"{round_}-{n}") for n in range(3)),
            *(send(stubs, {"name": "e"}) for _ in range(2)),
            stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="j", enabled=False)),
            *(invoke(f"{round_}-{n}") for n in range(3, 6)),
            *(send(stubs, {"name": "e"}) for _ in range(2)),
        )
        runs = js(await stubs.runs.ListRuns(rn.ListRunsRequest(job_id="j", page_size=1000)))
        active = [r for r in runs.get("runs", []) if r["status"] == "RUN_STATUS_QUEUED"]
        assert active == [], f"round {round_}: {active}"


async def test_disabling_stops_matching_and_aborts_active_runs(stubs: Stubs) -> None:
    await register(stubs, event_job("j", ["e"]))
    run = (await send(stubs, {"name": "e"}))["runs"][0]
    reply = js(await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="j", enabled=False)))
    assert reply["abortedRunIds"] == [run["id"]]
    assert reply["jobs"][0]["enabled"] is False
    aborted = js((await stubs.runs.GetRun(rn.GetRunRequest(id=run["id"]))).run)
    assert aborted["status"] == "RUN_STATUS_ABORTED"
    assert "runs" not in await send(stubs, {"name": "e"})
    await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="j", enabled=True))
    assert len((await send(stubs, {"name": "e"}))["runs"]) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="nope", enabled=True))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("trigger", "field", "problem"),
    [
        ({"names": [" "]}, "job.trigger.event.names[0]", "is blank"),
        ({"names": ["ok", "a\u0000b"]}, "job.trigger.event.names[1]", "holds the control"),
        ({"names": ["x" * 257]}, "job.trigger.event.names[0]", "is longer than the limit of 256"),
        ({"names": ["x"], "source": "s" * 257}, "job.trigger.event.source", "is longer than"),
        ({"names": ["x"], "source": "a\nb"}, "job.trigger.event.source", "holds the control"),
    ],
)
async def test_a_trigger_no_event_could_match_is_refused(
    stubs: Stubs, trigger: dict, field: str, problem: str
) -> None:
    body = {"job": {"id": "j", "version": "1.0.0", "trigger": {"event": trigger}}}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.RegisterJob(req(jb.RegisterJobRequest, body))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}: {problem}")
    assert js(await stubs.jobs.ListJobs(jb.ListJobsRequest())) == {}


async def test_registering_a_version_again_disabled_aborts_its_active_runs(stubs: Stubs) -> None:
    await register(stubs, event_job("j", ["e"], "1.0.0"))
    old = (await send(stubs, {"name": "e"}))["runs"][0]
    await register(stubs, event_job("j", ["e"], "2.0.0"))
    new = (await send(stubs, {"name": "e"}))["runs"][0]
    disabled = event_job("j", ["e"], "1.0.0")
    disabled["job"]["enabled"] = False
    assert (await register(stubs, disabled))["enabled"] is False
    statuses = {}
    for run_id in (old["id"], new["id"]):
        statuses[run_id] = js((await stubs.runs.GetRun(rn.GetRunRequest(id=run_id))).run)["status"]
    assert statuses == {old["id"]: "RUN_STATUS_ABORTED", new["id"]: "RUN_STATUS_QUEUED"}
    # Registered disabled again, or first registered disabled: nothing to abort.
    await register(stubs, disabled)
    fresh = event_job("j", ["e"], "3.0.0")
    fresh["job"]["enabled"] = False
    await register(stubs, fresh)
    still = js((await stubs.runs.GetRun(rn.GetRunRequest(id=new["id"]))).run)["status"]
    assert still == "RUN_STATUS_QUEUED"


async def test_invoke_job_is_idempotent_by_key_and_validates(stubs: Stubs) -> None:
    await register(
        stubs,
        {
            "job": {
                "id": "inv",
                "version": "1.0.0",
                "trigger": {"invoke": {"schema": {"type": "object", "required": ["n"]}}},
            }
        },
    )
    body = {"jobId": "inv", "payload": {"n": 1}, "idempotencyKey": "k1"}
    first = js(await stubs.jobs.InvokeJob(req(jb.InvokeJobRequest, body)))
    assert first["run"]["status"] == "RUN_STATUS_QUEUED" and "deduplicated" not in first
    again = js(await stubs.jobs.InvokeJob(req(jb.InvokeJobRequest, body)))
    assert again["run"]["id"] == first["run"]["id"] and again["deduplicated"] is True
    event = js(await stubs.events.GetEvent(ev.GetEventRequest(id="k1")))
    assert event["event"]["name"] == "tripwire.invoke"
    bad = js(await stubs.jobs.InvokeJob(req(jb.InvokeJobRequest, {"jobId": "inv"})))
    assert bad["run"]["status"] == "RUN_STATUS_INVALID_PAYLOAD"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="inv", idempotency_key="k" * 300))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("idempotency_key: is longer")
    # A key that is already another event's id: sent (whether or not it ran this
    # job), or another job's invoke.
    await send(stubs, {"name": "elsewhere", "id": "taken"})
    await register(stubs, event_job("other", ["x"]))
    await stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="other", idempotency_key="k2"))
    await register(stubs, event_job("inv", ["ran-it"]))
    assert len((await send(stubs, {"name": "ran-it", "id": "ran"}))["runs"]) == 1
    for key in ("taken", "k2", "ran"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="inv", idempotency_key=key))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert f"idempotency_key {key!r} is already the id of another event" in (
            err.value.details() or ""
        )


async def test_cron_jobs_can_be_invoked(stubs: Stubs) -> None:
    await register(
        stubs,
        {"job": {"id": "daily", "version": "0.0.1", "trigger": {"cron": {"cron": "0 9 * * *"}}}},
    )
    got = js(await stubs.jobs.GetJob(jb.GetJobRequest(id="daily")))
    assert got["job"]["nextFireAt"].endswith("T09:00:00Z")
    run = js(await stubs.jobs.InvokeJob(jb.InvokeJobRequest(job_id="daily")))
    assert run["run"]["jobId"] == "daily"
    # Without a payload, a fire's: `ts` now, as an ISO-8601 UTC string.
    event = js(await stubs.events.GetEvent(ev.GetEventRequest(id=run["run"]["eventId"])))
    assert list(event["event"]["payload"]) == ["ts"]
    ts, created = event["event"]["payload"]["ts"], event["event"]["createdAt"]
    assert ts.endswith("Z") and datetime.fromisoformat(ts) == datetime.fromisoformat(created)
    given = req(jb.InvokeJobRequest, {"jobId": "daily", "payload": {"ts": "then"}})
    run = js(await stubs.jobs.InvokeJob(given))
    event = js(await stubs.events.GetEvent(ev.GetEventRequest(id=run["run"]["eventId"])))
    assert event["event"]["payload"] == {"ts": "then"}


async def test_a_disabled_schedule_shows_no_next_fire(stubs: Stubs) -> None:
    await register(
        stubs,
        {"job": {"id": "daily", "version": "0.0.1", "trigger": {"cron": {"cron": "0 9 * * *"}}}},
    )
    off = js(await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="daily", enabled=False)))
    assert "nextFireAt" not in off["jobs"][0]
    assert "nextFireAt" not in js(await stubs.jobs.GetJob(jb.GetJobRequest(id="daily")))["job"]
    on = js(await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="daily", enabled=True)))
    assert on["jobs"][0]["nextFireAt"].endswith("T09:00:00Z")


def _big_job(job_id: str, version: str = "1.0.0") -> dict:
    """A job of ~0.9 MB (under the 1 MiB a job may take): its schema's description."""
    return event_job(
        job_id, ["e"], version, schema={"type": "object", "description": "x" * 900_000}
    )


async def test_list_jobs_pages_end_before_a_clients_4_mib_limit(stubs: Stubs) -> None:
    for i in range(5):
        await register(stubs, _big_job(f"big-{i}"))
    seen: list[str] = []
    pages = 0
    token = ""
    while True:
        page = await stubs.jobs.ListJobs(jb.ListJobsRequest(page_token=token))
        pages += 1
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"big-{i}" for i in range(5)]
    assert pages >= 2


async def test_list_jobs_pages_on_after_any_job_id(stubs: Stubs) -> None:
    ids = ["a", "b.c-d_e", "0-9", "z" * 128]
    for job_id in ids:
        await register(stubs, event_job(job_id, ["e"]))
    seen: list[str] = []
    token = ""
    while True:
        page = await stubs.jobs.ListJobs(jb.ListJobsRequest(page_token=token, page_size=1))
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(ids)


@pytest.mark.parametrize(
    # A job id is no token: it would have listed the jobs after it, skipping others.
    "token",
    ["Not A Job!", "\u00b2", "-1", "x" * 500, "zzz", "a", "YWZ0ZXI6"],
)
async def test_list_jobs_refuses_a_page_token_it_never_issued(stubs: Stubs, token: str) -> None:
    await register(stubs, event_job("a", ["e"]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.ListJobs(jb.ListJobsRequest(page_token=token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "page_token: is not a token this server issued"


async def test_get_job_pages_through_many_large_versions(stubs: Stubs) -> None:
    for minor in range(5):
        await register(stubs, _big_job("big", f"1.{minor}.0"))
    versions: list[str] = []
    pages = 0
    token = ""
    while True:
        page = await stubs.jobs.GetJob(jb.GetJobRequest(id="big", page_token=token))
        pages += 1
        assert page.job.version == "1.4.0"  # the latest, on every page
        versions += [v.version for v in page.versions]
        token = page.next_page_token
        if not token:
            break
    expected = [f"1.{minor}.0" for minor in reversed(range(5))]
    assert versions == expected and pages >= 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.jobs.GetJob(jb.GetJobRequest(id="big", page_token="later"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("page_token")


async def test_set_job_enabled_keeps_its_reply_readable(
    stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_jobs, "MAX_ABORTED_IDS", 2)
    for minor in range(5):
        await register(stubs, _big_job("big", f"1.{minor}.0"))
    runs = [(await send(stubs, {"name": "e"}))["runs"][0]["id"] for _ in range(3)]
    reply = await stubs.jobs.SetJobEnabled(jb.SetJobEnabledRequest(job_id="big", enabled=False))
    assert reply.more_jobs and 1 <= len(reply.jobs) < 5
    assert [j.version for j in reply.jobs] == [f"1.{m}.0" for m in (4, 3, 2, 1, 0)][
        : len(reply.jobs)
    ]
    assert reply.aborted_run_count == 3
    assert list(reply.aborted_run_ids) == runs[:2]  # oldest first
    aborted = await stubs.runs.ListRuns(
        rn.ListRunsRequest(job_id="big", status=run_pb2.RUN_STATUS_ABORTED)
    )
    assert sorted(r.id for r in aborted.runs) == sorted(runs)
    small = await stubs.jobs.SetJobEnabled(
        jb.SetJobEnabledRequest(job_id="big", version="1.0.0", enabled=True)
    )
    assert not small.more_jobs and [j.version for j in small.jobs] == ["1.0.0"]
    assert small.aborted_run_count == 0
