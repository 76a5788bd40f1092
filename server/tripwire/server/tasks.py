"""Task rules shared by the store and the worker stream: keys, outcomes, log levels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .models import Run, Task

# v2's logger order: a job at level L records messages whose level ranks <= L.
LOG_RANK = {"LOG": 0, "ERROR": 1, "WARN": 2, "INFO": 3, "DEBUG": 4}
# A task's cache key and name are sent back with every replay of its run.
MAX_TASK_KEY_LENGTH = 1024
# The largest number SQLite stores (the protocol's uint64 fields go higher).
MAX_STORED_INT = 2**63 - 1


def idempotency_key(run_id: str, parent_id: str, key: str) -> str:
    """sha256 of run id, parent task id and cache key (v2 §4.5), hex."""
    return hashlib.sha256(f"{run_id}:{parent_id}:{key}".encode()).hexdigest()


def log_recorded(message_level: str, job_level: str) -> bool:
    """Compare the message's level with the job's (v2 compared a constant: inverted)."""
    return LOG_RANK[message_level] <= LOG_RANK.get(job_level, LOG_RANK["INFO"])


@dataclass
class TaskOutcome:
    """What a task request or completion led to."""

    task: Task | None
    run: Run
    # Set when the request contradicts the cached history; the run has failed.
    nondeterminism: str = ""
    # Runs created by the task's events (SEND_EVENT/SEND_EVENTS).
    created: list[Run] = field(default_factory=list)
