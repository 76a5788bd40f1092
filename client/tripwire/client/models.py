"""What the client hands back: frozen dataclasses with plain Python values.

Payloads, contexts and outputs are JSON values (dict, list, str, int, float, bool or
None); times are timezone-aware UTC datetimes, None when unset; enums are their names
without the prefix (``"QUEUED"``, ``"DELIVERED"``, ``"INFO"``).

Also here: the trigger helpers (:func:`event_trigger`, :func:`cron_trigger`,
:func:`interval_trigger`, :func:`invoke_trigger`) that say what starts a job. They check
their arguments when called, so a bad trigger fails when the module defining the job is
imported, not when the first event arrives.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tripwire.client.errors import JobDefinitionError

if TYPE_CHECKING:
    from pydantic import BaseModel
    from tripwire.v1 import job_pb2

__all__ = [
    "TERMINAL_RUN_STATUSES",
    "ErrorInfo",
    "Event",
    "EventDetail",
    "Job",
    "JobMatch",
    "LogEntry",
    "Page",
    "Run",
    "RunDetail",
    "Task",
    "Trigger",
    "TriggerKind",
    "ValidationError",
    "cron_trigger",
    "event_trigger",
    "interval_trigger",
    "invoke_trigger",
]

T = TypeVar("T")

#: Run statuses a run never leaves.
TERMINAL_RUN_STATUSES: frozenset[str] = frozenset(
    {"SUCCESS", "FAILURE", "CANCELED", "TIMED_OUT", "INVALID_PAYLOAD", "ABORTED"}
)

DEFAULT_SOURCE = "trigger.dev"
#: The longest interval the server takes: one year.
MAX_INTERVAL_SECONDS = 31_536_000


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a run or task failed."""

    type: str
    message: str
    stack: str = ""


@dataclass(frozen=True, slots=True)
class ValidationError:
    """One way a payload failed a job's JSON Schema (``path`` is "" for the root)."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class Run:
    """A run of one job version for one event."""

    id: str
    job_id: str
    job_version: str
    event_id: str
    status: str
    attempt: int
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime | None
    output: Any
    error: ErrorInfo | None
    validation_errors: tuple[ValidationError, ...]
    account_id: str | None
    wait_until: datetime | None
    # Set by invoke_job: True when its idempotency key had been used, and this is
    # the run that earlier call started (nothing new was started).
    deduplicated: bool = False
    # EXECUTING only: the worker holding the run (its ``worker_id``, by default
    # "<host>-<pid>").
    worker_id: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the run has a status it will never leave."""
        return self.status in TERMINAL_RUN_STATUSES


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event. ``runs`` holds the runs a send created (empty in listings)."""

    id: str
    name: str
    source: str
    payload: Any
    context: Any
    timestamp: datetime | None
    deliver_at: datetime | None
    delivered_at: datetime | None
    cancelled_at: datetime | None
    deduplicated: bool
    status: str
    account_id: str | None
    created_at: datetime | None
    runs: tuple[Run, ...] = ()


@dataclass(frozen=True, slots=True)
class Task:
    """A cached unit of work of a run (``kind`` is RUN, SEND_EVENT, SEND_EVENTS or WAIT)."""

    id: str
    run_id: str
    parent_id: str | None
    key: str
    idempotency_key: str
    kind: str
    status: str
    position: int
    attempts: int  # failed executions so far (a task that completed at once has 0)
    params: Any
    output: Any
    error: ErrorInfo | None
    started_at: datetime | None
    completed_at: datetime | None
    retry_at: datetime | None
    retry: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One ``io.logger`` line of a run."""

    seq: int
    level: str
    message: str
    data: Any
    time: datetime | None


TriggerKind = Literal["event", "cron", "interval", "invoke"]


@dataclass(frozen=True, slots=True)
class Trigger:
    """What starts runs of a job. Build one with the ``*_trigger`` helpers.

    Only the fields of its ``kind`` are meaningful. ``model`` is the pydantic class a
    schema came from, kept so a worker can parse payloads into it; it is not sent.
    """

    kind: TriggerKind
    names: tuple[str, ...] = ()
    source: str = ""
    filter: dict[str, Any] | None = None
    context_filter: dict[str, Any] | None = None
    schema: dict[str, Any] | None = None
    cron: str = ""
    timezone: str = ""
    seconds: int = 0
    catch_up: bool = False
    model: type[BaseModel] | None = field(default=None, compare=False, repr=False)

    def to_proto(self, field: str = "") -> job_pb2.Trigger:
        """The ``tripwire.v1.Trigger`` message; ``field`` (``job.trigger``) is where a
        request holds it, named in the error for a filter or schema that is not JSON."""
        from tripwire.client.convert import trigger_to_pb  # convert imports this module

        return trigger_to_pb(self, field)

    def describe(self) -> str:
        """A one-line summary, e.g. ``event new.user`` or ``cron 0 9 * * * (UTC)``."""
        if self.kind == "event":
            plain = all("," not in n and " " not in n and '"' not in n for n in self.names)
            # Names that would read as several, or run into the words around them,
            # are shown as the JSON list they are.
            listed = json.dumps(list(self.names), ensure_ascii=False)
            names = ",".join(self.names) if plain else listed
            text = f"event {names}"
            return text if self.source in ("", DEFAULT_SOURCE) else f"{text} from {self.source}"
        if self.kind == "cron":
            return f"cron {self.cron} ({self.timezone or 'UTC'})"
        if self.kind == "interval":
            return f"every {self.seconds}s"
        return "invoke"


@dataclass(frozen=True, slots=True)
class Job:
    """One registered version of a job.

    ``versions`` is filled by ``get_job`` only: every registered version, highest first.
    """

    id: str
    name: str
    version: str
    trigger: Trigger | None
    enabled: bool
    concurrency_limit: int
    max_duration_seconds: int
    retry: dict[str, Any] | None
    log_level: str | None
    created_at: datetime | None
    updated_at: datetime | None
    latest: bool
    next_fire_at: datetime | None
    versions: tuple[Job, ...] = ()


@dataclass(frozen=True, slots=True)
class JobMatch:
    """How one job relates to an event in a ``match_event`` dry run."""

    job_id: str
    job_version: str
    matched: bool
    reason: str
    validation_errors: tuple[ValidationError, ...] = ()


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_page_token`` back for the next (None: last)."""

    items: tuple[T, ...]
    next_page_token: str | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class RunDetail:
    """A run with its tasks (by position) and logs (by seq)."""

    run: Run
    tasks: tuple[Task, ...]
    logs: tuple[LogEntry, ...]


@dataclass(frozen=True, slots=True)
class EventDetail:
    """An event with every run it created, oldest first."""

    event: Event
    runs: tuple[Run, ...]


# -- trigger helpers -------------------------------------------------------------------


def event_trigger(
    name: str | Sequence[str],
    *,
    source: str = DEFAULT_SOURCE,
    filter: Mapping[str, Any] | None = None,
    context_filter: Mapping[str, Any] | None = None,
    schema: Mapping[str, Any] | type[BaseModel] | None = None,
) -> Trigger:
    """Run the job for every event with this name (or one of these names) and source.

    ``filter`` and ``context_filter`` are EventFilters on the payload and the context;
    ``schema`` is a JSON Schema dict or a pydantic model class.
    """
    if source is not None and not isinstance(source, str):
        raise TypeError(f"source must be a string, got {type(source).__name__}")
    names = (name,) if isinstance(name, str) else tuple(name)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise JobDefinitionError(
            f"event_trigger needs at least one non-empty event name, got {name!r}"
        )
    json_schema, model = _schema(schema)
    return Trigger(
        kind="event",
        names=names,
        source=source,
        filter=_mapping("filter", filter),
        context_filter=_mapping("context_filter", context_filter),
        schema=json_schema,
        model=model,
    )


def cron_trigger(cron: str, *, timezone: str = "", catch_up: bool = False) -> Trigger:
    """Run the job on a 5-field cron expression, in UTC unless ``timezone`` names a zone."""
    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise JobDefinitionError(
            f"cron needs 5 fields (minute hour day month weekday), got {cron!r}"
        )
    if timezone:
        _check_timezone(timezone)
    _check_catch_up(catch_up)
    return Trigger(kind="cron", cron=" ".join(cron.split()), timezone=timezone, catch_up=catch_up)


def interval_trigger(seconds: int, *, catch_up: bool = False) -> Trigger:
    """Run the job every ``seconds`` (at least 1)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise JobDefinitionError(f"interval seconds must be a whole number >= 1, got {seconds!r}")
    if seconds > MAX_INTERVAL_SECONDS:
        raise JobDefinitionError(
            f"interval seconds must be at most {MAX_INTERVAL_SECONDS} (one year), got {seconds}"
        )
    _check_catch_up(catch_up)
    return Trigger(kind="interval", seconds=seconds, catch_up=catch_up)


def invoke_trigger(*, schema: Mapping[str, Any] | type[BaseModel] | None = None) -> Trigger:
    """Run the job only when invoked (``invoke_job``); ``schema`` checks the payload."""
    json_schema, model = _schema(schema)
    return Trigger(kind="invoke", schema=json_schema, model=model)


def _check_catch_up(catch_up: bool) -> None:
    if not isinstance(catch_up, bool):  # a variable's "false" would read as true
        raise TypeError(f"catch_up must be True or False, got {catch_up!r}")


def _check_timezone(name: str) -> None:
    """The server's rule: an IANA name this machine knows, not one of the host's own
    zoneinfo files, whose meaning depends on the machine."""
    if not isinstance(name, str):
        raise TypeError(f"timezone must be a string, got {type(name).__name__}")
    if name in ("localtime", "posixrules") or name.startswith(("posix/", "right/")):
        raise JobDefinitionError(
            f"timezone {name!r} is the host's own setting, not an IANA time zone name "
            "(e.g. 'Europe/Paris')"
        )
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise JobDefinitionError(
            f"timezone {name!r} is not an IANA time zone name (e.g. 'Europe/Paris')"
        ) from None


def _mapping(what: str, value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    return dict(value)


def _schema(
    schema: Mapping[str, Any] | type[BaseModel] | None,
) -> tuple[dict[str, Any] | None, type[BaseModel] | None]:
    if schema is None or isinstance(schema, Mapping):
        return _mapping("schema", schema), None
    # A pydantic model class; checked by duck typing so importing the client stays light.
    to_json_schema = getattr(schema, "model_json_schema", None)
    if not isinstance(schema, type) or not callable(to_json_schema):
        raise TypeError(
            f"schema must be a JSON Schema dict or a pydantic model class, got {schema!r}"
        )
    return dict(to_json_schema()), schema


def jsonable(value: Any) -> Any:
    """Models as plain JSON data: dataclasses as objects, times as ISO 8601 UTC
    strings with microseconds (``2024-05-01T09:00:00.123456Z``)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"
    if isinstance(value, Trigger):
        fields = dataclasses.fields(value)
        return {f.name: jsonable(getattr(value, f.name)) for f in fields if f.name != "model"}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value
