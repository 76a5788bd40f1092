"""The Python client, both flavours, and the CLI against a real server (SPEC §2, §3, §5, §8).

The blocking client runs in a worker thread (``asyncio.to_thread``): the server lives on
this test's event loop, which must keep serving while the blocking call waits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import tripwire.client.client as client_module
from pydantic import BaseModel
from tripwire.client import (
    AsyncClient,
    Cancelled,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LogEntry,
    NotFound,
    Run,
    Unauthenticated,
    Unavailable,
    _channel,
    cli,
    cron_trigger,
    event_trigger,
    invoke_trigger,
)
from tripwire.v1 import (
    event_pb2,
    event_service_pb2,
    job_pb2,
    job_service_pb2,
    run_service_pb2,
)

from ..conftest import StartServer, Stubs


class Both:
    """One client in either flavour; every method returns an awaitable."""

    def __init__(self, client: Client | AsyncClient) -> None:
        self.client = client
        self.flavour = "async" if isinstance(client, AsyncClient) else "sync"

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if isinstance(self.client, AsyncClient):
            return method

        def in_thread(*args: Any, **kwargs: Any) -> Any:
            return asyncio.to_thread(method, *args, **kwargs)

        return in_thread

    async def watch(self, run_id: str, timeout: float = 10) -> list[Any]:  # noqa: ASYNC109
        if isinstance(self.client, AsyncClient):
            return [update async for update in self.client.watch_run(run_id, timeout=timeout)]
        client = self.client
        return await asyncio.to_thread(lambda: list(client.watch_run(run_id, timeout=timeout)))

    async def close(self) -> None:
        if isinstance(self.client, AsyncClient):
            await self.client.close()
        else:
            self.client.close()


def make(flavour: str, address: str, api_key: str | None = None) -> Both:
    cls = AsyncClient if flavour == "async" else Client
    return Both(cls("tests", address, api_key=api_key, timeout=10))


@pytest.fixture(params=["sync", "async"])
async def tw(request: pytest.FixtureRequest, start_server: StartServer) -> AsyncIterator[Both]:
    server = await start_server()
    both = make(request.param, server.address)
    yield both
    await both.close()


class NewUser(BaseModel):
    userId: str


async def welcome_job(tw: Both, job_id: str = "welcome", **options: Any) -> Any:
    return await tw.register_job(
        job_id, version="1.0.0", trigger=event_trigger("new.user"), **options
    )


# -- events -----------------------------------------------------------------------------


async def test_send_event_delivers_and_a_resend_is_deduplicated(tw: Both) -> None:
    await welcome_job(tw)
    event = await tw.send_event(
        {"name": "new.user", "payload": {"userId": "u_1", "n": 1.0}, "context": {"env": "t"}}
    )
    assert len(event.id) == 26  # the client's ULID
    assert (event.status, event.source, event.deduplicated) == ("DELIVERED", "trigger.dev", False)
    assert event.payload == {"userId": "u_1", "n": 1}
    assert event.context == {"env": "t"}
    assert event.delivered_at is not None and event.delivered_at.tzinfo is UTC
    assert [(r.job_id, r.status) for r in event.runs] == [("welcome", "QUEUED")]

    again = await tw.send_event({"name": "new.user", "id": event.id, "payload": {"x": 1}})
    assert again.deduplicated and again.payload == event.payload and again.runs == ()

    detail = await tw.get_event(event.id)
    assert detail.event.id == event.id
    assert [r.id for r in detail.runs] == [event.runs[0].id]


async def test_delayed_event_pending_then_cancelled(tw: Both) -> None:
    due = datetime.now(UTC) + timedelta(hours=1)
    event = await tw.send_event({"name": "later"}, deliver_at=due, deliver_after=5)
    assert (event.status, event.delivered_at) == ("PENDING", None)
    assert event.deliver_at is not None and abs(event.deliver_at - due) < timedelta(seconds=1)
    cancelled = await tw.cancel_event(event.id)
    assert cancelled.status == "CANCELLED" and cancelled.cancelled_at is not None
    assert (await tw.cancel_event(event.id)).status == "CANCELLED"
    delivered = await tw.send_event({"name": "now"})
    with pytest.raises(FailedPrecondition):
        await tw.cancel_event(delivered.id)


async def test_options_may_come_as_a_dict_as_the_spec_writes_them(tw: Both) -> None:
    event = await tw.send_event({"name": "later"}, {"deliver_after": 60})
    assert event.status == "PENDING"
    both = await tw.send_events([{"name": "a"}], {"deliver_after": 60}, account_id="acct")
    assert both[0].status == "PENDING" and both[0].account_id == "acct"
    with pytest.raises(TypeError, match="options must be a dict"):
        await tw.send_event({"name": "x"}, 60)


class LostReply(grpc.RpcError):
    """UNAVAILABLE after the call reached the server: its reply was lost."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset"


class TimedOutAfterStoring(LostReply):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


class FailsAfterStoring:
    """The events stub, but a send fails with `error` once the server has it: the
    first of each method only (`once`), or every one."""

    def __init__(self, stub: Any, flavour: str, error: type[LostReply], once: bool) -> None:
        self.stub, self.flavour, self.error, self.once = stub, flavour, error, once
        self.failed: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.stub, name)
        if name not in ("SendEvent", "SendEvents"):
            return method

        def call(request: Any, **kwargs: Any) -> Any:
            reply = method(request, **kwargs)
            if self.once and name in self.failed:
                return reply
            self.failed.add(name)
            if self.flavour == "sync":
                raise self.error()

            async def stored_then_failed() -> Any:
                await reply
                raise self.error()

            return stored_then_failed()

        return call


async def test_a_send_repeated_after_a_lost_reply_answers_as_the_first_would(tw: Both) -> None:
    """The client's retry finds what its first try stored: for ids it made, that is
    this call's event, not another's (deduplicated, without its runs)."""
    await tw.register_job("welcome", version="1.0.0", trigger=event_trigger("new.user"))
    stubs = tw.client._live_stubs()
    stubs.events = lossy = FailsAfterStoring(stubs.events, tw.flavour, LostReply, once=True)
    event = await tw.send_event({"name": "new.user"})
    assert not event.deduplicated and [r.job_id for r in event.runs] == ["welcome"]
    given = {"name": "new.user", "id": "mine"}
    batch = await tw.send_events([{"name": "new.user"}, given])
    # An id given by the caller may have been sent by anyone: it stays deduplicated.
    assert [(e.deduplicated, len(e.runs)) for e in batch] == [(False, 1), (True, 0)]
    assert lossy.failed == {"SendEvent", "SendEvents"}


async def test_a_failed_send_names_the_ids_it_sent_so_that_it_can_be_sent_again(
    tw: Both,
) -> None:
    stubs = tw.client._live_stubs()
    stub = stubs.events
    stubs.events = FailsAfterStoring(stub, tw.flavour, TimedOutAfterStoring, once=False)
    with pytest.raises(DeadlineExceeded) as err:
        await tw.send_events([{"name": "a"}, {"name": "b", "id": "given"}])
    minted, given = err.value.event_ids
    assert given == "given" and minted
    stubs.events = stub
    again = await tw.send_events([{"name": "a", "id": minted}, {"name": "b", "id": "given"}])
    assert [e.deduplicated for e in again] == [True, True]  # stored once, by the first
    with pytest.raises(NotFound) as missing:
        await tw.get_event("nope")
    assert missing.value.event_ids == ()


async def test_send_events_is_ordered_and_atomic(tw: Both) -> None:
    await welcome_job(tw)
    events = await tw.send_events(
        [{"name": "new.user"}, {"name": "other"}, {"name": "new.user", "id": "mine"}],
        account_id="acct-1",
    )
    assert [e.name for e in events] == ["new.user", "other", "new.user"]
    assert events[2].id == "mine"
    assert {e.account_id for e in events} == {"acct-1"}
    assert [len(e.runs) for e in events] == [1, 0, 1]
    assert await tw.send_events([]) == []
    with pytest.raises(InvalidArgument):
        await tw.send_events([{"name": "ok", "id": "x1"}, {"name": "n" * 1000}])
    with pytest.raises(NotFound):
        await tw.get_event("x1")


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_send_events_over_the_byte_limit_raises_invalid_argument(
    flavour: str, start_server: StartServer
) -> None:
    server = await start_server(max_batch_bytes=5000)
    tw = make(flavour, server.address)
    try:
        events = [{"name": "a", "id": f"e{i}", "payload": {"blob": "x" * 1000}} for i in range(5)]
        over = r"^events: are \d+ bytes, over the limit of 5000 bytes"
        with pytest.raises(InvalidArgument, match=over):
            await tw.send_events(events)
        with pytest.raises(NotFound):
            await tw.get_event("e0")
    finally:
        await tw.close()


async def test_list_events_pages_newest_first(tw: Both) -> None:
    sent = [(await tw.send_event({"name": "tick", "payload": {"i": i}})).id for i in range(5)]
    await tw.send_event({"name": "tock"})
    ids: list[str] = []
    token = None
    while True:
        page = await tw.list_events(name="tick", page_size=2, page_token=token)
        assert len(page) <= 2
        ids += [e.id for e in page]
        token = page.next_page_token
        if token is None:
            break
    assert ids == sent[::-1]
    delivered = await tw.list_events(status="delivered")
    assert len(delivered.items) == 6
    assert (await tw.list_events(status="PENDING")).items == ()


async def test_errors_are_typed(tw: Both) -> None:
    with pytest.raises(NotFound) as info:
        await tw.get_event("nope")
    assert info.value.code_name == "NOT_FOUND" and info.value.details
    with pytest.raises(InvalidArgument, match=r"^event\.name: is required$"):
        await tw.send_event({"payload": {}})  # refused before the call
    with pytest.raises(InvalidArgument, match=r"^event\.name: holds the control character"):
        await tw.send_event({"name": "x\n"})  # refused by the server


_TRIGGER = job_pb2.Trigger(event=job_pb2.EventTrigger(names=["a"]))


def _job(**fields: Any) -> job_pb2.Job:
    return job_pb2.Job(**{"id": "j", "version": "1.0.0", "trigger": _TRIGGER, **fields})


# (what the client is asked, the same request sent as it is, past the client's checks)
_REFUSED_ALIKE: list[tuple[Any, Any]] = [
    (
        lambda c: c.send_event({"name": ""}),
        lambda s: s.events.SendEvent(
            event_service_pb2.SendEventRequest(event=event_pb2.EventInput(name=""))
        ),
    ),
    (
        lambda c: c.send_event({"name": "neg"}, deliver_after=-5),
        lambda s: s.events.SendEvent(
            event_service_pb2.SendEventRequest(
                event=event_pb2.EventInput(name="neg"),
                options=event_pb2.SendEventOptions(deliver_after=-5),
            )
        ),
    ),
    (
        lambda c: c.send_events([{"name": "a"}, {"name": ""}]),
        lambda s: s.events.SendEvents(
            event_service_pb2.SendEventsRequest(
                events=[event_pb2.EventInput(name="a"), event_pb2.EventInput(name="")]
            )
        ),
    ),
    (
        lambda c: c.match_event({"name": ""}),
        lambda s: s.events.MatchEvent(
            event_service_pb2.MatchEventRequest(event=event_pb2.EventInput(name=""))
        ),
    ),
    (
        lambda c: c.get_event(""),
        lambda s: s.events.GetEvent(event_service_pb2.GetEventRequest()),
    ),
    (
        lambda c: c.cancel_event(""),
        lambda s: s.events.CancelEvent(event_service_pb2.CancelEventRequest()),
    ),
    (
        lambda c: c.cancel_runs_for_event(""),
        lambda s: s.events.CancelRunsForEvent(event_service_pb2.CancelRunsForEventRequest()),
    ),
    (
        lambda c: c.register_job("", version="1.0.0", trigger=event_trigger("a")),
        lambda s: s.jobs.RegisterJob(job_service_pb2.RegisterJobRequest(job=_job(id=""))),
    ),
    (
        lambda c: c.register_job("j", version="", trigger=event_trigger("a")),
        lambda s: s.jobs.RegisterJob(job_service_pb2.RegisterJobRequest(job=_job(version=""))),
    ),
    (
        lambda c: c.register_job(
            "j", version="1.0.0", trigger=event_trigger("a"), retry={"limit": 0}
        ),
        lambda s: s.jobs.RegisterJob(
            job_service_pb2.RegisterJobRequest(job=_job(retry=job_pb2.RetryPolicy(limit=0)))
        ),
    ),
    (
        lambda c: c.register_job(
            "j", version="1.0.0", trigger=event_trigger("a"), retry={"min_timeout_ms": 90_000}
        ),
        lambda s: s.jobs.RegisterJob(
            job_service_pb2.RegisterJobRequest(
                job=_job(retry=job_pb2.RetryPolicy(min_timeout_ms=90_000))
            )
        ),
    ),
    (
        lambda c: c.get_job(""),
        lambda s: s.jobs.GetJob(job_service_pb2.GetJobRequest()),
    ),
    (
        lambda c: c.set_job_enabled("", False),
        lambda s: s.jobs.SetJobEnabled(job_service_pb2.SetJobEnabledRequest()),
    ),
    (
        lambda c: c.invoke_job(""),
        lambda s: s.jobs.InvokeJob(job_service_pb2.InvokeJobRequest()),
    ),
    (
        lambda c: c.get_run(""),
        lambda s: s.runs.GetRun(run_service_pb2.GetRunRequest()),
    ),
    (
        lambda c: c.cancel_run(""),
        lambda s: s.runs.CancelRun(run_service_pb2.CancelRunRequest()),
    ),
]


@pytest.mark.parametrize(("ask", "raw"), _REFUSED_ALIKE)
async def test_an_argument_the_client_refuses_reads_as_the_servers_refusal(
    ask: Any, raw: Any, stubs: Stubs
) -> None:
    """The client's own INVALID_ARGUMENT names the field as the server does
    (``event.name: is required``); where the server's wording stops, the client may
    add what it was given."""
    client = Client("tests", "127.0.0.1:9")  # refused before any call: never reached
    with pytest.raises(InvalidArgument) as own:
        ask(client)
    with pytest.raises(grpc.aio.AioRpcError) as sent:
        await raw(stubs)
    assert sent.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    server_says = sent.value.details()
    assert own.value.details.startswith(server_says), (own.value.details, server_says)
    assert own.value.details.partition(": ")[0] == server_says.partition(": ")[0]


# -- jobs and matching ------------------------------------------------------------------


async def test_register_get_list_and_enable_jobs(tw: Both) -> None:
    job = await welcome_job(tw, name="Welcome", concurrency_limit=2, retry={"limit": 3})
    assert (job.id, job.name, job.version, job.enabled, job.concurrency_limit) == (
        "welcome",
        "Welcome",
        "1.0.0",
        True,
        2,
    )
    assert job.trigger == event_trigger("new.user")
    assert job.retry == {"limit": 3}
    await tw.register_job("welcome", version="1.10.0", trigger=event_trigger(["new.user", "x"]))
    await tw.register_job("daily", version="0.1.0", trigger=cron_trigger("0 9 * * *"))

    latest = await tw.get_job("welcome")
    assert latest.version == "1.10.0" and latest.latest  # semver, not string order
    assert [v.version for v in latest.versions] == ["1.10.0", "1.0.0"]
    assert (await tw.get_job("welcome", version="1.0.0")).version == "1.0.0"
    daily = await tw.get_job("daily")
    assert daily.trigger is not None and daily.trigger.kind == "cron"
    assert daily.next_fire_at is not None

    page = await tw.list_jobs()
    assert [(j.id, j.version) for j in page] == [("daily", "0.1.0"), ("welcome", "1.10.0")]
    first = await tw.list_jobs(page_size=1)
    assert len(first) == 1 and first.next_page_token

    changed = await tw.set_job_enabled("welcome", False)
    assert {j.version for j in changed} == {"1.10.0", "1.0.0"}
    assert not any(j.enabled for j in changed)
    event = await tw.send_event({"name": "new.user"})
    assert event.runs == ()
    changed = await tw.set_job_enabled("welcome", True, version="1.10.0")
    assert [(j.version, j.enabled) for j in changed] == [("1.10.0", True)]

    with pytest.raises(NotFound):
        await tw.get_job("missing")
    # Versions too large for one reply come in pages, all read by get_job.
    big = {"type": "object", "description": "x" * 900_000}
    for minor in range(5):
        await tw.register_job("big", version=f"1.{minor}.0", trigger=event_trigger("b", schema=big))
    job = await tw.get_job("big", version="1.1.0")
    assert job.version == "1.1.0"
    assert [v.version for v in job.versions] == [f"1.{m}.0" for m in (4, 3, 2, 1, 0)]
    changed = await tw.set_job_enabled("big", False)  # more than one reply holds
    assert [(v.version, v.enabled) for v in changed] == [
        (f"1.{m}.0", False) for m in (4, 3, 2, 1, 0)
    ]
    with pytest.raises(InvalidArgument):
        await tw.register_job(
            "bad", version="1.0.0", trigger=event_trigger("x", filter={"a": {"$nope": 1}})
        )


async def test_match_event_explains(tw: Both) -> None:
    await welcome_job(tw)
    await tw.register_job(
        "pro-only", version="1.0.0", trigger=event_trigger("new.user", filter={"plan": ["pro"]})
    )
    await tw.register_job(
        "strict", version="1.0.0", trigger=event_trigger("new.user", schema=NewUser)
    )
    matches = {m.job_id: m for m in await tw.match_event({"name": "new.user", "payload": {}})}
    assert matches["welcome"].matched
    assert not matches["pro-only"].matched and matches["pro-only"].reason
    assert matches["strict"].matched and matches["strict"].validation_errors
    assert (await tw.list_events()).items == ()  # a dry run stores nothing


# -- runs -------------------------------------------------------------------------------


async def test_invoke_get_list_and_cancel_runs(tw: Both) -> None:
    await tw.register_job("report", version="1.0.0", trigger=invoke_trigger())
    run = await tw.invoke_job("report", {"day": "mon"}, idempotency_key="k1", account_id="a")
    assert (run.job_id, run.status, run.account_id) == ("report", "QUEUED", "a")
    assert not run.deduplicated
    again = await tw.invoke_job("report", {"day": "tue"}, idempotency_key="k1")
    assert (again.id, again.deduplicated) == (run.id, True)
    other = await tw.invoke_job("report")
    assert other.id != run.id and not other.deduplicated

    detail = await tw.get_run(run.id)
    assert detail.run.id == run.id and detail.tasks == () and detail.logs == ()
    page = await tw.list_runs(job_id="report")
    assert [r.id for r in page] == [other.id, run.id]
    assert [r.id for r in await tw.list_runs(event_id=run.event_id)] == [run.id]

    cancelled = await tw.cancel_run(run.id)
    assert cancelled.status == "CANCELED" and cancelled.terminal
    assert [r.id for r in await tw.list_runs(status="CANCELED")] == [run.id]
    with pytest.raises(FailedPrecondition):
        await tw.cancel_run(run.id)
    with pytest.raises(NotFound):
        await tw.invoke_job("missing")


async def test_cancel_runs_for_event(tw: Both) -> None:
    await welcome_job(tw)
    await welcome_job(tw, "audit")
    event = await tw.send_event({"name": "new.user"})
    cancelled = await tw.cancel_runs_for_event(event.id)
    assert sorted(cancelled) == sorted(r.id for r in event.runs)
    assert await tw.cancel_runs_for_event(event.id) == []


async def test_schema_failures_make_invalid_payload_runs(tw: Both) -> None:
    await tw.register_job(
        "strict", version="1.0.0", trigger=event_trigger("new.user", schema=NewUser)
    )
    event = await tw.send_event({"name": "new.user", "payload": {"user": 1}})
    (run,) = event.runs
    assert run.status == "INVALID_PAYLOAD"
    assert run.validation_errors and all(e.message for e in run.validation_errors)
    updates = await tw.watch(run.id)  # a finished run: its state, then the end
    assert isinstance(updates[0], Run) and updates[-1].status == "INVALID_PAYLOAD"


async def test_watch_and_wait_for_a_run(tw: Both) -> None:
    await welcome_job(tw)
    (run,) = (await tw.send_event({"name": "new.user"})).runs
    waiter = asyncio.ensure_future(tw.wait_for_run(run.id, timeout=10))
    with pytest.raises(DeadlineExceeded) as late:
        await tw.wait_for_run(run.id, statuses=["SUCCESS"], timeout=0.1)
    assert isinstance(late.value, TimeoutError)
    assert str(late.value) == f"run {run.id} is still QUEUED after 0.1 s, not yet SUCCESS"
    await tw.cancel_run(run.id)
    assert (await waiter).status == "CANCELED"
    updates = await tw.watch(run.id)
    runs = [u for u in updates if isinstance(u, Run)]
    assert runs[-1].status == "CANCELED"
    assert not any(isinstance(u, LogEntry) for u in updates)
    with pytest.raises(FailedPrecondition, match="never reaching EXECUTING"):
        await tw.wait_for_run(run.id, statuses={"EXECUTING"}, timeout=10)
    with pytest.raises(NotFound):
        await tw.wait_for_run("missing", timeout=10)
    # A budget already spent, even on a run that has ended: at once, every time.
    for spent in (0, 0.0, -1):
        for _ in range(10):
            with pytest.raises(DeadlineExceeded):
                await tw.wait_for_run(run.id, timeout=spent)
            with pytest.raises(DeadlineExceeded):
                await tw.watch(run.id, timeout=spent)


# -- connection, auth -------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_api_keys(flavour: str, start_server: StartServer) -> None:
    server = await start_server(api_keys={"k-prod": "prod"})
    for key in (None, "wrong"):
        anonymous = make(flavour, server.address, api_key=key)
        with pytest.raises(Unauthenticated):
            await anonymous.list_events()
        await anonymous.close()
    keyed = make(flavour, server.address, api_key="k-prod")
    assert (await keyed.send_event({"name": "x"})).status == "DELIVERED"
    await keyed.close()


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_an_unreachable_server_is_unavailable(
    flavour: str, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    address = server.address
    await server.stop(grace=0)
    monkeypatch.setattr(_channel, "BACKOFF_BASE", 0.0)
    client = make(flavour, address)
    with pytest.raises(Unavailable):
        await client.get_event("x")
    await client.close()


async def test_async_client_reopens_after_close(start_server: StartServer) -> None:
    server = await start_server()
    async with AsyncClient("tests", server.address) as client:
        await client.send_event({"name": "a"})
    assert len(await client.list_events()) == 1  # a call after close opens a new channel
    await client.close()


async def test_sync_client_aio_shares_settings(start_server: StartServer) -> None:
    server = await start_server(api_keys={"k": "env"})
    with Client("tests", server.address, api_key="k") as client:
        event = await client.aio.send_event({"name": "a"})
        detail = await asyncio.to_thread(client.get_event, event.id)
        assert detail.event.id == event.id
        await client.aio.close()


# -- the CLI ----------------------------------------------------------------------------


async def cli_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def test_cli_commands(start_server: StartServer, capsys: pytest.CaptureFixture[str]) -> None:
    server = await start_server()
    url = ("--url", server.address)
    async with AsyncClient("tests", server.address) as client:
        await client.register_job("welcome", version="1.0.0", trigger=event_trigger("new.user"))
        await client.register_job("report", version="1.0.0", trigger=invoke_trigger())

    status, out, err = await cli_run(capsys, *url, "send", "new.user", "--payload", '{"u": 1}')
    assert (status, err) == (0, "")
    assert "status        DELIVERED" in out and "welcome" in out and "QUEUED" in out

    status, out, _ = await cli_run(capsys, *url, "--json", "send", "new.user", "--id", "e-2")
    sent = json.loads(out)
    assert sent["id"] == "e-2" and sent["runs"][0]["job_id"] == "welcome"
    run_id = sent["runs"][0]["id"]

    status, out, _ = await cli_run(capsys, "events", *url, "--limit", "1")
    assert status == 0 and out.splitlines()[0].startswith("ID") and "e-2" in out
    status, out, _ = await cli_run(capsys, *url, "event", "e-2")
    assert "runs:" in out and run_id in out
    status, out, _ = await cli_run(capsys, *url, "jobs")
    assert "report" in out and "event new.user" in out
    status, out, _ = await cli_run(capsys, *url, "job", "welcome")
    assert "versions:" in out and "1.0.0" in out
    status, out, _ = await cli_run(capsys, *url, "runs", "--job", "welcome", "--status", "QUEUED")
    assert run_id in out
    status, out, _ = await cli_run(capsys, *url, "run", run_id)
    assert "tasks: none" in out and "logs: none" in out
    status, out, _ = await cli_run(capsys, *url, "match", "new.user", "--payload", "{}")
    assert "welcome" in out and "yes" in out
    status, _, err = await cli_run(capsys, *url, "event", "")  # refused before any call
    assert status == 2 and err.strip() == "error: id: is required"
    status, out, _ = await cli_run(capsys, *url, "invoke", "report", "--idempotency-key", "k")
    assert "job           report@1.0.0" in out and "deduplicated" not in out
    status, out, _ = await cli_run(capsys, *url, "invoke", "report", "--idempotency-key", "k")
    assert "(deduplicated: this idempotency key's earlier call started this run)" in out
    status, out, _ = await cli_run(capsys, *url, "cancel-run", run_id)
    assert "CANCELED" in out
    status, out, _ = await cli_run(capsys, *url, "--json", "send", "later", "--deliver-after", "60")
    later = json.loads(out)
    assert later["status"] == "PENDING"
    status, out, _ = await cli_run(capsys, *url, "cancel-event", later["id"])
    assert "CANCELLED" in out

    status, out, err = await cli_run(capsys, *url, "run", "missing")
    assert (status, out) == (1, "")
    assert err.startswith("error: NOT_FOUND: ")
    status, out, err = await cli_run(capsys, *url, "cancel-run", run_id)
    assert status == 1 and err.startswith("error: FAILED_PRECONDITION: ")


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_wait_with_a_timeout_waits_for_a_server_it_cannot_reach_yet(
    flavour: str, unused_tcp_port: int
) -> None:
    """Until its timeout, not for a few quick retries; without one, UNAVAILABLE."""
    both = make(flavour, f"127.0.0.1:{unused_tcp_port}")
    try:
        with pytest.raises(DeadlineExceeded, match="run run_x was not seen after 1 s") as late:
            await both.wait_for_run("run_x", timeout=1)
        assert "its time was spent" not in str(late.value)  # but why: it could not connect
        assert "connect" in str(late.value).lower(), late.value
        with pytest.raises(Unavailable):
            await both.wait_for_run("run_x")
    finally:
        await both.close()


async def test_closing_an_async_client_ends_its_calls_with_an_error_not_a_cancellation(
    start_server: StartServer,
) -> None:
    """A task waiting on a call was not cancelled: it must not see CancelledError
    (a TaskGroup, say, would take it for its own). A task that is cancelled still is."""
    server = await start_server()
    client = AsyncClient("tests", server.address)
    await client.register_job("inv", version="1.0.0", trigger=invoke_trigger())
    run = await client.invoke_job("inv")  # no worker: it stays QUEUED
    seen = asyncio.Event()

    async def wait() -> Run:
        async for update in client.watch_run(run.id, timeout=10):
            seen.set()
            assert isinstance(update, Run)
        raise AssertionError("the watch ended")

    waiting = asyncio.create_task(wait())
    await asyncio.wait_for(seen.wait(), 10)
    await client.close()
    with pytest.raises(Cancelled, match="the client was closed during the call") as err:
        await waiting
    assert err.value.code == grpc.StatusCode.CANCELLED
    cancelled = asyncio.create_task(client.wait_for_run(run.id, timeout=10))
    await asyncio.sleep(0)  # let it start its call
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await client.close()


def close_at_the_first_retry(both: Both, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Closes the client when the call first gets UNAVAILABLE, before its next try
    (as another thread or task would while the call waits to try again)."""
    delay = getattr(client_module, name)

    def closing(*args: Any, **kwargs: Any) -> Any:
        client = both.client
        if isinstance(client, Client):
            client.close()
        elif client._stubs is not None:  # at once: the next try comes after this task
            asyncio.get_running_loop().create_task(client.close())
        return delay(*args, **kwargs)

    monkeypatch.setattr(client_module, name, closing)


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize(
    ("delay", "call"),
    [
        # Not with gRPC's ValueError or UsageError about the closed channel.
        ("retry_delay", lambda both: both.list_events()),
        # The wait does not open a channel of its own and go on to its timeout.
        ("rewatch_delay", lambda both: both.wait_for_run("run_x", timeout=60)),
    ],
    ids=["call", "wait_for_run"],
)
async def test_a_client_closed_before_a_calls_next_try_ends_it_with_cancelled(
    flavour: str,
    delay: str,
    call: Callable[[Both], Awaitable[Any]],
    unused_tcp_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    both = make(flavour, f"127.0.0.1:{unused_tcp_port}")
    close_at_the_first_retry(both, monkeypatch, delay)
    with pytest.raises(Cancelled, match="the client was closed during the call"):
        await call(both)
    assert both.client._stubs is None  # closed, and left so
    await both.close()


async def test_a_repeated_batch_whose_read_back_fails_leaves_no_lookup_running(
    start_server: StartServer,
) -> None:
    server = await start_server()
    client = AsyncClient("tests", server.address, timeout=10)
    stubs = client._live_stubs()
    sends = FailsAfterStoring(stubs.events, "async", LostReply, once=True)
    in_flight = 0

    class ReadsFail:
        def __getattr__(self, name: str) -> Any:
            if name != "GetEvent":
                return getattr(sends, name)

            async def fails(request: Any, **kwargs: Any) -> Any:
                nonlocal in_flight
                in_flight += 1
                try:
                    await asyncio.sleep(0)  # a call in flight
                    raise LostReply()
                finally:
                    in_flight -= 1

            return fails

    stubs.events = ReadsFail()
    read_back = client._as_sent
    unfinished = 0

    async def counted(*args: Any) -> Any:
        nonlocal unfinished
        unfinished += 1
        try:
            return await read_back(*args)
        finally:
            unfinished -= 1

    client._as_sent = counted  # type: ignore[method-assign]
    with pytest.raises(Unavailable) as err:
        await client.send_events([{"name": f"e{i}"} for i in range(100)])
    assert len(err.value.event_ids) == 100
    # Every lookup (with its retries) ended before the error was raised.
    assert (unfinished, in_flight) == (0, 0)
    await client.close()
