"""Text for the command line: aligned tables, field blocks and JSON.

Times print as ISO 8601 in UTC (``2024-05-01T09:00:00Z``; JSON keeps the microseconds).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from tripwire.client.models import (
    Event,
    Job,
    JobMatch,
    LogEntry,
    Run,
    Task,
    Trigger,
    ValidationError,
    jsonable,
)

MAX_CELL = 80
EMPTY = "-"
# Control characters left once lines are joined (a tab, say): shown escaped.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# The same in a value shown on several lines, where a tab is harmless.
_BLOCK_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Shown escaped before lines are joined: the line and paragraph separators
# (which would join as spaces, as if typed so) and the bidirectional controls
# (which would reorder the rest of the row).
_LAYOUT = re.compile("[\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def iso(when: datetime | None, *, precise: bool = False) -> str:
    """``2024-05-01T09:00:00Z``; with ``precise`` the microseconds too. None: ``-``."""
    if when is None:
        return EMPTY
    text = when.astimezone(UTC).isoformat(timespec="microseconds" if precise else "seconds")
    return text.removesuffix("+00:00") + "Z"


def cell(value: object, *, limit: int = MAX_CELL) -> str:
    """One value as single-line text, cut at ``limit`` characters."""
    if value is None or value == "":
        text = EMPTY
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, datetime):
        text = iso(value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    text = _CONTROL.sub(_escape, " ".join(_LAYOUT.sub(_escape, text).splitlines()))
    if width(text) <= limit:
        return text
    used = 0
    for end, char in enumerate(text):
        used += _char_width(char)
        if used > limit - 1:
            return text[:end] + "…"
    return text


def _escape(found: re.Match[str]) -> str:
    char = found.group()
    if char == "\t":
        return "\\t"
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def width(text: str) -> int:
    """Columns the text takes in a terminal: two for wide (e.g. CJK) characters,
    none for combining marks."""
    return len(text) if text.isascii() else sum(_char_width(c) for c in text)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, headers first; no trailing blanks."""
    cells = [[cell(v) for v in row] for row in rows]
    lines = [list(headers), *cells]
    widths = [max(width(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            text + " " * (column - width(text)) for text, column in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    )


def block(pairs: Iterable[tuple[str, object]]) -> str:
    """``label  value`` lines with the values aligned; a multi-line value keeps its
    lines (and tabs), its other control and layout characters shown escaped."""
    items = list(pairs)
    width = max((len(label) for label, _ in items), default=0)
    out = []
    for label, value in items:
        if isinstance(value, str) and "\n" in value:
            lines = _LAYOUT.sub(_escape, value).splitlines()
            text = ("\n" + " " * (width + 2)).join(_BLOCK_CONTROL.sub(_escape, x) for x in lines)
        else:
            text = cell(value, limit=10_000)
        out.append(f"{label.ljust(width)}  {text}".rstrip())
    return "\n".join(out)


# -- models ----------------------------------------------------------------------------


def _errors(errors: Sequence[ValidationError]) -> str:
    return "; ".join(f"{e.path or '/'}: {e.message}" for e in errors)


def event_block(event: Event) -> str:
    pairs: list[tuple[str, object]] = [
        ("id", event.id),
        ("name", event.name),
        ("source", event.source),
        ("status", event.status + (" (deduplicated)" if event.deduplicated else "")),
        ("timestamp", event.timestamp),
        ("deliver at", event.deliver_at),
        ("delivered at", event.delivered_at),
    ]
    if event.cancelled_at is not None:
        pairs.append(("cancelled at", event.cancelled_at))
    if event.account_id:
        pairs.append(("account", event.account_id))
    pairs += [("payload", event.payload), ("context", event.context)]
    return block(pairs)


def events_table(events: Sequence[Event]) -> str:
    return table(
        ["ID", "NAME", "SOURCE", "STATUS", "TIMESTAMP", "DELIVER AT", "DELIVERED AT"],
        [
            (e.id, e.name, e.source, e.status, e.timestamp, e.deliver_at, e.delivered_at)
            for e in events
        ],
    )


def run_block(run: Run) -> str:
    pairs: list[tuple[str, object]] = [
        ("id", run.id),
        ("job", f"{run.job_id}@{run.job_version}"),
        ("event", run.event_id),
        ("status", run.status),
        ("attempt", str(run.attempt)),
        ("created at", run.created_at),
        ("started at", run.started_at),
        ("completed at", run.completed_at),
    ]
    if run.worker_id:
        pairs.append(("worker", run.worker_id))
    if run.wait_until is not None:
        pairs.append(("wait until", run.wait_until))
    if run.account_id:
        pairs.append(("account", run.account_id))
    if run.output is not None:
        pairs.append(("output", run.output))
    if run.error is not None:
        pairs.append(("error", f"{run.error.type}: {run.error.message}"))
    if run.validation_errors:
        pairs.append(("invalid", _errors(run.validation_errors)))
    return block(pairs)


def runs_table(runs: Sequence[Run]) -> str:
    return table(
        ["ID", "JOB", "VERSION", "EVENT", "STATUS", "ATTEMPT", "CREATED AT", "COMPLETED AT"],
        [
            (
                r.id,
                r.job_id,
                r.job_version,
                r.event_id,
                r.status,
                str(r.attempt),
                r.created_at,
                r.completed_at,
            )
            for r in runs
        ],
    )


def tasks_table(tasks: Sequence[Task]) -> str:
    return table(
        ["#", "KEY", "KIND", "STATUS", "FAILED", "STARTED AT", "COMPLETED AT", "OUTPUT"],
        [
            (
                str(t.position),
                t.key,
                t.kind,
                t.status,
                str(t.attempts),
                t.started_at,
                t.completed_at,
                _task_outcome(t),
            )
            for t in tasks
        ],
    )


def _task_outcome(task: Task) -> Any:
    """The output, or the error while the task has failed (for good, or being
    retried). A task that completed after a failed try keeps that try's error,
    which is not its outcome."""
    if task.error and task.status in ("ERRORED", "WAITING", "RUNNING"):
        prefix = "" if task.status == "ERRORED" else "retrying after "
        return f"{prefix}{task.error.type}: {task.error.message}"
    return task.output


def logs_table(logs: Sequence[LogEntry]) -> str:
    return table(
        ["SEQ", "TIME", "LEVEL", "MESSAGE", "DATA"],
        [(str(log.seq), log.time, log.level, log.message, log.data) for log in logs],
    )


def update_line(update: Run | Task | LogEntry) -> str:
    """One WatchRun update on one line: when, what (run, task or log), and what it says."""
    if isinstance(update, Run):
        when, parts = update.updated_at, ["run", update.status, f"attempt {update.attempt}"]
        if update.wait_until is not None:
            parts.append(f"until {iso(update.wait_until)}")
        if update.worker_id:
            parts.append(f"on {cell(update.worker_id)}")
        if update.output is not None:
            parts.append(f"output {cell(update.output)}")
        if update.error is not None:
            parts.append(f"error {cell(f'{update.error.type}: {update.error.message}')}")
        if update.validation_errors:
            parts.append(f"invalid {cell(_errors(update.validation_errors))}")
    elif isinstance(update, Task):
        when = update.completed_at or update.started_at
        parts = ["task", f"#{update.position}", cell(update.key), update.kind, update.status]
        if (outcome := _task_outcome(update)) is not None:
            parts.append(cell(outcome))
    else:
        when, parts = update.time, ["log", update.level, cell(update.message)]
        if update.data is not None:
            parts.append(cell(update.data))
    return "  ".join([iso(when, precise=True), *parts])


def trigger_text(trigger: Trigger | None) -> str:
    return trigger.describe() if trigger is not None else EMPTY


def job_block(job: Job) -> str:
    pairs: list[tuple[str, object]] = [
        ("id", job.id),
        ("name", job.name),
        ("version", job.version + (" (latest)" if job.latest else "")),
        ("trigger", trigger_text(job.trigger)),
        ("enabled", job.enabled),
        ("concurrency", str(job.concurrency_limit or "unlimited")),
        ("max duration", f"{job.max_duration_seconds}s" if job.max_duration_seconds else None),
        ("retry", job.retry),
        ("log level", job.log_level),
        ("next fire", job.next_fire_at),
        ("created at", job.created_at),
        ("updated at", job.updated_at),
    ]
    trigger = job.trigger
    if trigger is not None and trigger.kind == "event":
        pairs += [("filter", trigger.filter), ("context filter", trigger.context_filter)]
    if trigger is not None and trigger.schema is not None:
        pairs.append(("schema", trigger.schema))
    return block(pairs)


def jobs_table(jobs: Sequence[Job]) -> str:
    return table(
        ["ID", "VERSION", "NAME", "TRIGGER", "ENABLED", "NEXT FIRE", "UPDATED AT"],
        [
            (
                j.id,
                j.version,
                j.name,
                trigger_text(j.trigger),
                j.enabled,
                j.next_fire_at,
                j.updated_at,
            )
            for j in jobs
        ],
    )


def matches_table(matches: Sequence[JobMatch]) -> str:
    """The table, then in full what did not fit in it: a reason cut short, and each
    schema error on a line of its own (the path is what a reader looks for)."""
    out = [
        table(
            ["JOB", "VERSION", "MATCH", "REASON"],
            [(m.job_id, m.job_version, m.matched, m.reason) for m in matches],
        )
    ]
    for m in matches:
        if width(cell(m.reason, limit=10**9)) > MAX_CELL:
            out.append(f"\n{cell(m.job_id)} {cell(m.job_version)}: {cell(m.reason, limit=10**9)}")
        if m.validation_errors:
            out.append(f"\n{cell(m.job_id)} {cell(m.job_version)}, schema errors:")
            out += [
                f"  {cell(e.path or '/', limit=10**9)}: {cell(e.message, limit=10**9)}"
                for e in m.validation_errors
            ]
    return "\n".join(out)


# -- JSON ------------------------------------------------------------------------------


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False)
