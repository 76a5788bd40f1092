"""Jobs: validation at registration (so a bad filter fails now, not at 9am) and lookups."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import filters, schedules, versions
from .errors import InvalidArgument, NotFound
from .events import (
    MAX_ID_LENGTH,
    DeliveryOptions,
    EventDraft,
    Limits,
    check_not_a_fire_id,
    check_text,
    prepare,
)
from .matching import JobIndex, check_schema
from .models import INVOKE_EVENT, Job, Page, Run
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .store import Store

SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
LOG_LEVELS = ("LOG", "ERROR", "WARN", "INFO", "DEBUG")
TRIGGER_KINDS = ("event", "cron", "interval", "invoke")
# Triggers whose runs come from a schedule's fires.
SCHEDULED = frozenset({"cron", "interval"})


def validate_job(job: Job, field: str = "job", max_name_length: int = 256) -> None:
    """Raise InvalidArgument naming the first bad field; normalise defaults in place.
    `max_name_length`: the longest event name or source an event may have (a
    trigger naming a longer one could never match)."""
    if not job.id:
        raise InvalidArgument(f"{field}.id", "is required")
    if not SLUG.fullmatch(job.id):
        raise InvalidArgument(
            f"{field}.id",
            f"{job.id!r} is not a slug (lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 128 characters)",
        )
    if not job.version:
        raise InvalidArgument(f"{field}.version", "is required")
    versions.parse(job.version, f"{field}.version")
    if not job.name:
        job.name = job.id
    if len(job.name) > 256:
        raise InvalidArgument(f"{field}.name", "is longer than 256 characters")
    if job.log_level not in LOG_LEVELS:
        raise InvalidArgument(f"{field}.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if job.retry is not None:
        retry_policy(job.retry, f"{field}.retry")
    validate_trigger(job.trigger, f"{field}.trigger", max_name_length)


def retry_policy(spec: dict[str, Any], field: str) -> RetryPolicy:
    known = {f.name for f in fields(RetryPolicy)}
    given = {k: v for k, v in spec.items() if k in known and v is not None}
    policy = RetryPolicy(**given)
    policy.validate(field, given)
    return policy


def validate_trigger(trigger: dict[str, Any], field: str, max_name_length: int = 256) -> None:
    if len(trigger) != 1 or next(iter(trigger)) not in TRIGGER_KINDS:
        raise InvalidArgument(field, "set exactly one of event, cron, interval, invoke")
    kind, spec = next(iter(trigger.items()))
    where = f"{field}.{kind}"
    if kind == "event":
        names = spec.get("names") or []
        if not names:
            raise InvalidArgument(f"{where}.names", "needs at least one event name")
        for i, name in enumerate(names):
            if not name:
                raise InvalidArgument(f"{where}.names[{i}]", "must not be empty")
            check_text(name, f"{where}.names[{i}]", max_name_length)
        if spec.get("source"):
            check_text(spec["source"], f"{where}.source", max_name_length)
        for key in ("filter", "context_filter"):
            if spec.get(key):
                filters.validate_filter(spec[key], f"{where}.{key}")
    if kind in ("event", "invoke") and spec.get("schema"):
        check_schema(spec["schema"], f"{where}.schema")
    if kind == "cron":
        if not spec.get("cron"):
            raise InvalidArgument(f"{where}.cron", "is required")
        schedules.validate(
            schedules.Schedule(kind="cron", cron=spec["cron"], timezone=spec.get("timezone", "")),
            where,
        )
    if kind == "interval":
        schedules.validate(
            schedules.Schedule(kind="interval", seconds=int(spec.get("seconds", 0))), where
        )


class JobService:
    def __init__(
        self, store: Store, index: JobIndex, limits: Limits, clock: Callable[[], int]
    ) -> None:
        self.store = store
        self.index = index
        self.limits = limits
        self.clock = clock

    async def register(self, env: str, job: Job, *, keep_enabled: bool = False) -> Job:
        """`keep_enabled`: see Store.register_job."""
        job.env = env
        validate_job(job, max_name_length=self.limits.max_name_length)
        return await self.store.register_job(job, self.clock(), keep_enabled=keep_enabled)

    async def register_all(
        self, env: str, jobs: Sequence[Job], field: str, *, keep_enabled: bool = False
    ) -> list[Job]:
        """Several versions at once (a worker's hello): every one is checked before
        any is stored, and they are stored in one transaction, so that a failure
        stores none. `field` names the list in errors."""
        for i, job in enumerate(jobs):
            job.env = env
            validate_job(job, f"{field}[{i}]", self.limits.max_name_length)
        return await self.store.register_jobs(jobs, self.clock(), keep_enabled=keep_enabled)

    async def get(self, env: str, job_id: str, version: str) -> tuple[Job, list[Job]]:
        if not job_id:
            raise InvalidArgument("id", "is required")
        job = await self.store.get_job(env, job_id, version or None)
        if job is None:
            what = f"version {version!r} of job" if version else "job"
            raise NotFound(f"{what} {job_id!r} not found")
        return job, await self.store.job_versions(env, job_id)

    async def find(self, env: str, *, limit: int, after: str) -> Page[Job]:
        if after and not SLUG.fullmatch(after):  # the tokens are job ids
            raise InvalidArgument("page_token", "is not a token this server issued")
        return await self.store.list_jobs(env, limit=limit, after=after)

    async def set_enabled(
        self, env: str, job_id: str, version: str, enabled: bool
    ) -> tuple[list[Job], list[str]]:
        if not job_id:
            raise InvalidArgument("job_id", "is required")
        return await self.store.set_job_enabled(env, job_id, version or None, enabled, self.clock())

    async def invoke(
        self, env: str, job_id: str, payload: Any, context: Any, key: str, account_id: str
    ) -> tuple[Run, bool]:
        if not job_id:
            raise InvalidArgument("job_id", "is required")
        if key:  # it becomes the invoke event's id
            check_text(key, "idempotency_key", MAX_ID_LENGTH)
        if len(account_id) > MAX_ID_LENGTH:
            raise InvalidArgument("account_id", f"is longer than {MAX_ID_LENGTH} characters")
        if account_id:
            check_text(account_id, "account_id", MAX_ID_LENGTH)
        now = self.clock()
        latest = self.index.get(env, job_id)
        if payload is None and latest is not None and latest.job.trigger_kind in SCHEDULED:
            # What its fires carry, for now: a handler tried by hand reads `ts` as usual.
            payload = schedules.scheduled_payload(datetime.fromtimestamp(now / 1000, UTC), None)
        draft = EventDraft(name=INVOKE_EVENT, payload=payload, context=context, id=key)
        # The name is the server's own: the name limit is for what clients choose.
        limits = replace(
            self.limits, max_name_length=max(self.limits.max_name_length, len(INVOKE_EVENT))
        )
        event = prepare(
            draft, DeliveryOptions(account_id=account_id), now, limits, "idempotency_key"
        )
        if key:
            check_not_a_fire_id(self.index, env, key, "idempotency_key")
        return await self.store.invoke(env, job_id, event, now)
