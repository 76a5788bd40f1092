"""Conversions between protobuf messages and the Python values of :mod:`models`.

JSON travels as ``google.protobuf.Value``, whose numbers are doubles. So integers must
fit a double exactly (|n| <= 2**53; larger ones are refused rather than silently
rounded: send them as strings), and integral numbers come back as ``int``. NaN and the
infinities are not JSON and are refused too.

Times are timezone-aware datetimes in UTC; naive datetimes are refused because their
meaning depends on the machine. An unset Timestamp field reads as None.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import math
import uuid
from collections.abc import Collection, Mapping, Set
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, get_args

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from tripwire.client import models
from tripwire.client.models import (
    ErrorInfo,
    Event,
    Job,
    JobMatch,
    LogEntry,
    Run,
    Task,
    Trigger,
    ValidationError,
)
from tripwire.v1 import event_pb2, event_service_pb2, job_pb2, run_pb2

#: The largest integer a JSON number (a double) holds exactly.
MAX_SAFE_INTEGER = 2**53
#: How deep objects and arrays may nest in one value (the server's limit: protobuf
#: decodes at most 100 message levels, and an object costs three).
MAX_JSON_DEPTH = 30

_NULL = struct_pb2.NULL_VALUE


# -- JSON <-> Value --------------------------------------------------------------------


class _BadValue(Exception):
    """Raised inside the recursion; carries the path to the bad part outward."""

    def __init__(self, error: type[Exception], message: str) -> None:
        self.error = error
        self.message = message
        self.path: list[str] = []


def _fill(target: struct_pb2.Value, obj: object, depth: int = 0) -> None:
    # Most frequent kinds first.
    if isinstance(obj, str):
        target.string_value = obj
    elif isinstance(obj, bool):
        target.bool_value = obj
    elif isinstance(obj, int):
        if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise _BadValue(ValueError, f"integer {obj} does not fit a JSON number exactly")
        target.number_value = obj
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise _BadValue(ValueError, f"holds {obj}: NaN or Infinity, which JSON cannot carry")
        target.number_value = obj
    elif obj is None:
        target.null_value = _NULL
    elif isinstance(obj, dict) or (isinstance(obj, Mapping) and not isinstance(obj, (list, tuple))):
        struct = target.struct_value
        struct.SetInParent()  # an empty dict must still select struct_value
        _fill_struct(struct, obj, depth)
    elif isinstance(obj, (list, tuple)):
        if depth == MAX_JSON_DEPTH:
            raise _BadValue(ValueError, _TOO_DEEP)
        values = target.list_value
        values.SetInParent()
        add = values.values.add
        for index, item in enumerate(obj):
            try:
                _fill(add(), item, depth + 1)
            except _BadValue as bad:
                bad.path.append(f"[{index}]")
                raise
    elif type(obj).__module__ == models.__name__:  # e.g. the Event io.send_event gave
        _fill(target, models.jsonable(obj), depth)
    elif (plain := jsonable(obj)) is not _NOT_JSON:
        _fill(target, plain, depth)
    else:
        raise _BadValue(TypeError, f"{type(obj).__name__} is not a JSON value")


_NOT_JSON = object()


def jsonable(obj: object) -> object:
    """The JSON form of a value JSON has no type for, as pydantic's JSON mode writes
    it: a pydantic model dumped (by alias, as its JSON Schema names its fields), a
    time in ISO 8601, a UUID or Decimal as its text, an Enum as its value, a set
    as a sorted list, a dataclass as an object; `_NOT_JSON` for anything else."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and not isinstance(obj, type):
        return dump(mode="json", by_alias=True)
    if isinstance(obj, (datetime, time)):
        text = obj.isoformat()
        # UTC as pydantic writes it (and as a datetime inside a model comes out).
        return f"{text[:-6]}Z" if text.endswith("+00:00") else text
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, (uuid.UUID, decimal.Decimal)):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:  # of kinds that do not compare: as they come
            return list(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return _NOT_JSON


_TOO_DEEP = f"nests objects and arrays more than {MAX_JSON_DEPTH} levels deep"


def _fill_struct(struct: struct_pb2.Struct, obj: Mapping[Any, Any], depth: int = 0) -> None:
    if depth == MAX_JSON_DEPTH:
        raise _BadValue(ValueError, _TOO_DEEP)
    fields = struct.fields
    for key, item in obj.items():
        if type(key) is not str:
            raise _BadValue(TypeError, f"object keys must be strings, got {key!r}")
        try:
            _fill(fields[key], item, depth + 1)
        except _BadValue as bad:
            bad.path.append(f".{key}")
            raise


_REFUSED = "_tripwire_not_json"


def _raise(bad: _BadValue, what: str) -> Exception:
    where = what + "".join(reversed(bad.path))
    return not_json(bad.error(f"{where}: {bad.message}"))


def not_json(exc: Exception) -> Exception:
    """Mark `exc` (a TypeError or ValueError naming where in a value) as this
    client's refusal of a value it cannot send as JSON."""
    setattr(exc, _REFUSED, True)
    return exc


def refused(exc: BaseException) -> bool:
    """Whether `exc` is the conversion's own refusal of a value, not an error the
    application's code raised while being converted (a pydantic serializer's)."""
    return getattr(exc, _REFUSED, False) is True


def fill_value(target: struct_pb2.Value, obj: object, *, what: str = "value") -> None:
    """Write a JSON value into ``target`` in place (no copy, unlike ``to_value``)."""
    try:
        _fill(target, obj)
    except _BadValue as bad:
        raise _raise(bad, what) from None
    except UnicodeEncodeError as exc:  # lone surrogates cannot be UTF-8
        raise not_json(ValueError(f"{what}: text is not valid Unicode ({exc.reason})")) from None


def to_value(obj: object, *, what: str = "value") -> struct_pb2.Value:
    """A ``Value`` holding a JSON value. ``what`` names it in error messages.

    Raises TypeError for non-JSON types, ValueError for numbers JSON cannot carry.
    """
    value = struct_pb2.Value()
    fill_value(value, obj, what=what)
    return value


def fill_struct(target: struct_pb2.Struct, obj: Mapping[str, Any], *, what: str = "object") -> None:
    """Write a JSON object into ``target`` in place."""
    try:
        if not isinstance(obj, Mapping):
            raise _BadValue(TypeError, f"expected a JSON object, got {type(obj).__name__}")
        target.SetInParent()
        _fill_struct(target, obj)
    except _BadValue as bad:
        raise _raise(bad, what) from None
    except UnicodeEncodeError as exc:
        raise not_json(ValueError(f"{what}: text is not valid Unicode ({exc.reason})")) from None


def to_struct(obj: Mapping[str, Any], *, what: str = "object") -> struct_pb2.Struct:
    """A ``Struct`` holding a JSON object."""
    struct = struct_pb2.Struct()
    fill_struct(struct, obj, what=what)
    return struct


def from_value(value: struct_pb2.Value) -> Any:
    """The JSON value a ``Value`` holds; an unset Value is None."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return [from_value(item) for item in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    return None


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """The JSON object a ``Struct`` holds."""
    return {key: from_value(item) for key, item in struct.fields.items()}


def _json_field(message: Message, name: str) -> Any:
    return from_value(getattr(message, name)) if message.HasField(name) else None


def _struct_field(message: Message, name: str) -> dict[str, Any] | None:
    return from_struct(getattr(message, name)) if message.HasField(name) else None


# -- datetime <-> Timestamp ------------------------------------------------------------


#: Seconds from 1970 to the end of 9999, the last time a Timestamp holds (the server
#: refuses a delay or wait that ends past it from its own now).
LAST_SECOND = 253_402_300_799


def datetime_to_timestamp(when: datetime, what: str = "time") -> timestamp_pb2.Timestamp:
    """A ``Timestamp`` for a timezone-aware datetime; ``what`` names it in errors
    (``what: problem``)."""
    if not isinstance(when, datetime):
        raise TypeError(f"{what}: must be a timezone-aware datetime, got {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what}: {when} is naive; pass an aware datetime (e.g. tzinfo=UTC)")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_to_datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    """The UTC datetime of a ``Timestamp`` (``ToDatetime``'s, a few times faster: run
    requests carry a dozen of them)."""
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def optional_datetime(message: Message, name: str) -> datetime | None:
    """The datetime in ``message.<name>``, None when the field is unset."""
    if not message.HasField(name):
        return None
    return timestamp_to_datetime(getattr(message, name))


# -- enums -----------------------------------------------------------------------------


def enum_name(enum: Any, number: int, prefix: str) -> str:
    """``RUN_STATUS_QUEUED`` -> ``QUEUED``; a number this client does not know -> its digits."""
    try:
        name: str = enum.Name(number)
    except ValueError:
        return str(number)
    return name.removeprefix(prefix)


def enum_value(enum: Any, name: str, prefix: str, *, field: str = "") -> Any:
    """``"queued"`` or ``"RUN_STATUS_QUEUED"`` -> 1. Raises ValueError for unknown names
    and the zero value's (``UNSPECIFIED`` names no status or level), TypeError for a
    name that is not a string, saying ``field: problem`` when a field is given."""
    where = f"{field}: " if field else ""
    if not isinstance(name, str):
        raise TypeError(f"{where}must be a string, got {type(name).__name__}")
    wanted = name.strip().upper()
    if not wanted.startswith(prefix):
        wanted = prefix + wanted
    if wanted.removeprefix(prefix) not in enum_names(enum, prefix):
        known = ", ".join(enum_names(enum, prefix))
        raise ValueError(f"{where}must be one of {known}, got {name!r}")
    return enum.Value(wanted)


def enum_names(enum: Any, prefix: str) -> list[str]:
    """The names :func:`enum_value` knows, without the prefix: ``["QUEUED", ...]``."""
    return [n.removeprefix(prefix) for n in enum.keys() if not n.endswith("UNSPECIFIED")]


# -- messages -> models ----------------------------------------------------------------


def error_info_from_pb(message: Message, name: str = "error") -> ErrorInfo | None:
    if not message.HasField(name):
        return None
    info: run_pb2.ErrorInfo = getattr(message, name)
    return ErrorInfo(type=info.type, message=info.message, stack=info.stack)


def _validation_errors(items: Any) -> tuple[ValidationError, ...]:
    return tuple(ValidationError(path=e.path, message=e.message) for e in items)


def run_from_pb(run: run_pb2.Run) -> Run:
    return Run(
        id=run.id,
        job_id=run.job_id,
        job_version=run.job_version,
        event_id=run.event_id,
        status=enum_name(run_pb2.RunStatus, run.status, "RUN_STATUS_"),
        attempt=run.attempt,
        created_at=optional_datetime(run, "created_at"),
        started_at=optional_datetime(run, "started_at"),
        completed_at=optional_datetime(run, "completed_at"),
        updated_at=optional_datetime(run, "updated_at"),
        output=_json_field(run, "output"),
        error=error_info_from_pb(run),
        validation_errors=_validation_errors(run.validation_errors),
        account_id=run.account_id or None,
        wait_until=optional_datetime(run, "wait_until"),
        worker_id=run.worker_id or None,
    )


def event_from_pb(event: event_pb2.Event) -> Event:
    return Event(
        id=event.id,
        name=event.name,
        source=event.source,
        payload=_json_field(event, "payload"),
        context=_json_field(event, "context"),
        timestamp=optional_datetime(event, "timestamp"),
        deliver_at=optional_datetime(event, "deliver_at"),
        delivered_at=optional_datetime(event, "delivered_at"),
        cancelled_at=optional_datetime(event, "cancelled_at"),
        deduplicated=event.deduplicated,
        status=enum_name(event_pb2.EventStatus, event.status, "EVENT_STATUS_"),
        account_id=event.account_id or None,
        created_at=optional_datetime(event, "created_at"),
        runs=tuple(run_from_pb(r) for r in event.runs),
    )


def task_from_pb(task: run_pb2.Task) -> Task:
    return Task(
        id=task.id,
        run_id=task.run_id,
        parent_id=task.parent_id or None,
        key=task.key,
        idempotency_key=task.idempotency_key,
        kind=enum_name(run_pb2.TaskKind, task.kind, "TASK_KIND_"),
        status=enum_name(run_pb2.TaskStatus, task.status, "TASK_STATUS_"),
        position=task.position,
        attempts=task.attempts,
        params=_json_field(task, "params"),
        output=_json_field(task, "output"),
        error=error_info_from_pb(task),
        started_at=optional_datetime(task, "started_at"),
        completed_at=optional_datetime(task, "completed_at"),
        retry_at=optional_datetime(task, "retry_at"),
        retry=retry_from_pb(task.retry) if task.HasField("retry") else None,
    )


def log_from_pb(log: run_pb2.LogEntry) -> LogEntry:
    return LogEntry(
        seq=log.seq,
        level=enum_name(job_pb2.LogLevel, log.level, "LOG_LEVEL_"),
        message=log.message,
        data=_json_field(log, "data"),
        time=optional_datetime(log, "time"),
    )


_RetryField = Literal["limit", "factor", "min_timeout_ms", "max_timeout_ms", "randomize"]
_RETRY_FIELDS: tuple[_RetryField, ...] = get_args(_RetryField)


def retry_from_pb(retry: job_pb2.RetryPolicy) -> dict[str, Any]:
    """The fields a RetryPolicy sets (absent ones take the server's defaults)."""
    return {name: getattr(retry, name) for name in _RETRY_FIELDS if retry.HasField(name)}


# The server's defaults and bound (server/retry.py): its rules are checked here too, so
# that a bad policy fails where it is written, not when the server refuses it.
_RETRY_DEFAULTS = job_pb2.RetryPolicy(
    limit=5, factor=1.8, min_timeout_ms=1000, max_timeout_ms=60000, randomize=True
)
RETRY_MAX_LIMIT = 100


def retry_to_pb(retry: Mapping[str, Any], *, field: str = "retry") -> job_pb2.RetryPolicy:
    """A RetryPolicy from a dict with some of ``limit``, ``factor``, ``min_timeout_ms``,
    ``max_timeout_ms``, ``randomize`` (None or absent: the server's default).

    Raises TypeError or ValueError naming the field (``retry.limit: ...``, ``field``
    being where the policy is) for any other key, a value of the wrong type, or one
    the server refuses: ``limit`` from 1 to 100, ``factor`` a finite number >= 1,
    ``min_timeout_ms`` <= ``max_timeout_ms`` (defaults 1000 and 60000).
    """
    if not isinstance(retry, Mapping):
        raise TypeError(f"{field}: must be a dict such as {{'limit': 3}}, got {retry!r}")
    no_unknown_keys(retry, _RETRY_FIELDS, field, "a retry option")
    policy = job_pb2.RetryPolicy()
    for name in _RETRY_FIELDS:
        set_field(policy, name, retry.get(name), f"{field}.{name}")
    _check_retry(policy, field)
    return policy


def _check_retry(policy: job_pb2.RetryPolicy, field: str) -> None:
    def get(name: _RetryField) -> Any:
        return getattr(policy if policy.HasField(name) else _RETRY_DEFAULTS, name)

    if not 1 <= get("limit") <= RETRY_MAX_LIMIT:
        raise ValueError(
            f"{field}.limit: must be between 1 and {RETRY_MAX_LIMIT}, got {get('limit')}"
        )
    if not math.isfinite(get("factor")) or get("factor") < 1:
        raise ValueError(f"{field}.factor: must be a finite number >= 1, got {get('factor')}")
    # min_timeout_ms >= 0 holds already: the field is unsigned.
    if get("min_timeout_ms") > get("max_timeout_ms"):
        if not policy.HasField("max_timeout_ms"):
            raise ValueError(
                f"{field}.min_timeout_ms: is {get('min_timeout_ms')}, over the default "
                f"max_timeout_ms ({get('max_timeout_ms')}): set max_timeout_ms too"
            )
        raise ValueError(
            f"{field}.max_timeout_ms: must be >= min_timeout_ms ({get('min_timeout_ms')}), "
            f"got {get('max_timeout_ms')}"
        )


def trigger_to_pb(trigger: Trigger, field: str = "") -> job_pb2.Trigger:
    """The Trigger message; ``field``, where a request holds it (``job.trigger``),
    prefixes the path of a filter or schema that is not JSON in the error."""
    where = f"{field}.{trigger.kind}." if field else ""
    if trigger.kind == "event":
        event = job_pb2.EventTrigger(names=trigger.names, source=trigger.source)
        for name in ("filter", "context_filter", "schema"):
            value = getattr(trigger, name)
            if value is not None:
                fill_struct(getattr(event, name), value, what=where + name)
        return job_pb2.Trigger(event=event)
    if trigger.kind == "cron":
        cron = job_pb2.CronTrigger(
            cron=trigger.cron, timezone=trigger.timezone, catch_up=trigger.catch_up
        )
        return job_pb2.Trigger(cron=cron)
    if trigger.kind == "interval":
        interval = job_pb2.IntervalTrigger(seconds=trigger.seconds, catch_up=trigger.catch_up)
        return job_pb2.Trigger(interval=interval)
    invoke = job_pb2.InvokeTrigger()
    if trigger.schema is not None:
        fill_struct(invoke.schema, trigger.schema, what=where + "schema")
    return job_pb2.Trigger(invoke=invoke)


def trigger_from_pb(trigger: job_pb2.Trigger) -> Trigger | None:
    kind = trigger.WhichOneof("kind")
    if kind == "event":
        event = trigger.event
        return Trigger(
            kind="event",
            names=tuple(event.names),
            source=event.source,
            filter=_struct_field(event, "filter"),
            context_filter=_struct_field(event, "context_filter"),
            schema=_struct_field(event, "schema"),
        )
    if kind == "cron":
        cron = trigger.cron
        return Trigger(kind="cron", cron=cron.cron, timezone=cron.timezone, catch_up=cron.catch_up)
    if kind == "interval":
        interval = trigger.interval
        return Trigger(kind="interval", seconds=interval.seconds, catch_up=interval.catch_up)
    if kind == "invoke":
        return Trigger(kind="invoke", schema=_struct_field(trigger.invoke, "schema"))
    return None


def job_from_pb(job: job_pb2.Job, versions: Any = ()) -> Job:
    return Job(
        id=job.id,
        name=job.name,
        version=job.version,
        trigger=trigger_from_pb(job.trigger) if job.HasField("trigger") else None,
        enabled=job.enabled if job.HasField("enabled") else True,
        concurrency_limit=job.concurrency_limit,
        max_duration_seconds=job.max_duration_seconds,
        retry=retry_from_pb(job.retry) if job.HasField("retry") else None,
        log_level=enum_name(job_pb2.LogLevel, job.log_level, "LOG_LEVEL_")
        if job.log_level
        else None,
        created_at=optional_datetime(job, "created_at"),
        updated_at=optional_datetime(job, "updated_at"),
        latest=job.latest,
        next_fire_at=optional_datetime(job, "next_fire_at"),
        versions=tuple(job_from_pb(v) for v in versions),
    )


def job_match_from_pb(match: event_service_pb2.JobMatch) -> JobMatch:
    return JobMatch(
        job_id=match.job_id,
        job_version=match.job_version,
        matched=match.matched,
        reason=match.reason,
        validation_errors=_validation_errors(match.validation_errors),
    )


def set_field(message: Message, name: str, value: Any, field: str) -> None:
    """``message.<name> = value``; protobuf's complaint (a negative uint32, a float for
    an integer) names the field. None leaves the field unset, as in a constructor."""
    if value is None:
        return
    try:
        setattr(message, name, value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{field}: {exc}") from None


def no_unknown_keys(
    given: Mapping[Any, Any], known: Collection[str], field: str, what: str
) -> None:
    """A dict argument holds only ``known`` keys: the first other one is named, as the
    server names a field it does not know (``event.paylod: ...``)."""
    for key in given:
        if key not in known:
            where = f"{field}.{key}" if isinstance(key, str) else f"{field}[{key!r}]"
            names = sorted(known) if isinstance(known, Set) else known  # a set has no order
            raise ValueError(f"{where}: is not {what} (known: {', '.join(names)})")
