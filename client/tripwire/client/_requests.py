"""Every unary RPC of the client, described once for both flavours.

Each function checks its arguments, builds the request message and returns a
:class:`Call`: which service and method to call, whether a retry on UNAVAILABLE is safe,
and how to turn the reply into models. :class:`~tripwire.client.AsyncClient` and
:class:`~tripwire.client.Client` only execute calls, so they never disagree on what a
method sends or returns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Generic, Literal, TypeVar, Unpack

from google.protobuf.message import Message
from tripwire.client import convert
from tripwire.client._channel import check_timeout
from tripwire.client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    TripwireError,
)
from tripwire.client.models import (
    TERMINAL_RUN_STATUSES,
    Event,
    EventDetail,
    Job,
    JobMatch,
    LogEntry,
    Page,
    Run,
    RunDetail,
    Task,
    Trigger,
)
from tripwire.client.options import (
    EventFilters,
    InvokeOptions,
    JobOptions,
    PageOptions,
    RunFilters,
    SendOptions,
)
from tripwire.v1 import (
    event_pb2,
    event_service_pb2,
    job_pb2,
    job_service_pb2,
    run_pb2,
    run_service_pb2,
)
from ulid import ULID

R = TypeVar("R")
Service = Literal["events", "jobs", "runs"]

_EVENT_KEYS = frozenset({"name", "payload", "context", "id", "timestamp", "source"})


@dataclass(frozen=True, slots=True)
class Call(Generic[R]):
    """One unary RPC, ready to execute."""

    service: Service
    method: str
    request: Message
    convert: Callable[[Any], R]
    #: Safe to repeat after UNAVAILABLE: the server cannot apply it twice.
    idempotent: bool = False
    #: The event ids this client made for the request. Repeated, a send finds such
    #: an event stored only if its own earlier try stored it.
    minted: frozenset[str] = frozenset()


@contextmanager
def _arguments() -> Iterator[None]:
    """Bad input found while building a request is INVALID_ARGUMENT, as from the server:
    every check below says ``field.path: problem``, the path naming the request field
    as the server's own message for it would."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(str(exc)) from exc


def new_event_id() -> str:
    """A fresh ULID, the id the client gives every event sent without one."""
    return str(ULID())


# -- events ----------------------------------------------------------------------------


def event_input(event: Mapping[str, Any], field: str = "event") -> event_pb2.EventInput:
    """An ``EventInput`` from an event dict; an event without an id gets a new ULID.
    ``field`` is where the request holds it (``events[2]``), for the errors."""
    if not isinstance(event, Mapping):
        raise TypeError(f"{field}: must be a dict with at least a name, got {type(event).__name__}")
    convert.no_unknown_keys(event, _EVENT_KEYS, field, "an event")
    name = event.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{field}.name: must be a string, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{field}.name: is required")
    message = event_pb2.EventInput(
        name=name,
        id=_text(event.get("id"), f"{field}.id") or new_event_id(),
        source=_text(event.get("source"), f"{field}.source"),
    )
    for key in ("payload", "context"):
        if event.get(key) is not None:
            convert.fill_value(getattr(message, key), event[key], what=f"{field}.{key}")
    if event.get("timestamp") is not None:
        message.timestamp.CopyFrom(
            convert.datetime_to_timestamp(event["timestamp"], what=f"{field}.timestamp")
        )
    return message


def send_options_message(
    options: SendOptions, field: str = "options"
) -> event_pb2.SendEventOptions:
    """The options of a send (client.send_event(s), io.send_event(s)), checked;
    ``field`` is where the request holds them, for the errors."""
    convert.no_unknown_keys(options, SendOptions.__optional_keys__, field, "a send option")
    deliver_after = options.get("deliver_after")
    if deliver_after is not None:
        if isinstance(deliver_after, bool) or not isinstance(deliver_after, int):
            raise TypeError(f"{field}.deliver_after: must be whole seconds, got {deliver_after!r}")
        if deliver_after < 0:
            raise ValueError(f"{field}.deliver_after: must not be negative")
        if deliver_after > convert.LAST_SECOND:  # past it from any now
            raise ValueError(f"{field}.deliver_after: is past the year 9999")
    message = event_pb2.SendEventOptions(
        deliver_after=deliver_after or 0,
        account_id=_text(options.get("account_id"), f"{field}.account_id"),
    )
    deliver_at = options.get("deliver_at")
    if deliver_at is not None:
        message.deliver_at.CopyFrom(
            convert.datetime_to_timestamp(deliver_at, what=f"{field}.deliver_at")
        )
    return message


def send_event(event: Mapping[str, Any], **options: Unpack[SendOptions]) -> Call[Event]:
    known_options("send_event", options, SendOptions)
    with _arguments():
        request = event_service_pb2.SendEventRequest(
            event=event_input(event), options=send_options_message(options)
        )
    minted = frozenset(() if event.get("id") else (request.event.id,))
    return Call("events", "SendEvent", request, _event_reply, idempotent=True, minted=minted)


def _event_reply(reply: Any) -> Event:
    return convert.event_from_pb(reply.event)


def send_events(
    events: Sequence[Mapping[str, Any]], **options: Unpack[SendOptions]
) -> Call[list[Event]]:
    known_options("send_events", options, SendOptions)
    with _arguments():
        if isinstance(events, (str, bytes, Mapping)):
            raise TypeError("events: must be a list of event dicts")
        events = list(events)  # read twice below: a generator would be spent
        request = event_service_pb2.SendEventsRequest(
            events=[event_input(e, f"events[{i}]") for i, e in enumerate(events)],
            options=send_options_message(options),
        )
    minted = frozenset(i.id for e, i in zip(events, request.events, strict=True) if not e.get("id"))
    return Call("events", "SendEvents", request, _events_reply, idempotent=True, minted=minted)


def sent_ids(call: Call[Any]) -> tuple[str, ...]:
    """The ids of a send's events, for its error (TripwireError.event_ids)."""
    request: Any = call.request
    if isinstance(request, event_service_pb2.SendEventRequest):
        return (request.event.id,)
    return tuple(event.id for event in request.events)


def stored_by_an_earlier_try(event: Event, call: Call[Any]) -> bool:
    """A repeated send's reply says deduplicated, with no runs, for what its own
    earlier try (whose reply was lost) stored: for an id the client made, nobody
    else could have. The caller gets what that try's reply would have said."""
    return event.deduplicated and event.id in call.minted


def as_first_sent(detail: EventDetail) -> Event:
    return replace(detail.event, deduplicated=False, runs=detail.runs)


def _events_reply(reply: Any) -> list[Event]:
    return [convert.event_from_pb(e) for e in reply.events]


def get_event(id: str, page_token: str = "") -> Call[tuple[EventDetail, str]]:
    """One page of an event's runs, and the token of the next ("" when done); the
    clients' get_event reads them all."""
    request = event_service_pb2.GetEventRequest(id=_id(id), page_token=page_token)
    return Call("events", "GetEvent", request, _event_detail, idempotent=True)


def _event_detail(reply: Any) -> tuple[EventDetail, str]:
    runs = tuple(convert.run_from_pb(r) for r in reply.runs)
    return EventDetail(event=convert.event_from_pb(reply.event), runs=runs), reply.next_page_token


def more_event_detail(detail: EventDetail, page: EventDetail) -> EventDetail:
    """``detail`` with the runs of its next page (and the event as of then)."""
    return EventDetail(page.event, detail.runs + page.runs)


def list_events(**filters: Unpack[EventFilters]) -> Call[Page[Event]]:
    known_options("list_events", filters, EventFilters)
    with _arguments():
        request = event_service_pb2.ListEventsRequest(
            name=_text(filters.get("name"), "name"),
            status=_status(event_pb2.EventStatus, filters.get("status"), "EVENT_STATUS_"),
            page_size=_page_size(filters.get("page_size")),
            page_token=_text(filters.get("page_token"), "page_token"),
        )
    return Call("events", "ListEvents", request, _event_page, idempotent=True)


def _event_page(reply: Any) -> Page[Event]:
    items = tuple(convert.event_from_pb(e) for e in reply.events)
    return Page(items, reply.next_page_token or None)


def cancel_event(id: str) -> Call[Event]:
    request = event_service_pb2.CancelEventRequest(id=_id(id))
    return Call("events", "CancelEvent", request, _event_reply)


def cancel_runs_for_event(id: str) -> Call[list[str]]:
    request = event_service_pb2.CancelRunsForEventRequest(id=_id(id))
    return Call("events", "CancelRunsForEvent", request, _cancelled_run_ids)


def _cancelled_run_ids(reply: Any) -> list[str]:
    return list(reply.cancelled_run_ids)


def match_event(event: Mapping[str, Any]) -> Call[list[JobMatch]]:
    with _arguments():
        request = event_service_pb2.MatchEventRequest(event=event_input(event))
    return Call("events", "MatchEvent", request, _matches, idempotent=True)


def _matches(reply: Any) -> list[JobMatch]:
    return [convert.job_match_from_pb(m) for m in reply.jobs]


# -- jobs ------------------------------------------------------------------------------


def register_job(
    id: str, *, version: str, trigger: Trigger, **options: Unpack[JobOptions]
) -> Call[Job]:
    known_options("register_job", options, JobOptions)
    with _arguments():
        if not isinstance(trigger, Trigger):
            raise TypeError(
                "job.trigger: must come from event_trigger(), cron_trigger(), "
                f"interval_trigger() or invoke_trigger(), got {type(trigger).__name__}"
            )
        job = job_pb2.Job(
            id=_id(id, "job.id"),
            name=_text(options.get("name"), "job.name"),
            version=_id(version, "job.version"),
            trigger=trigger.to_proto(field="job.trigger"),
        )
        convert.set_field(job, "enabled", options.get("enabled", True), "job.enabled")
        for name in ("concurrency_limit", "max_duration_seconds"):
            convert.set_field(job, name, options.get(name, 0), f"job.{name}")
        retry, log_level = options.get("retry"), options.get("log_level")
        if retry is not None:
            job.retry.CopyFrom(convert.retry_to_pb(retry, field="job.retry"))
        if log_level is not None:
            job.log_level = convert.enum_value(
                job_pb2.LogLevel, log_level, "LOG_LEVEL_", field="job.log_level"
            )
    request = job_service_pb2.RegisterJobRequest(job=job)
    return Call("jobs", "RegisterJob", request, _job_reply)


def _job_reply(reply: Any) -> Job:
    return convert.job_from_pb(reply.job)


def get_job(id: str, version: str | None, page_token: str = "") -> Call[tuple[Job, str]]:
    """A job with one page of its versions, and the token of the next ("" when
    done); the clients' get_job reads them all."""
    with _arguments():
        request = job_service_pb2.GetJobRequest(
            id=_id(id), version=_text(version, "version"), page_token=page_token
        )
    return Call("jobs", "GetJob", request, _job_with_versions, idempotent=True)


def _job_with_versions(reply: Any) -> tuple[Job, str]:
    return convert.job_from_pb(reply.job, reply.versions), reply.next_page_token


def more_job_versions(job: Job, page: Job) -> Job:
    """``job`` with the versions of its next page (and the job as of then)."""
    return replace(page, versions=job.versions + page.versions)


def list_jobs(**page: Unpack[PageOptions]) -> Call[Page[Job]]:
    known_options("list_jobs", page, PageOptions)
    with _arguments():
        request = job_service_pb2.ListJobsRequest(
            page_size=_page_size(page.get("page_size")),
            page_token=_text(page.get("page_token"), "page_token"),
        )
    return Call("jobs", "ListJobs", request, _job_page, idempotent=True)


def _job_page(reply: Any) -> Page[Job]:
    return Page(tuple(convert.job_from_pb(j) for j in reply.jobs), reply.next_page_token or None)


def set_job_enabled(
    job_id: str, enabled: bool, version: str | None
) -> Call[tuple[list[Job], bool]]:
    """The versions changed, and whether the reply stopped short of them all (the
    clients then read every version with get_job: all of them were changed)."""
    with _arguments():
        request = job_service_pb2.SetJobEnabledRequest(
            job_id=_id(job_id, "job_id"), version=_text(version, "version")
        )
        convert.set_field(request, "enabled", enabled, "enabled")
    return Call("jobs", "SetJobEnabled", request, _changed_jobs)


def _changed_jobs(reply: Any) -> tuple[list[Job], bool]:
    return [convert.job_from_pb(j) for j in reply.jobs], reply.more_jobs


def invoke_job(job_id: str, payload: Any, **options: Unpack[InvokeOptions]) -> Call[Run]:
    known_options("invoke_job", options, InvokeOptions)
    idempotency_key, context = options.get("idempotency_key"), options.get("context")
    with _arguments():
        request = job_service_pb2.InvokeJobRequest(
            job_id=_id(job_id, "job_id"),
            idempotency_key=_text(idempotency_key, "idempotency_key"),
            account_id=_text(options.get("account_id"), "account_id"),
        )
        if payload is not None:
            convert.fill_value(request.payload, payload, what="payload")
        if context is not None:
            convert.fill_value(request.context, context, what="context")
    # Without a key every call starts a new run, so only a keyed invoke may be repeated.
    return Call("jobs", "InvokeJob", request, _invoked, idempotent=bool(idempotency_key))


def _invoked(reply: Any) -> Run:
    run = convert.run_from_pb(reply.run)
    return replace(run, deduplicated=True) if reply.deduplicated else run


# -- runs ------------------------------------------------------------------------------


def _run_reply(reply: Any) -> Run:
    return convert.run_from_pb(reply.run)


def get_run(id: str, page_token: str = "") -> Call[tuple[RunDetail, str]]:
    """One page of a run's details, and the token of the next ("" when done);
    the clients' get_run reads them all."""
    request = run_service_pb2.GetRunRequest(id=_id(id), page_token=page_token)
    return Call("runs", "GetRun", request, _run_detail, idempotent=True)


def _run_detail(reply: Any) -> tuple[RunDetail, str]:
    detail = RunDetail(
        run=convert.run_from_pb(reply.run),
        tasks=tuple(convert.task_from_pb(t) for t in reply.tasks),
        logs=tuple(convert.log_from_pb(log) for log in reply.logs),
    )
    return detail, reply.next_page_token


def more_run_detail(detail: RunDetail, page: RunDetail) -> RunDetail:
    """``detail`` with the tasks and logs of its next page (and the run as of then)."""
    return RunDetail(page.run, detail.tasks + page.tasks, detail.logs + page.logs)


def list_runs(**filters: Unpack[RunFilters]) -> Call[Page[Run]]:
    known_options("list_runs", filters, RunFilters)
    with _arguments():
        request = run_service_pb2.ListRunsRequest(
            job_id=_text(filters.get("job_id"), "job_id"),
            event_id=_text(filters.get("event_id"), "event_id"),
            status=_status(run_pb2.RunStatus, filters.get("status"), "RUN_STATUS_"),
            page_size=_page_size(filters.get("page_size")),
            page_token=_text(filters.get("page_token"), "page_token"),
        )
    return Call("runs", "ListRuns", request, _run_page, idempotent=True)


def _run_page(reply: Any) -> Page[Run]:
    return Page(tuple(convert.run_from_pb(r) for r in reply.runs), reply.next_page_token or None)


def cancel_run(id: str) -> Call[Run]:
    request = run_service_pb2.CancelRunRequest(id=_id(id))
    return Call("runs", "CancelRun", request, _run_reply)


def watch_run(id: str, timeout: float | None) -> run_service_pb2.WatchRunRequest:
    with _arguments():
        check_timeout(timeout, spent=True)
    return run_service_pb2.WatchRunRequest(id=_id(id))


def watch_update(reply: Any) -> Run | Task | LogEntry | None:
    """The model of one WatchRun message (None for a kind this client does not know)."""
    kind = reply.WhichOneof("update")
    if kind == "run":
        return convert.run_from_pb(reply.run)
    if kind == "task":
        return convert.task_from_pb(reply.task)
    if kind == "log":
        return convert.log_from_pb(reply.log)
    return None


def run_statuses(statuses: Collection[str] | None) -> frozenset[str]:
    """Checked, upper-cased run status names (the terminal ones by default)."""
    if statuses is None:
        return TERMINAL_RUN_STATUSES
    if isinstance(statuses, str):
        statuses = (statuses,)
    with _arguments():
        if not isinstance(statuses, Iterable):
            raise TypeError(f"statuses: must be run status names, got {statuses!r}")
        statuses = list(statuses)  # read twice below: a generator would be spent
        if not statuses:
            # None would be reached: the wait would only end with the run, as an error.
            raise ValueError("statuses: must name at least one run status")
        for status in statuses:
            convert.enum_value(run_pb2.RunStatus, status, "RUN_STATUS_", field="statuses")
    return frozenset(s.strip().upper().removeprefix("RUN_STATUS_") for s in statuses)


def wait_timed_out(
    id: str,
    last: Run | None,
    wanted: frozenset[str],
    timeout: float | None,
    error: DeadlineExceeded,
) -> DeadlineExceeded:
    """The error for a wait whose timeout came first, saying where the run stands (or,
    never seen, why: a server that could not be reached, say)."""
    now = f"is still {last.status}" if last is not None else "was not seen"
    waited = f" after {float(timeout):g} s" if timeout is not None else ""
    why = f" ({error.details})" if last is None else ""
    return DeadlineExceeded(f"run {id} {now}{waited}, not yet {' or '.join(sorted(wanted))}{why}")


def wait_ended(id: str, last: Run | None, wanted: frozenset[str]) -> TripwireError:
    """The error for a watch that ended before the run reached one of ``wanted``."""
    if last is None:
        return TripwireError(f"the watch of run {id} ended without any update")
    return FailedPrecondition(
        f"run {id} finished {last.status}, never reaching {', '.join(sorted(wanted))}"
    )


# -- argument helpers ------------------------------------------------------------------


def known_options(method: str, options: Mapping[str, Any], spec: Any) -> None:
    """``**options`` accept anything at run time: refuse a misspelt option like Python."""
    unknown = set(options) - spec.__required_keys__ - spec.__optional_keys__
    if unknown:
        name = sorted(unknown)[0]
        raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


def _id(value: str, field: str = "id") -> str:
    """A required string: ``field: is required`` when absent or empty, as the server says."""
    if value is None or value == "":
        raise InvalidArgument(f"{field}: is required")
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: must be a string, got {type(value).__name__}")
    return value


def _text(value: Any, field: str) -> str:
    """An optional string argument ("" when absent), named when it is not a string."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{field}: must be a string, got {type(value).__name__}")
    return value


_MAX_PAGE_SIZE = 2**31 - 1


def _page_size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_PAGE_SIZE:
        raise ValueError(
            f"page_size: must be a whole number >= 0 (0: the server's default), got {value!r}"
        )
    return value


def _status(enum: Any, status: str | None, prefix: str) -> Any:
    if status is None:
        return 0
    if not isinstance(status, str):
        raise TypeError(f"status: must be a string, got {type(status).__name__}")
    return convert.enum_value(enum, status, prefix, field="status")
