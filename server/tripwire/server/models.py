"""Plain records passed between the store, the domain and the servicers.

Times are integer milliseconds since the epoch (UTC); JSON fields are Python
values. Protobuf types stay at the gRPC edge (`convert.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class EventStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


class RunStatus(StrEnum):
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    WAITING = "WAITING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELED = "CANCELED"
    TIMED_OUT = "TIMED_OUT"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    ABORTED = "ABORTED"

    @property
    def terminal(self) -> bool:
        return self not in _ACTIVE


_ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.EXECUTING, RunStatus.WAITING})

DEFAULT_SOURCE = "trigger.dev"
SCHEDULED_EVENT = "tripwire.scheduled"
INVOKE_EVENT = "tripwire.invoke"
INTERNAL_SOURCE = "tripwire"


@dataclass
class NewEvent:
    """An event as validated from a request, defaults applied."""

    id: str
    name: str
    source: str
    payload: Any
    context: Any
    timestamp: int
    deliver_at: int
    account_id: str
    # The server minted the id just now, so it cannot be known yet.
    minted_id: bool = False
    # The request carried a payload / context (not absent, not null). A resend
    # that reschedules a pending event keeps the stored one where it did not.
    payload_given: bool = True
    context_given: bool = True


@dataclass
class Run:
    env: str
    id: str
    job_id: str
    job_version: str
    event_id: str
    status: RunStatus
    attempt: int
    created_at: int
    updated_at: int
    started_at: int | None = None
    completed_at: int | None = None
    output: Any = None
    error: dict[str, str] | None = None
    validation_errors: list[dict[str, str]] = field(default_factory=list)
    account_id: str = ""
    wait_until: int | None = None
    worker_id: str = ""  # EXECUTING: the worker holding the current attempt
    seq: int = 0


@dataclass
class Event:
    env: str
    id: str
    name: str
    source: str
    payload: Any
    context: Any
    timestamp: int
    deliver_at: int
    created_at: int
    status: EventStatus
    delivered_at: int | None = None
    cancelled_at: int | None = None
    account_id: str = ""
    seq: int = 0
    # Set on replies only.
    deduplicated: bool = False
    runs: list[Run] = field(default_factory=list)


@dataclass
class Job:
    env: str
    id: str
    version: str
    name: str
    # The trigger as JSON: {"event": {...}} | {"cron": {...}} | {"interval": {...}} |
    # {"invoke": {...}}, with the proto's field names.
    trigger: dict[str, Any]
    enabled: bool = True
    concurrency_limit: int = 0
    retry: dict[str, Any] | None = None
    max_duration_seconds: int = 0
    log_level: str = "INFO"
    created_at: int = 0
    updated_at: int = 0
    # Output only.
    latest: bool = False
    next_fire_at: int | None = None

    @property
    def trigger_kind(self) -> str:
        return next(iter(self.trigger))


@dataclass(frozen=True)
class RunSpec:
    """A run to create for an event: which job version, and schema errors if any."""

    job_id: str
    job_version: str
    validation_errors: tuple[dict[str, str], ...] = ()


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str = ""


@dataclass(frozen=True)
class Purged:
    """What one step of a retention pass deleted (Store.purge)."""

    events: int
    runs: int
    # Where the pass goes on scanning; None when it is done (no more events, or
    # only events created since the cutoff).
    next_seq: int | None
    # Events created since the cutoff met in a row at the end of the step.
    new_in_a_row: int = 0


class TaskKind(StrEnum):
    RUN = "RUN"
    SEND_EVENT = "SEND_EVENT"
    SEND_EVENTS = "SEND_EVENTS"
    WAIT = "WAIT"


class TaskStatus(StrEnum):
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    COMPLETED = "COMPLETED"
    ERRORED = "ERRORED"
    CANCELED = "CANCELED"


@dataclass
class Task:
    id: str
    run_id: str
    parent_id: str
    key: str
    idempotency_key: str
    kind: TaskKind
    status: TaskStatus
    position: int
    name: str = ""
    attempts: int = 0
    params: Any = None
    output: Any = None
    error: dict[str, str] | None = None
    retry: dict[str, Any] | None = None
    started_at: int | None = None
    completed_at: int | None = None
    retry_at: int | None = None
    try_offset: int = 0

    def mark(self) -> tuple[object, ...]:
        """What tells a watch that the task changed: every write to a task moves
        one of these (a new try its attempts or start, an outcome its status and
        completion). Store.run_changes reads the same columns."""
        return (self.status, self.attempts, self.retry_at, self.started_at, self.completed_at)


@dataclass
class LogEntry:
    seq: int
    level: str
    message: str
    data: Any
    time: int


@dataclass
class RunChanges:
    """A run's tasks and logs as they changed since a reader's last look (see
    Store.run_changes)."""

    # Every task's Task.mark(), by id.
    marks: dict[str, tuple[object, ...]]
    # The tasks whose mark is new or differs from the one the reader had, by position.
    tasks: list[Task]
    # The lines stored since the reader's log mark, by number.
    logs: list[LogEntry]
    # Where the next look starts reading lines.
    log_mark: int


# Called with an event's place in its request, the event as a resend that
# rescheduled it leaves it, and what the resend gave; raises to refuse the call.
KeptCheck = Callable[[int, "Event", NewEvent], None]


@dataclass(frozen=True)
class TaskAsk:
    """A worker's request to start (or look up) a task."""

    key: str
    parent_id: str
    kind: TaskKind
    name: str
    params: Any
    retry: dict[str, Any] | None
    # SEND_EVENT(S): the events to send, validated, ids defaulted from the task.
    events: tuple[NewEvent, ...] = ()
    # SEND_EVENT(S): checks an event a resend rescheduled keeping its stored
    # payload or context (see events.check_kept).
    kept: KeptCheck | None = field(default=None, compare=False)
