"""Protobuf <-> records. The only module of the server that builds messages."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from tripwire.v1 import event_pb2, job_pb2, run_pb2

from ..errors import InvalidArgument
from ..events import DeliveryOptions, EventDraft
from ..matching import Verdict
from ..models import Event, Job, LogEntry, Run, Task

_SAFE_INT = 2**53
# Objects and arrays inside one JSON value. Each object costs three message levels
# (Value, Struct, map entry), and protobuf decodes no more than 100: a deeper value
# could be stored but never sent back, to a worker least of all.
MAX_JSON_DEPTH = 30


def value_to_py(value: struct_pb2.Value, field: str, depth: int = 0) -> Any:
    """`field` names the value in the error a number JSON cannot carry gets."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        if depth == MAX_JSON_DEPTH:
            raise _too_deep(field)
        depth += 1
        return {k: value_to_py(v, field, depth) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        if depth == MAX_JSON_DEPTH:
            raise _too_deep(field)
        depth += 1
        return [value_to_py(v, field, depth) for v in value.list_value.values]
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        # JSON has one number type; keep integers integers so 1 stays 1, not 1.0.
        if number.is_integer() and -_SAFE_INT < number < _SAFE_INT:
            return int(number)
        if not math.isfinite(number):  # a binary client can send them; JSON has none
            raise InvalidArgument(field, "holds NaN or Infinity, which JSON cannot carry")
        return number
    if kind == "bool_value":
        return value.bool_value
    return None


def _too_deep(field: str) -> InvalidArgument:
    return InvalidArgument(
        field, f"nests objects and arrays more than {MAX_JSON_DEPTH} levels deep"
    )


def struct_to_py(struct: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A job's filter or schema, its keys in sorted order at every level: a Struct's
    map comes out in an order that changes from process to process, and a filter is
    checked (and explained by MatchEvent, and validated) key by key in dict order."""
    found = {k: value_to_py(v, field, 1) for k, v in struct.fields.items()}
    return {k: _sorted_keys(found[k]) for k in sorted(found)}


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def value_bytes(obj: Any) -> int:
    """A JSON value's size as a request encodes it (a Value), which is what the
    payload limit counts."""
    value = struct_pb2.Value()
    py_to_value(obj, value)
    return value.ByteSize()


def py_to_value(obj: Any, out: struct_pb2.Value) -> None:
    if obj is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif obj is True or obj is False:
        out.bool_value = obj
    elif isinstance(obj, int | float):
        out.number_value = obj
    elif isinstance(obj, str):
        out.string_value = obj
    elif isinstance(obj, dict):
        struct = out.struct_value
        struct.SetInParent()
        fields = struct.fields
        for key, item in obj.items():
            py_to_value(item, fields[key])
    elif isinstance(obj, list | tuple):
        values = out.list_value
        values.SetInParent()
        for item in obj:
            py_to_value(item, values.values.add())
    else:
        raise TypeError(f"not JSON: {type(obj).__name__}")


def py_to_struct(obj: dict[str, Any], out: struct_pb2.Struct) -> None:
    out.SetInParent()
    for key, item in obj.items():
        py_to_value(item, out.fields[key])


def ms(ts: timestamp_pb2.Timestamp, field: str) -> int:
    if not 0 <= ts.nanos <= 999_999_999:
        raise InvalidArgument(field, f"nanos {ts.nanos} is outside 0 to 999,999,999")
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def set_ts(out: timestamp_pb2.Timestamp, millis: int | None) -> None:
    if millis is not None:
        # Timestamp.FromMilliseconds is Python-level; this is the same, cheaper.
        seconds, rest = divmod(millis, 1000)
        out.seconds = seconds
        out.nanos = rest * 1_000_000


def ts_json(millis: int) -> str:
    """A time as the JSON form of a Timestamp (RFC 3339, UTC)."""
    out = timestamp_pb2.Timestamp()
    set_ts(out, millis)
    return out.ToJsonString()


# -- requests -----------------------------------------------------------------


def draft(msg: event_pb2.EventInput, field: str) -> EventDraft:
    return EventDraft(
        name=msg.name,
        payload=value_to_py(msg.payload, f"{field}.payload") if msg.HasField("payload") else None,
        context=value_to_py(msg.context, f"{field}.context") if msg.HasField("context") else None,
        id=msg.id,
        timestamp=ms(msg.timestamp, f"{field}.timestamp") if msg.HasField("timestamp") else None,
        source=msg.source,
    )


def options(msg: event_pb2.SendEventOptions, field: str = "options") -> DeliveryOptions:
    return DeliveryOptions(
        deliver_at=ms(msg.deliver_at, f"{field}.deliver_at")
        if msg.HasField("deliver_at")
        else None,
        deliver_after=msg.deliver_after,
        account_id=msg.account_id,
        field=field,
    )


def job_from_pb(msg: job_pb2.Job) -> Job:
    return Job(
        env="",
        id=msg.id,
        version=msg.version,
        name=msg.name,
        trigger=trigger_from_pb(msg.trigger),
        enabled=msg.enabled if msg.HasField("enabled") else True,
        concurrency_limit=msg.concurrency_limit,
        retry=_retry_from_pb(msg.retry) if msg.HasField("retry") else None,
        max_duration_seconds=msg.max_duration_seconds,
        log_level=log_level_name(msg.log_level, "job.log_level") or "INFO",
    )


def trigger_from_pb(msg: job_pb2.Trigger) -> dict[str, Any]:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("job.trigger", "set exactly one of event, cron, interval, invoke")
    if kind == "event":
        t = msg.event
        return {
            "event": {
                "names": list(t.names),
                "source": t.source,
                "filter": struct_to_py(t.filter, "job.trigger.event.filter")
                if t.HasField("filter")
                else None,
                "context_filter": struct_to_py(t.context_filter, "job.trigger.event.context_filter")
                if t.HasField("context_filter")
                else None,
                "schema": struct_to_py(t.schema, "job.trigger.event.schema")
                if t.HasField("schema")
                else None,
            }
        }
    if kind == "cron":
        return {
            "cron": {
                "cron": msg.cron.cron,
                "timezone": msg.cron.timezone,
                "catch_up": msg.cron.catch_up,
            }
        }
    if kind == "interval":
        return {"interval": {"seconds": msg.interval.seconds, "catch_up": msg.interval.catch_up}}
    schema = msg.invoke.schema
    return {
        "invoke": {
            "schema": struct_to_py(schema, "job.trigger.invoke.schema")
            if msg.invoke.HasField("schema")
            else None
        }
    }


_RETRY_FIELDS = ("limit", "factor", "min_timeout_ms", "max_timeout_ms", "randomize")


def _retry_from_pb(msg: job_pb2.RetryPolicy) -> dict[str, Any]:
    return {f: getattr(msg, f) for f in _RETRY_FIELDS if msg.HasField(f)}  # type: ignore[arg-type]


# -- replies ------------------------------------------------------------------


def event_to_pb(
    event: Event,
    out: event_pb2.Event,
    given: event_pb2.EventInput | None = None,
    *,
    with_runs: bool = True,
) -> event_pb2.Event:
    """`given`: the request's input for this event, whose payload and context are
    copied as they are (cheaper than converting back) when the event is new.
    `with_runs`: the runs the event has at hand too."""
    out.id = event.id
    out.name = event.name
    out.source = event.source
    fresh = given if given is not None and not event.deduplicated else None
    if fresh is not None and fresh.payload.WhichOneof("kind") not in (None, "null_value"):
        out.payload.CopyFrom(fresh.payload)
    else:
        py_to_value(event.payload, out.payload)
    if fresh is not None and fresh.context.WhichOneof("kind") not in (None, "null_value"):
        out.context.CopyFrom(fresh.context)
    else:
        py_to_value(event.context, out.context)
    set_ts(out.timestamp, event.timestamp)
    set_ts(out.deliver_at, event.deliver_at)
    set_ts(out.delivered_at, event.delivered_at)
    set_ts(out.cancelled_at, event.cancelled_at)
    out.deduplicated = event.deduplicated
    out.status = _EVENT_STATUS[event.status.value]
    out.account_id = event.account_id
    set_ts(out.created_at, event.created_at)
    if with_runs:
        for run in event.runs:
            run_to_pb(run, out.runs.add())
    return out


_EVENT_STATUS = {
    name: event_pb2.EventStatus.Value(f"EVENT_STATUS_{name}")
    for name in ("PENDING", "DELIVERED", "CANCELLED")
}
_RUN_STATUS = {
    name.removeprefix("RUN_STATUS_"): number for name, number in run_pb2.RunStatus.items() if number
}


def _enum_name(enum: Any, number: int, prefix: str, field: str) -> str:
    """The name of a proto enum value without its prefix; "" for 0. An unknown
    number (open enums let a client send any) names the field."""
    if not number:
        return ""
    if number not in enum.values():
        names = ", ".join(name for name, value in enum.items() if value)
        raise InvalidArgument(field, f"{number} is not a value of {enum.DESCRIPTOR.name} ({names})")
    return str(enum.Name(number)).removeprefix(prefix)


def event_status_name(number: int) -> str:
    return _enum_name(event_pb2.EventStatus, number, "EVENT_STATUS_", "status")


def run_status_name(number: int) -> str:
    return _enum_name(run_pb2.RunStatus, number, "RUN_STATUS_", "status")


def run_to_pb(run: Run, out: run_pb2.Run) -> run_pb2.Run:
    out.id = run.id
    out.job_id = run.job_id
    out.job_version = run.job_version
    out.event_id = run.event_id
    out.status = _RUN_STATUS[run.status.value]
    out.attempt = run.attempt
    set_ts(out.created_at, run.created_at)
    set_ts(out.updated_at, run.updated_at)
    set_ts(out.started_at, run.started_at)
    set_ts(out.completed_at, run.completed_at)
    set_ts(out.wait_until, run.wait_until)
    if run.output is not None:
        py_to_value(run.output, out.output)
    if run.error:
        _error_to_pb(run.error, out.error)
    for err in run.validation_errors:
        out.validation_errors.add(path=err["path"], message=err["message"])
    out.account_id = run.account_id
    out.worker_id = run.worker_id
    return out


def job_to_pb(job: Job, out: job_pb2.Job) -> job_pb2.Job:
    out.id = job.id
    out.name = job.name
    out.version = job.version
    out.enabled = job.enabled
    out.concurrency_limit = job.concurrency_limit
    out.max_duration_seconds = job.max_duration_seconds
    out.log_level = job_pb2.LogLevel.Value(f"LOG_LEVEL_{job.log_level}")
    set_ts(out.created_at, job.created_at)
    set_ts(out.updated_at, job.updated_at)
    out.latest = job.latest
    if job.enabled:  # a disabled job's ticks pass unfired
        set_ts(out.next_fire_at, job.next_fire_at)
    if job.retry is not None:
        _retry_to_pb(job.retry, out.retry)
    kind, spec = next(iter(job.trigger.items()))
    trigger = out.trigger
    if kind == "event":
        t = trigger.event
        t.names.extend(spec["names"])
        t.source = spec.get("source") or ""
        for key in ("filter", "context_filter", "schema"):
            if spec.get(key) is not None:
                py_to_struct(spec[key], getattr(t, key))
    elif kind == "cron":
        trigger.cron.cron = spec["cron"]
        trigger.cron.timezone = spec.get("timezone", "")
        trigger.cron.catch_up = bool(spec.get("catch_up"))
    elif kind == "interval":
        trigger.interval.seconds = spec["seconds"]
        trigger.interval.catch_up = bool(spec.get("catch_up"))
    else:
        trigger.invoke.SetInParent()
        if spec.get("schema") is not None:
            py_to_struct(spec["schema"], trigger.invoke.schema)
    return out


def verdict_to_pb(verdict: Verdict, out: Any) -> None:
    out.job_id = verdict.job.id
    out.job_version = verdict.job.version
    out.matched = verdict.matched
    out.reason = verdict.reason
    for err in verdict.validation_errors:
        out.validation_errors.add(path=err["path"], message=err["message"])


_TASK_STATUS = {
    name.removeprefix("TASK_STATUS_"): number
    for name, number in run_pb2.TaskStatus.items()
    if number
}
_TASK_KIND = {
    name.removeprefix("TASK_KIND_"): number for name, number in run_pb2.TaskKind.items() if number
}


def task_to_pb(task: Task, out: run_pb2.Task) -> run_pb2.Task:
    out.id = task.id
    out.run_id = task.run_id
    out.parent_id = task.parent_id
    out.key = task.key
    out.idempotency_key = task.idempotency_key
    out.kind = _TASK_KIND[task.kind.value]
    out.status = _TASK_STATUS[task.status.value]
    out.position = task.position
    out.attempts = task.attempts
    out.name = task.name
    out.try_offset = task.try_offset
    if task.params is not None:
        py_to_value(task.params, out.params)
    if task.output is not None:
        py_to_value(task.output, out.output)
    if task.error:
        _error_to_pb(task.error, out.error)
    set_ts(out.started_at, task.started_at)
    set_ts(out.completed_at, task.completed_at)
    set_ts(out.retry_at, task.retry_at)
    if task.retry is not None:
        _retry_to_pb(task.retry, out.retry)
    return out


def log_to_pb(entry: LogEntry, out: run_pb2.LogEntry) -> run_pb2.LogEntry:
    out.seq = entry.seq
    out.level = job_pb2.LogLevel.Value(f"LOG_LEVEL_{entry.level}")
    out.message = entry.message
    if entry.data is not None:
        py_to_value(entry.data, out.data)
    set_ts(out.time, entry.time)
    return out


def task_kind_name(number: int, field: str = "task.kind") -> str:
    return _enum_name(run_pb2.TaskKind, number, "TASK_KIND_", field)


def log_level_name(number: int, field: str = "log.level") -> str:
    return _enum_name(job_pb2.LogLevel, number, "LOG_LEVEL_", field)


def _error_to_pb(error: dict[str, str], out: run_pb2.ErrorInfo) -> None:
    out.type = error.get("type", "")
    out.message = error.get("message", "")
    out.stack = error.get("stack", "")


def _retry_to_pb(retry: dict[str, Any], out: job_pb2.RetryPolicy) -> None:
    out.SetInParent()
    for key, value in retry.items():
        setattr(out, key, value)


def error_from_pb(msg: run_pb2.ErrorInfo) -> dict[str, str]:
    return {"type": msg.type or "Error", "message": msg.message, "stack": msg.stack}
