"""Request building and the call loops (auth, retries) against fake stubs: no server."""

from __future__ import annotations

import asyncio
import decimal
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from tripwire.client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Run,
    TripwireError,
    Unavailable,
    _channel,
    _requests,
    convert,
    event_trigger,
)
from tripwire.client.errors import from_rpc_error
from tripwire.v1 import event_pb2, event_service_pb2, run_pb2, run_service_pb2
from ulid import ULID

# -- request building -------------------------------------------------------------------


def test_send_event_gives_the_event_a_ulid_and_is_idempotent() -> None:
    call = _requests.send_event({"name": "new.user", "payload": {"userId": "u_1"}})
    request = call.request
    assert isinstance(request, event_service_pb2.SendEventRequest)
    ULID.from_str(request.event.id)  # a valid ULID
    assert (call.service, call.method, call.idempotent) == ("events", "SendEvent", True)
    assert convert.from_value(request.event.payload) == {"userId": "u_1"}
    assert not request.event.HasField("context")
    assert request.event.source == ""  # the server applies its default


def test_each_event_gets_its_own_id_and_a_given_id_is_kept() -> None:
    call = _requests.send_events([{"name": "a"}, {"name": "b"}, {"name": "c", "id": "mine"}])
    ids = [e.id for e in call.request.events]  # type: ignore[attr-defined]
    assert len(set(ids)) == 3
    assert ids[2] == "mine"
    assert call.idempotent


def test_send_options() -> None:
    when = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    call = _requests.send_event(
        {"name": "a", "timestamp": when}, deliver_at=when, deliver_after=60, account_id="acct"
    )
    options = call.request.options  # type: ignore[attr-defined]
    assert options.deliver_after == 60
    assert options.account_id == "acct"
    assert convert.timestamp_to_datetime(options.deliver_at) == when
    assert convert.timestamp_to_datetime(call.request.event.timestamp) == when  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({}, "event.name: is required"),
        ({"name": ""}, "event.name: is required"),
        ({"name": "a", "paylod": {}}, "event.paylod: is not an event (known: context, id, name,"),
        ({"name": "a", 3: 1}, "event[3]: is not an event (known: "),
        ({"name": "a", "payload": {"n": 2**60}}, "event.payload.n: integer"),
        (
            {"name": "a", "timestamp": datetime(2024, 1, 1)},
            "event.timestamp: 2024-01-01 00:00:00 is",
        ),
        ({"name": "a", "context": b"x"}, "event.context: bytes is not a JSON value"),
        ("new.user", "event: must be a dict with at least a name, got str"),
    ],
)
def test_bad_events_are_invalid_arguments(event: Any, message: str) -> None:
    """Named as the server names the field (``event.name: is required``)."""
    with pytest.raises(InvalidArgument, match=re.escape(message)) as info:
        _requests.send_event(event)
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert str(info.value).startswith(message)
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        _requests.match_event(event)
    # In a batch, by its place in the request's list.
    with pytest.raises(InvalidArgument) as info:
        _requests.send_events([{"name": "ok"}, event])
    assert str(info.value).startswith(message.replace("event", "events[1]", 1))


def test_misspelt_options_are_type_errors() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'deliver_afer'"):
        _requests.send_event({"name": "a"}, deliver_afer=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="list_runs"):
        _requests.list_runs(job="j")  # type: ignore[call-arg]


def test_only_reads_sends_and_keyed_invokes_are_retried() -> None:
    trigger = event_trigger("a")
    assert _requests.get_event("e").idempotent
    assert _requests.list_events().idempotent
    assert _requests.get_run("r").idempotent
    assert _requests.list_runs().idempotent
    assert _requests.get_job("j", None).idempotent
    assert _requests.list_jobs().idempotent
    assert _requests.match_event({"name": "a"}).idempotent
    assert _requests.invoke_job("j", None, idempotency_key="k").idempotent
    assert not _requests.invoke_job("j", {"a": 1}).idempotent
    assert not _requests.cancel_event("e").idempotent
    assert not _requests.cancel_run("r").idempotent
    assert not _requests.cancel_runs_for_event("e").idempotent
    assert not _requests.register_job("j", version="1.0.0", trigger=trigger).idempotent
    assert not _requests.set_job_enabled("j", False, None).idempotent


def test_list_filters() -> None:
    request: Any = _requests.list_runs(job_id="j", status="success", page_size=5).request
    assert (request.job_id, request.status, request.page_size) == (
        "j",
        run_pb2.RUN_STATUS_SUCCESS,
        5,
    )
    request = _requests.list_events(status="PENDING", page_token="t").request
    assert (request.status, request.page_token) == (event_pb2.EVENT_STATUS_PENDING, "t")
    with pytest.raises(InvalidArgument, match=r"^status: must be one of QUEUED, .*, got 'DONE'$"):
        _requests.list_runs(status="DONE")


@pytest.mark.parametrize(
    "build",
    [
        lambda: _requests.list_events(page_size=-1),
        lambda: _requests.list_runs(page_size=-1),
        lambda: _requests.list_jobs(page_size=-1),
        lambda: _requests.get_job("j", 5),
        lambda: _requests.set_job_enabled("j", True, 5),
        lambda: _requests.set_job_enabled("j", "yes", None),
    ],
)
def test_a_bad_argument_of_any_call_is_invalid_argument(build: Any) -> None:
    with pytest.raises(InvalidArgument):
        build()


_WHEN = "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: _requests.list_runs(page_size=-1), "page_size: must be a whole number >= 0"),
        (lambda: _requests.list_events(page_size=-5), "page_size: must be a whole number >= 0"),
        (lambda: _requests.list_jobs(page_size=2**40), "page_size: must be a whole number >= 0"),
        (lambda: _requests.list_runs(page_size="10"), "page_size: must be a whole number >= 0"),
        (lambda: _requests.list_runs(job_id=5), "job_id: must be a string, got int"),
        (lambda: _requests.list_runs(event_id=5), "event_id: must be a string, got int"),
        (lambda: _requests.list_events(name=5), "name: must be a string, got int"),
        (lambda: _requests.list_events(status=5), "status: must be a string, got int"),
        (lambda: _requests.list_runs(status=["SUCCESS"]), "status: must be a string, got list"),
        (lambda: _requests.list_events(status="done"), "status: must be one of PENDING, "),
        (lambda: _requests.send_event({"name": 5}), "event.name: must be a string, got int"),
        (lambda: _requests.list_events(page_token=7), "page_token: must be a string"),
        (lambda: _requests.send_event({"name": "x", "id": 5}), "event.id: must be a string"),
        (lambda: _requests.send_event({"name": "x", "source": 5}), "event.source: must be"),
        (lambda: _requests.send_event({"name": "x"}, account_id=5), "options.account_id: must"),
        (lambda: _requests.send_events("x"), "events: must be a list of event dicts"),
        (
            lambda: _requests.send_events([{"name": "x"}, {"name": "y", "id": 5}]),
            "events[1].id: must be a string",
        ),
        (lambda: _requests.invoke_job("", None), "job_id: is required"),
        (lambda: _requests.invoke_job(None, None), "job_id: is required"),  # type: ignore[arg-type]
        (
            lambda: _requests.invoke_job("j", None, idempotency_key=5),
            "idempotency_key: must be a string",
        ),
        (lambda: _requests.invoke_job("j", None, account_id=5), "account_id: must be a string"),
        (lambda: _requests.invoke_job("j", {"n": 2**60}), "payload.n: integer"),
        (lambda: _requests.invoke_job("j", None, context=b"x"), "context: bytes is not a JSON"),
        (
            lambda: _requests.send_event({"name": "x", "timestamp": _WHEN}),
            "event.timestamp: must be a timezone-aware datetime, got str",
        ),
        (
            lambda: _requests.send_event({"name": "x"}, deliver_at=_WHEN),
            "options.deliver_at: must be a timezone-aware datetime, got str",
        ),
        (
            lambda: _requests.send_event({"name": "x"}, deliver_at=datetime(2030, 1, 1)),
            "options.deliver_at: 2030-01-01 00:00:00 is naive",
        ),
        (lambda: _requests.get_event(""), "id: is required"),
        (lambda: _requests.cancel_event(""), "id: is required"),
        (lambda: _requests.cancel_runs_for_event(""), "id: is required"),
        (lambda: _requests.get_job("", None), "id: is required"),
        (lambda: _requests.get_job("j", 5), "version: must be a string, got int"),  # type: ignore[arg-type]
        (lambda: _requests.set_job_enabled("", True, None), "job_id: is required"),
        (lambda: _requests.set_job_enabled("j", True, 5), "version: must be a string"),  # type: ignore[arg-type]
        (lambda: _requests.set_job_enabled("j", "yes", None), "enabled: "),  # type: ignore[arg-type]
        (lambda: _requests.get_run(""), "id: is required"),
        (lambda: _requests.cancel_run(""), "id: is required"),
        (lambda: _requests.watch_run("", None), "id: is required"),
        (lambda: _requests.run_statuses(["RUNNING"]), "statuses: must be one of QUEUED, "),
        (lambda: _requests.run_statuses([4]), "statuses: must be a string, got int"),  # type: ignore[list-item]
        (lambda: _requests.run_statuses([]), "statuses: must name at least one run status"),
        (lambda: _requests.run_statuses(["unspecified"]), "statuses: must be one of QUEUED, "),
        (lambda: _requests.run_statuses(5), "statuses: must be run status names, got 5"),  # type: ignore[arg-type]
        (lambda: _requests.list_runs(status="UNSPECIFIED"), "status: must be one of QUEUED, "),
    ],
)
def test_a_bad_argument_is_named(build: Any, message: str) -> None:
    """``field: problem``, the field as the server names it in its own message."""
    with pytest.raises(InvalidArgument) as info:
        build()
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("after", "problem"),
    [
        (1.5, "must be whole seconds, got 1.5"),
        (True, "must be whole seconds, got True"),
        ("60", "must be whole seconds, got '60'"),
        (-1, "must not be negative"),  # the server's words
        (2**63, "is past the year 9999"),
    ],
)
def test_a_bad_deliver_after_is_named_as_the_server_names_it(after: Any, problem: str) -> None:
    message = f"options.deliver_after: {problem}"
    with pytest.raises(InvalidArgument) as info:
        _requests.send_event({"name": "x"}, deliver_after=after)
    assert str(info.value) == message
    with pytest.raises(InvalidArgument) as info:
        _requests.send_events([{"name": "x"}], deliver_after=after)
    assert str(info.value) == message


def test_register_job_request() -> None:
    call = _requests.register_job(
        "welcome",
        version="1.2.0",
        trigger=event_trigger("new.user"),
        name="Welcome",
        enabled=False,
        concurrency_limit=2,
        retry={"limit": 3},
        log_level="debug",
    )
    job: Any = call.request.job  # type: ignore[attr-defined]
    assert (job.id, job.name, job.version, job.enabled, job.concurrency_limit) == (
        "welcome",
        "Welcome",
        "1.2.0",
        False,
        2,
    )
    assert job.retry.limit == 3
    assert job.log_level == 5
    with pytest.raises(InvalidArgument, match=r"^job\.trigger: must come from event_trigger\(\)"):
        _requests.register_job("j", version="1", trigger={"event": {}})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"^job\.retry\.tries: is not a retry option"):
        _requests.register_job("j", version="1", trigger=event_trigger("a"), retry={"tries": 1})


@pytest.mark.parametrize(
    ("id", "options", "message"),
    [
        ("", {}, "job.id: is required"),
        ("j", {"version": ""}, "job.version: is required"),
        ("j", {"name": 5}, "job.name: must be a string, got int"),
        ("j", {"enabled": "no"}, "job.enabled: "),
        ("j", {"concurrency_limit": -1}, "job.concurrency_limit: "),
        ("j", {"max_duration_seconds": 1.5}, "job.max_duration_seconds: "),
        ("j", {"log_level": "LOUD"}, "job.log_level: must be one of LOG, ERROR, WARN, INFO, DEBUG"),
        ("j", {"log_level": 3}, "job.log_level: must be a string, got int"),
        ("j", {"retry": {"limit": 0}}, "job.retry.limit: must be between 1 and 100"),
        ("j", {"retry": {"factor": "x"}}, "job.retry.factor: "),
        ("j", {"retry": 3}, "job.retry: must be a dict"),
        (
            "j",
            {"trigger": event_trigger("a", filter={"tags": [b"x"]})},
            "job.trigger.event.filter.tags[0]: bytes is not a JSON value",
        ),
    ],
)
def test_a_bad_job_is_named_as_the_server_names_it(
    id: str, options: dict[str, Any], message: str
) -> None:
    given: dict[str, Any] = {"version": "1.0.0", "trigger": event_trigger("a"), **options}
    with pytest.raises(InvalidArgument) as info:
        _requests.register_job(id, **given)
    assert str(info.value).startswith(message)


def test_enabled_defaults_to_true_and_name_to_empty() -> None:
    job: Any = _requests.register_job("j", version="1.0.0", trigger=event_trigger("a")).request
    assert job.job.HasField("enabled") and job.job.enabled
    assert job.job.name == ""


@pytest.mark.parametrize(
    ("bad", "message"),
    [("", "id: is required"), (None, "id: is required"), (3, "id: must be a string, got int")],
)
def test_ids_are_required(bad: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        _requests.get_run(bad)
    assert str(info.value) == message


def test_watch_updates_and_wait_statuses() -> None:
    reply = run_service_pb2.WatchRunResponse(run=run_pb2.Run(id="r", status=4))
    update = _requests.watch_update(reply)
    assert isinstance(update, Run) and update.status == "SUCCESS"
    assert _requests.watch_update(run_service_pb2.WatchRunResponse()) is None
    assert _requests.run_statuses(["executing", "RUN_STATUS_WAITING"]) == {"EXECUTING", "WAITING"}
    assert _requests.run_statuses("success") == {"SUCCESS"}
    assert _requests.run_statuses(s for s in ("success",)) == {"SUCCESS"}  # read once
    with pytest.raises(InvalidArgument):
        _requests.run_statuses(["RUNNING"])
    assert isinstance(_requests.wait_ended("r", None, frozenset({"SUCCESS"})), TripwireError)
    last = convert.run_from_pb(run_pb2.Run(id="r", status=5))
    error = _requests.wait_ended("r", last, frozenset({"SUCCESS"}))
    assert isinstance(error, FailedPrecondition)
    assert "finished FAILURE" in error.details


# -- settings ---------------------------------------------------------------------------


def test_urls_and_metadata() -> None:
    settings = _channel.Settings("app", "https://tripwire.example.com/", "k1", 5)
    assert settings.target() == ("tripwire.example.com", True)
    assert settings.metadata == (("authorization", "Bearer k1"),)
    assert _channel.Settings("app", "grpc://h:1", None, None).target() == ("h:1", False)
    assert _channel.Settings("app", "h:1", None, None).metadata == ()


def test_retry_delays_are_capped_jittered_and_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    unavailable = Unavailable("down")
    monkeypatch.setattr(_channel, "BACKOFF_BASE", 0.1)
    monkeypatch.setattr(_channel, "random", SimpleNamespace(random=lambda: 1.0))
    delays = [_channel.retry_delay(True, unavailable, n) for n in range(_channel.RETRY_ATTEMPTS)]
    assert delays[-1] is None  # the last attempt is not followed by another
    assert delays[:-1] == [0.1, 0.2, 0.4]
    assert _channel.retry_delay(True, unavailable, 10) is None
    monkeypatch.setattr(_channel, "RETRY_ATTEMPTS", 100)
    assert _channel.retry_delay(True, unavailable, 20) == _channel.BACKOFF_CAP
    monkeypatch.setattr(_channel, "random", SimpleNamespace(random=lambda: 0.0))
    assert _channel.retry_delay(True, unavailable, 20) == _channel.BACKOFF_CAP / 2
    assert _channel.retry_delay(False, unavailable, 0) is None
    assert _channel.retry_delay(True, NotFound("x"), 0) is None


# -- the call loops, against fake stubs -------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"fake {self._code.name}"


class FakeMethod:
    """Fails with the given codes in turn, then answers ``reply``; records every call."""

    def __init__(self, reply: Any, *codes: grpc.StatusCode, asynchronous: bool = False) -> None:
        self.reply, self.codes, self.asynchronous = reply, list(codes), asynchronous
        self.calls: list[dict[str, Any]] = []

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append({"request": request, **kwargs})
        if self.asynchronous:
            return self._answer_later()
        return self._answer()

    def _answer(self) -> Any:
        if self.codes:
            raise FakeRpcError(self.codes.pop(0))
        return self.reply

    async def _answer_later(self) -> Any:
        return self._answer()


class FakeService:
    def __init__(self, **methods: FakeMethod) -> None:
        self.__dict__.update(methods)


class FakeStubs:
    def __init__(self, **services: FakeService) -> None:
        self.events = services.get("events")
        self.jobs = services.get("jobs")
        self.runs = services.get("runs")


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_channel, "BACKOFF_BASE", 0.0)


EVENT_REPLY = event_service_pb2.SendEventResponse(event=event_pb2.Event(id="e1", name="a"))
RUN_REPLY = run_service_pb2.CancelRunResponse(run=run_pb2.Run(id="r1", status=6))
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _sync_client(**services: FakeService) -> Client:
    client = Client("test", api_key="secret", timeout=7)
    client._stubs = FakeStubs(**services)  # type: ignore[assignment]
    return client


def test_sync_call_sends_key_timeout_and_retries_unavailable() -> None:
    method = FakeMethod(EVENT_REPLY, UNAVAILABLE, UNAVAILABLE)
    client = _sync_client(events=FakeService(SendEvent=method))
    event = client.send_event({"name": "a"})
    assert event.id == "e1"
    assert len(method.calls) == 3
    assert method.calls[0]["metadata"] == (("authorization", "Bearer secret"),)
    assert method.calls[0]["timeout"] == 7
    # Every attempt sends the same event id, which is what makes the retry safe.
    assert len({call["request"].event.id for call in method.calls}) == 1


def test_sync_call_gives_up_after_the_last_attempt() -> None:
    method = FakeMethod(EVENT_REPLY, *[UNAVAILABLE] * _channel.RETRY_ATTEMPTS)
    client = _sync_client(events=FakeService(SendEvent=method))
    with pytest.raises(Unavailable, match="fake UNAVAILABLE"):
        client.send_event({"name": "a"})
    assert len(method.calls) == _channel.RETRY_ATTEMPTS


def test_sync_call_never_retries_a_non_idempotent_call_or_another_code() -> None:
    cancel = FakeMethod(RUN_REPLY, UNAVAILABLE)
    client = _sync_client(runs=FakeService(CancelRun=cancel))
    with pytest.raises(Unavailable):
        client.cancel_run("r1")
    assert len(cancel.calls) == 1
    get = FakeMethod(None, grpc.StatusCode.NOT_FOUND)
    client = _sync_client(runs=FakeService(GetRun=get))
    with pytest.raises(NotFound):
        client.get_run("r1")
    assert len(get.calls) == 1


async def test_async_call_retries_unavailable_and_maps_errors() -> None:
    send = FakeMethod(EVENT_REPLY, UNAVAILABLE, asynchronous=True)
    cancel = FakeMethod(RUN_REPLY, grpc.StatusCode.FAILED_PRECONDITION, asynchronous=True)
    client = AsyncClient("test", api_key="secret")
    client._stubs = FakeStubs(  # type: ignore[assignment]
        events=FakeService(SendEvent=send), runs=FakeService(CancelRun=cancel)
    )
    client._loop = asyncio.get_running_loop()
    assert (await client.send_event({"name": "a"})).id == "e1"
    assert len(send.calls) == 2
    assert send.calls[1]["metadata"] == (("authorization", "Bearer secret"),)
    with pytest.raises(FailedPrecondition):
        await client.cancel_run("r1")
    assert len(cancel.calls) == 1


async def test_empty_batches_make_no_call() -> None:
    assert await AsyncClient("test").send_events([]) == []
    assert Client("test").send_events([]) == []


def _watch_replies() -> Iterator[run_service_pb2.WatchRunResponse]:
    yield run_service_pb2.WatchRunResponse(run=run_pb2.Run(id="r1", status=1))
    yield run_service_pb2.WatchRunResponse(log=run_pb2.LogEntry(seq=1, message="hi"))
    yield run_service_pb2.WatchRunResponse(run=run_pb2.Run(id="r1", status=2))
    yield run_service_pb2.WatchRunResponse(run=run_pb2.Run(id="r1", status=4))


class FakeStream:
    def __init__(self, replies: Iterator[Any]) -> None:
        self.replies, self.cancelled = replies, False

    def __iter__(self) -> Iterator[Any]:
        return self.replies

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def test_sync_watch_and_wait() -> None:
    streams: list[FakeStream] = []

    def watch(request: Any, **kwargs: Any) -> FakeStream:
        streams.append(FakeStream(_watch_replies()))
        return streams[-1]

    client = _sync_client(runs=FakeService(WatchRun=watch))  # type: ignore[arg-type]
    updates = list(client.watch_run("r1"))
    assert [type(u).__name__ for u in updates] == ["Run", "LogEntry", "Run", "Run"]
    assert client.wait_for_run("r1", statuses=["EXECUTING"]).status == "EXECUTING"
    assert streams[-1].cancelled  # stopping early cancels the stream
    assert client.wait_for_run("r1").status == "SUCCESS"
    with pytest.raises(FailedPrecondition, match="finished SUCCESS, never reaching WAITING"):
        client.wait_for_run("r1", statuses={"WAITING"})


def test_sync_watch_retries_only_before_the_first_update() -> None:
    attempts: list[int] = []

    def failing(first: bool) -> Iterator[Any]:
        if not first:
            yield run_service_pb2.WatchRunResponse(run=run_pb2.Run(id="r1", status=1))
        raise FakeRpcError(UNAVAILABLE)

    def watch(request: Any, **kwargs: Any) -> FakeStream:
        attempts.append(1)
        return FakeStream(failing(first=len(attempts) == 1))

    client = _sync_client(runs=FakeService(WatchRun=watch))  # type: ignore[arg-type]
    with pytest.raises(Unavailable):
        list(client.watch_run("r1"))
    assert len(attempts) == 2  # the opening was retried once, the broken stream was not


def test_from_rpc_error_is_what_the_loops_use() -> None:
    assert isinstance(from_rpc_error(FakeRpcError(UNAVAILABLE)), Unavailable)


def test_async_client_outside_a_loop_and_settings() -> None:
    client = Client("app", "h:1", api_key="k", timeout=None)
    assert repr(client) == "Client('app', url='h:1')"
    aio = client.aio
    assert aio is client.aio
    assert (aio.name, aio.url, aio.api_key, aio.timeout) == ("app", "h:1", "k", None)
    client.close()  # no channel yet: nothing to do


def test_a_wait_that_timed_out_says_where_the_run_stands() -> None:
    wanted = frozenset({"SUCCESS", "FAILURE"})
    why = DeadlineExceeded("failed to connect")
    timed_out = _requests.wait_timed_out("run_1", None, wanted, None, why)
    assert isinstance(timed_out, TimeoutError)
    assert (
        str(timed_out) == "run run_1 was not seen, not yet FAILURE or SUCCESS (failed to connect)"
    )


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 1e12])
def test_a_timeout_that_no_call_could_meet_is_refused(timeout: float) -> None:
    """gRPC fails every call at once for these (a deadline past what it counts too).
    A watch takes 0 or less as a budget spent: over at once."""
    with pytest.raises(ValueError, match="timeout: must be a number of seconds > 0 and at most"):
        Client("app", "h:1", timeout=timeout)
    if timeout <= 0:
        with pytest.raises(DeadlineExceeded):
            next(Client("app", "h:1").watch_run("run_1", timeout=timeout))
    else:
        with pytest.raises(InvalidArgument, match="timeout: must be a number of seconds at most"):
            Client("app", "h:1").watch_run("run_1", timeout=timeout)
    assert Client("app", "h:1", timeout=None).timeout is None
    assert Client("app", "h:1", timeout=0.5).timeout == 0.5


def test_send_events_takes_any_iterable_of_events() -> None:
    call = _requests.send_events({"name": f"e{i}"} for i in range(3))
    assert [e.name for e in call.request.events] == ["e0", "e1", "e2"]
    assert len(call.minted) == 3
    assert Client("app", "h:1").send_events(e for e in ()) == []  # no call made
    assert Client("app", "h:1", timeout=decimal.Decimal("1.5")).timeout == 1.5
