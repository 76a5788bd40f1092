"""Python client of tripwire, the event-driven job server.

```python
from tripwire.client import Client, event_trigger

client = Client("my-app", url="localhost:50051")
client.register_job("welcome", version="1.0.0", trigger=event_trigger("new.user"))
event = client.send_event({"name": "new.user", "payload": {"userId": "u_1"}})
print(event.status, [run.id for run in event.runs])
```

:class:`Client` blocks; :class:`AsyncClient` (or ``client.aio``) has the same methods for
asyncio. Failures raise :class:`TripwireError` subclasses.

Workers: ``@client.define_job(...)`` on ``async def handler(payload, io, ctx)``, then
``client.listen()`` (or :class:`Worker` for asyncio programs and tests).
"""

from tripwire.client.client import AsyncClient, Client, RunUpdate
from tripwire.client.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TripwireError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from tripwire.client.io import IO, DuplicateKeyError, RunEnded, SyncIO, TaskError
from tripwire.client.jobs import JobDefinition, JobDefinitionError, RunContext
from tripwire.client.models import (
    TERMINAL_RUN_STATUSES,
    ErrorInfo,
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
    ValidationError,
    cron_trigger,
    event_trigger,
    interval_trigger,
    invoke_trigger,
)
from tripwire.client.worker import Worker

__all__ = [
    "IO",
    "TERMINAL_RUN_STATUSES",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "DuplicateKeyError",
    "ErrorInfo",
    "Event",
    "EventDetail",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Job",
    "JobDefinition",
    "JobDefinitionError",
    "JobMatch",
    "LogEntry",
    "NotFound",
    "Page",
    "PermissionDenied",
    "ResourceExhausted",
    "Run",
    "RunContext",
    "RunDetail",
    "RunEnded",
    "RunUpdate",
    "SyncIO",
    "Task",
    "TaskError",
    "Trigger",
    "TripwireError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "ValidationError",
    "Worker",
    "cron_trigger",
    "event_trigger",
    "interval_trigger",
    "invoke_trigger",
]
