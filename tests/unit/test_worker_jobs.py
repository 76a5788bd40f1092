"""Job definitions are checked when they are decorated, not when the first run arrives."""

from __future__ import annotations

import datetime
import math
import uuid
from typing import Any

import pydantic
import pytest
from pydantic import BaseModel, ConfigDict
from tripwire.client.convert import from_struct
from tripwire.client.errors import InvalidArgument
from tripwire.client.jobs import (
    JobDefinition,
    JobDefinitionError,
    JobRegistry,
    define_job,
    validate_cron,
)
from tripwire.client.models import (
    Trigger,
    cron_trigger,
    event_trigger,
    interval_trigger,
    invoke_trigger,
)
from tripwire.v1 import job_pb2


class NewUser(BaseModel):
    userId: str


async def handler(payload: Any, io: Any, ctx: Any) -> None:
    return None


def good(**overrides: Any) -> dict[str, Any]:
    return {"id": "job-1", "version": "0.0.1", "trigger": invoke_trigger(), **overrides}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"id": ""}, "not a slug"),
        ({"id": "Job-1"}, "not a slug"),
        ({"id": "-job"}, "not a slug"),
        ({"id": "job 1"}, "not a slug"),
        ({"id": "j" * 129}, "not a slug"),
        ({"version": "1.0"}, "not a semantic version"),
        ({"version": "v1.0.0"}, "not a semantic version"),
        ({"version": "01.0.0"}, "not a semantic version"),
        ({"version": "1.0.0-"}, "not a semantic version"),
        ({"version": "1.1\u0660.0"}, "not a semantic version"),  # an Arabic-Indic zero
        ({"trigger": "new.user"}, "trigger must come from"),
        ({"trigger": Trigger(kind="cron", cron="61 * * * *")}, "minute field"),
        ({"trigger": Trigger(kind="cron", cron="0 24 * * *")}, "hour field"),
        ({"trigger": Trigger(kind="cron", cron="0 9 0 * *")}, "day of month field"),
        ({"trigger": Trigger(kind="cron", cron="0 9 * 13 *")}, "month field"),
        ({"trigger": Trigger(kind="cron", cron="0 9 * * 8")}, "day of week field"),
        ({"trigger": Trigger(kind="cron", cron="0 9 * * FOO")}, "day of week field"),
        ({"trigger": Trigger(kind="cron", cron="0 9 * MON *")}, "month field"),
        ({"trigger": Trigger(kind="cron", cron="*/0 * * * *")}, "step"),
        ({"trigger": Trigger(kind="cron", cron="5-1 * * * *")}, "backwards"),
        ({"trigger": Trigger(kind="cron", cron="0 9 ? * *")}, "day of month field"),
        ({"trigger": Trigger(kind="cron", cron="0 9 * *")}, "5 fields"),
        ({"trigger": Trigger(kind="cron", cron="0 \u0669 * * *")}, "hour field"),  # a 9, Arabic
        ({"concurrency_limit": -1}, "concurrency_limit"),
        # What the hello could not carry fails here, naming it, not at the worker's start.
        ({"concurrency_limit": 2**32}, "concurrency_limit must be an integer from 0 to 4294967295"),
        ({"max_duration_seconds": 2**32}, "max_duration_seconds must be an integer from 0"),
        ({"enabled": "false"}, "enabled must be True or False, got 'false'"),
        ({"enabled": 1}, "enabled must be True or False"),
        ({"name": 5}, "name must be a string, got 5"),
        ({"max_duration_seconds": 1.5}, "max_duration_seconds"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"retry": {"limit": 3, "tries": 2}}, r"retry\.tries: is not a retry option"),
        # What the server would refuse at the worker's hello fails here already.
        ({"retry": {"limit": 0}}, r"retry\.limit: must be between 1 and 100"),
        ({"retry": {"factor": 0.5}}, r"retry\.factor"),
        ({"retry": {"min_timeout_ms": 5, "max_timeout_ms": 1}}, r"retry\.max_timeout_ms"),
        ({"retry": {"min_timeout_ms": 120_000}}, r"retry\.min_timeout_ms: .* set max_timeout_ms"),
        ({"retry": {"min_timeout_ms": -1}}, r"retry\.min_timeout_ms"),
        ({"trigger": event_trigger("a", filter={"tags": b"x"})}, r"trigger: filter\.tags"),
        ({"trigger": event_trigger("a", context_filter={"n": math.nan})}, "context_filter.n"),
        ({"trigger": invoke_trigger(schema={"type": object})}, r"trigger: schema\.type"),
    ],
)
def test_bad_definitions_fail_at_decoration(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(JobDefinitionError, match=fragment) as error:
        define_job(**good(**overrides))(handler)
    assert isinstance(error.value, ValueError)
    assert isinstance(error.value, InvalidArgument)


@pytest.mark.parametrize(
    "cron",
    [
        "0 9 * * *",
        "*/15 0-6,18-23 1,15 JAN-jun mon-FRI",
        "0 0 1 */2 0",
        "59 23 31 12 7",
        "0,30 8-18/2 * * 1-5",
    ],
)
def test_plausible_cron_expressions_pass(cron: str) -> None:
    validate_cron(cron)
    job = define_job(**good(trigger=cron_trigger(cron)))(handler)
    assert job.trigger.cron == " ".join(cron.split())


def test_a_cron_over_the_servers_length_limit_is_refused_at_definition() -> None:
    with pytest.raises(JobDefinitionError, match="over the server's limit of 1024"):
        define_job(**good(trigger=cron_trigger("0 9 * * " + "1," * 600 + "2")))(handler)


def test_a_cron_trigger_names_a_real_time_zone() -> None:
    assert cron_trigger("0 9 * * *", timezone="Europe/Paris").timezone == "Europe/Paris"
    # The host's own zoneinfo files too, which the server refuses at the worker's hello.
    for bad in ("Mars/Olympus", "../etc/passwd", "Europe", "localtime", "posix/Europe/Paris"):
        with pytest.raises(JobDefinitionError, match="IANA time zone"):
            cron_trigger("0 9 * * *", timezone=bad)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: cron_trigger("0 9 * *"), "5 fields"),
        (lambda: cron_trigger("0 9 * * *", timezone="right/UTC"), "host's own setting"),
        (lambda: interval_trigger(0), ">= 1"),
        (lambda: interval_trigger(31_536_001), "at most 31536000 .one year."),
        (lambda: event_trigger(""), "non-empty event name"),
    ],
)
def test_a_bad_trigger_raises_job_definition_error(make: Any, fragment: str) -> None:
    with pytest.raises(JobDefinitionError, match=fragment) as error:
        make()
    assert isinstance(error.value, ValueError)
    assert interval_trigger(31_536_000).seconds == 31_536_000


def test_a_trigger_argument_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="timezone must be a string, got int"):
        cron_trigger("0 9 * * *", timezone=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="filter must be a dict"):
        event_trigger("a", filter="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source must be a string, got int"):
        event_trigger("a", source=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="catch_up must be True or False, got 'false'"):
        cron_trigger("0 9 * * *", catch_up="false")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="catch_up must be True or False, got 'no'"):
        interval_trigger(60, catch_up="no")  # type: ignore[arg-type]


def test_retry_policies_at_the_servers_bounds_pass() -> None:
    for retry in (
        {"limit": 1, "factor": 1, "min_timeout_ms": 0, "max_timeout_ms": 0},
        {"limit": 100, "min_timeout_ms": 60000},  # up to the default maximum
        {"limit": None, "factor": None},  # the server's defaults
    ):
        assert define_job(**good(retry=retry))(handler).retry == retry


def test_good_versions_include_prerelease_and_build() -> None:
    for version in ("0.0.1", "1.10.0", "2.0.0-rc.1", "1.0.0+build.5", "1.0.0-alpha+001"):
        assert define_job(**good(version=version))(handler).version == version


@pytest.mark.parametrize(
    "bad_handler",
    [
        42,
        "not a function",
        lambda payload: None,
        lambda payload, io, ctx, extra: None,
    ],
)
def test_handlers_must_be_callable_with_payload_io_ctx(bad_handler: Any) -> None:
    with pytest.raises(JobDefinitionError, match="handler"):
        define_job(**good())(bad_handler)


def test_handlers_with_defaults_or_varargs_are_fine() -> None:
    def with_default(payload: Any, io: Any, ctx: Any = None) -> None:
        return None

    def varargs(*args: Any) -> None:
        return None

    define_job(**good())(with_default)
    define_job(**good())(varargs)


def test_a_client_refuses_a_second_definition_of_an_id() -> None:
    registry = JobRegistry()
    registry.define(id="job-1", version="1.0.0", trigger=invoke_trigger())(handler)
    with pytest.raises(JobDefinitionError, match="'job-1' is already defined"):
        registry.define(id="job-1", version="2.0.0", trigger=invoke_trigger())
    assert len(registry) == 1 and "job-1" in registry
    assert [job.version for job in registry] == ["1.0.0"]


def test_the_decorated_function_stays_callable() -> None:
    def add(payload: int, io: Any, ctx: Any) -> int:
        return payload + 1

    job = define_job(**good())(add)
    assert isinstance(job, JobDefinition)
    assert job(1, None, None) == 2  # type: ignore[arg-type]
    assert not job.is_async
    assert define_job(**good())(handler).is_async


def test_async_callable_objects_count_as_async() -> None:
    class Handler:
        async def __call__(self, payload: Any, io: Any, ctx: Any) -> None:
            return None

    assert define_job(**good())(Handler()).is_async


def test_to_proto_carries_every_field() -> None:
    job = define_job(
        id="job-2",
        name="Second job",
        version="0.0.1",
        trigger=event_trigger("new.user", schema=NewUser),
        concurrency_limit=3,
        max_duration_seconds=60,
        retry={"limit": 2, "min_timeout_ms": 10},
        log_level="debug",
        enabled=False,
    )(handler)
    message = job.to_proto()
    assert message.id == "job-2" and message.name == "Second job"
    assert message.version == "0.0.1"
    assert list(message.trigger.event.names) == ["new.user"]
    assert from_struct(message.trigger.event.schema)["properties"]["userId"]["type"] == "string"
    assert message.concurrency_limit == 3 and message.max_duration_seconds == 60
    assert message.retry.limit == 2 and message.retry.min_timeout_ms == 10
    assert not message.retry.HasField("factor")
    assert message.log_level == job_pb2.LOG_LEVEL_DEBUG
    assert message.HasField("enabled") and not message.enabled


def test_a_pydantic_schema_parses_the_payload() -> None:
    job = define_job(**good(trigger=event_trigger("new.user", schema=NewUser)))(handler)
    parsed = job.parse_payload({"userId": "u_1"})
    assert isinstance(parsed, NewUser) and parsed.userId == "u_1"
    plain = define_job(**good(trigger=event_trigger("x", schema={"type": "object"})))(handler)
    assert plain.parse_payload({"a": 1}) == {"a": 1}


class StrictSignup(BaseModel):
    model_config = ConfigDict(strict=True)
    userId: str
    at: datetime.datetime
    id: uuid.UUID
    tags: tuple[str, ...]


def test_a_strict_model_parses_the_payload_as_json() -> None:
    """A payload is JSON: an ISO 8601 string is a datetime, a string a UUID, an array
    a tuple, as the model's JSON Schema (which the server checked) allows."""
    job = define_job(**good(trigger=event_trigger("signup", schema=StrictSignup)))(handler)
    given = "5f0c6f5e-8d6c-4c43-9b2a-1f1f6e1e2a3b"
    parsed = job.parse_payload(
        {"userId": "u_1", "at": "2024-01-01T00:00:00Z", "id": given, "tags": ["a", "b"]}
    )
    assert parsed.at == datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    assert parsed.id == uuid.UUID(given) and parsed.tags == ("a", "b")
    with pytest.raises(pydantic.ValidationError):  # still strict where JSON is: 1 is no str
        job.parse_payload({"userId": 1, "at": "2024-01-01T00:00:00Z", "id": given, "tags": []})
