"""JSON <-> Value/Struct, datetime <-> Timestamp, messages -> models, triggers."""

from __future__ import annotations

import dataclasses
import decimal
import enum
import math
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field
from tripwire.client import (
    Trigger,
    convert,
    cron_trigger,
    event_trigger,
    interval_trigger,
    invoke_trigger,
)
from tripwire.server.errors import InvalidArgument
from tripwire.server.jobs import retry_policy
from tripwire.v1 import event_pb2, event_service_pb2, job_pb2, run_pb2

SAFE = 2**53

# -- JSON <-> Value ---------------------------------------------------------------------

ROUND_TRIPS: list[tuple[str, Any, Any]] = [
    ("null", None, None),
    ("true", True, True),
    ("false", False, False),
    ("zero", 0, 0),
    ("int", 42, 42),
    ("negative", -7, -7),
    ("largest safe int", SAFE, SAFE),
    ("smallest safe int", -SAFE, -SAFE),
    ("float", 2.5, 2.5),
    ("integral float comes back int", 3.0, 3),
    ("huge integral float stays float", 1e300, 1e300),
    ("string", "héllo ✓", "héllo ✓"),
    ("empty string", "", ""),
    ("empty object", {}, {}),
    ("empty list", [], []),
    ("tuple becomes list", (1, "a"), [1, "a"]),
    (
        "nested",
        {"a": [1, {"b": None, "c": [[]]}], "d": {}},
        {"a": [1, {"b": None, "c": [[]]}], "d": {}},
    ),
]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [(o, e) for _, o, e in ROUND_TRIPS],
    ids=[name for name, _, _ in ROUND_TRIPS],
)
def test_value_round_trip(obj: Any, expected: Any) -> None:
    back = convert.from_value(convert.to_value(obj))
    assert back == expected
    assert type(back) is type(expected)


def test_integral_float_beyond_2_53_is_not_turned_into_an_int() -> None:
    value = struct_pb2.Value(number_value=float(SAFE * 2))
    assert isinstance(convert.from_value(value), float)


def test_unset_value_reads_as_none() -> None:
    assert convert.from_value(struct_pb2.Value()) is None


def test_empty_containers_select_their_kind() -> None:
    assert convert.to_value({}).WhichOneof("kind") == "struct_value"
    assert convert.to_value([]).WhichOneof("kind") == "list_value"


BAD_VALUES: list[tuple[str, Any, type[Exception], str]] = [
    ("int too big", {"a": [1, {"b": SAFE + 1}]}, ValueError, "payload.a[1].b: integer"),
    ("negative int too big", -(SAFE + 1), ValueError, "payload: integer"),
    ("nan", {"x": math.nan}, ValueError, "payload.x: holds nan: NaN or Infinity, which JSON"),
    ("infinity", [math.inf], ValueError, "payload[0]: holds inf: NaN or Infinity, which JSON"),
    ("non-string key", {1: "a"}, TypeError, "payload: object keys must be strings"),
    ("object", {"s": object()}, TypeError, "payload.s: object is not a JSON value"),
    ("bytes", b"x", TypeError, "payload: bytes is not a JSON value"),
    ("model class", [BaseModel], TypeError, "payload[0]: ModelMetaclass is not a JSON value"),
    ("lone surrogate", {"t": "\ud800"}, ValueError, "payload: text is not valid Unicode"),
]


@pytest.mark.parametrize(
    ("obj", "error", "message"), [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES]
)
def test_non_json_values_are_refused_with_their_path(
    obj: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        convert.to_value(obj, what="payload")


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    at: datetime


class Order(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    order_id: str = Field(alias="orderId")
    placed: datetime


def test_what_json_has_no_type_for_is_written_as_pydantics_json_mode_writes_it() -> None:
    when = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    value = {
        "order": Order(orderId="o_1", placed=when),
        "items": [Order(orderId="o_2", placed=when)],
        "at": when,
        "day": date(2026, 11, 27),
        "id": uuid.UUID(int=1),
        "price": decimal.Decimal("12.30"),
        "color": Color.RED,
        "tags": {"b", "a"},
        "point": Point(1, when),
    }
    assert convert.from_value(convert.to_value(value)) == {
        "order": {"orderId": "o_1", "placed": "2026-11-27T09:30:00Z"},
        "items": [{"orderId": "o_2", "placed": "2026-11-27T09:30:00Z"}],
        "at": "2026-11-27T09:30:00Z",  # UTC as in a model: one instant, one text
        "day": "2026-11-27",
        "id": "00000000-0000-0000-0000-000000000001",
        "price": "12.30",
        "color": "red",
        "tags": ["a", "b"],
        "point": {"x": 1, "at": "2026-11-27T09:30:00Z"},
    }
    # The model's own schema takes what it is dumped as (by alias).
    assert (
        Order.model_validate(convert.from_value(convert.to_value(value["order"]))) == value["order"]
    )


def nested(levels: int, leaf: Any = 1) -> Any:
    """Objects and arrays, alternating, `levels` deep."""
    value = leaf
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


def test_values_nest_at_most_as_deep_as_the_server_decodes() -> None:
    deepest = nested(convert.MAX_JSON_DEPTH)
    assert convert.from_value(convert.to_value(deepest)) == deepest
    for too_deep in ({"a": nested(convert.MAX_JSON_DEPTH)}, [nested(convert.MAX_JSON_DEPTH)]):
        with pytest.raises(ValueError, match=r"payload.*nests objects and arrays more than 30"):
            convert.to_value(too_deep, what="payload")
    with pytest.raises(ValueError, match="more than 30"):  # not a RecursionError
        convert.to_value(nested(5000), what="payload")


def test_struct_round_trip_and_refusal_of_non_objects() -> None:
    obj = {"status": {"$in": ["a", "b"]}, "n": {"$gt": 3}}
    assert convert.from_struct(convert.to_struct(obj)) == obj
    with pytest.raises(TypeError, match="filter: expected a JSON object"):
        convert.to_struct([1], what="filter")  # type: ignore[arg-type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-SAFE, SAFE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)


@given(json_values)
def test_any_json_value_round_trips(obj: Any) -> None:
    assert convert.from_value(convert.to_value(obj)) == obj


@given(json_values)
def test_encoding_agrees_with_protobuf_json_format(obj: Any) -> None:
    assert convert.to_value(obj) == json_format.ParseDict(obj, struct_pb2.Value())


# -- datetime <-> Timestamp -------------------------------------------------------------

ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(ZONES),
    )
)
def test_datetimes_round_trip_as_utc(when: datetime) -> None:
    back = convert.timestamp_to_datetime(convert.datetime_to_timestamp(when))
    assert back == when
    assert back.tzinfo is UTC


@given(st.integers(-62135596800, 253402300799), st.integers(0, 999_999_999))
def test_a_timestamp_reads_as_protobufs_own_conversion_does(seconds: int, nanos: int) -> None:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert convert.timestamp_to_datetime(stamp) == stamp.ToDatetime(tzinfo=UTC)


def test_timestamp_fields() -> None:
    stamp = convert.datetime_to_timestamp(datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC))
    assert (stamp.seconds, stamp.nanos) == (1714554000, 123456000)
    run = run_pb2.Run(id="r1")
    assert convert.optional_datetime(run, "started_at") is None
    run.started_at.CopyFrom(timestamp_pb2.Timestamp())  # set, at the epoch
    assert convert.optional_datetime(run, "started_at") == datetime(1970, 1, 1, tzinfo=UTC)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        convert.datetime_to_timestamp(datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        convert.datetime_to_timestamp("2024-01-01")  # type: ignore[arg-type]


# -- enums ------------------------------------------------------------------------------


def test_enum_names_drop_the_prefix_and_survive_unknown_numbers() -> None:
    assert convert.enum_name(run_pb2.RunStatus, run_pb2.RUN_STATUS_TIMED_OUT, "RUN_STATUS_") == (
        "TIMED_OUT"
    )
    assert convert.enum_name(run_pb2.RunStatus, 99, "RUN_STATUS_") == "99"
    assert convert.enum_value(run_pb2.RunStatus, " queued ", "RUN_STATUS_") == 1
    assert convert.enum_value(run_pb2.RunStatus, "RUN_STATUS_SUCCESS", "RUN_STATUS_") == 4
    with pytest.raises(ValueError, match=r"^must be one of QUEUED, .*, got 'DONE'$"):
        convert.enum_value(run_pb2.RunStatus, "DONE", "RUN_STATUS_")
    with pytest.raises(ValueError, match=r"^statuses: must be one of QUEUED, .*, got 'DONE'$"):
        convert.enum_value(run_pb2.RunStatus, "DONE", "RUN_STATUS_", field="statuses")
    with pytest.raises(TypeError, match=r"^status: must be a string, got int$"):
        convert.enum_value(run_pb2.RunStatus, 4, "RUN_STATUS_", field="status")  # type: ignore[arg-type]


# -- messages -> models -----------------------------------------------------------------

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    return convert.datetime_to_timestamp(when)


def test_run_from_pb() -> None:
    message = run_pb2.Run(
        id="r1",
        job_id="j",
        job_version="1.0.0",
        event_id="e1",
        status=run_pb2.RUN_STATUS_INVALID_PAYLOAD,
        attempt=2,
        created_at=_ts(T0),
        validation_errors=[run_pb2.ValidationError(path="/userId", message="required")],
        error=run_pb2.ErrorInfo(type="ValueError", message="bad"),
    )
    run = convert.run_from_pb(message)
    assert run.status == "INVALID_PAYLOAD"
    assert run.terminal
    assert run.created_at == T0
    assert run.started_at is None and run.wait_until is None
    assert run.output is None
    assert run.account_id is None
    assert run.error is not None and run.error.type == "ValueError"
    assert run.validation_errors[0].path == "/userId"


def test_event_from_pb_with_runs() -> None:
    message = event_pb2.Event(
        id="e1",
        name="new.user",
        source="trigger.dev",
        payload=convert.to_value({"userId": "u_1", "n": 1.0}),
        status=event_pb2.EVENT_STATUS_DELIVERED,
        deliver_at=_ts(T0),
        delivered_at=_ts(T0),
        deduplicated=True,
        account_id="acct",
        runs=[run_pb2.Run(id="r1", status=1)],
    )
    event = convert.event_from_pb(message)
    assert event.payload == {"userId": "u_1", "n": 1}
    assert event.context is None
    assert event.status == "DELIVERED"
    assert event.deduplicated
    assert event.cancelled_at is None
    assert event.account_id == "acct"
    assert [(r.id, r.status) for r in event.runs] == [("r1", "QUEUED")]


def test_task_and_log_from_pb() -> None:
    task = convert.task_from_pb(
        run_pb2.Task(
            id="t1",
            run_id="r1",
            key="k",
            kind=run_pb2.TASK_KIND_WAIT,
            status=run_pb2.TASK_STATUS_WAITING,
            position=3,
            retry_at=_ts(T0),
            retry=job_pb2.RetryPolicy(limit=3),
        )
    )
    assert (task.kind, task.status, task.position, task.parent_id) == ("WAIT", "WAITING", 3, None)
    assert task.retry == {"limit": 3}
    assert task.retry_at == T0
    log = convert.log_from_pb(
        run_pb2.LogEntry(
            seq=1, level=job_pb2.LOG_LEVEL_WARN, message="hi", data=convert.to_value({"a": 1})
        )
    )
    assert (log.seq, log.level, log.message, log.data, log.time) == (
        1,
        "WARN",
        "hi",
        {"a": 1},
        None,
    )


def test_job_from_pb_defaults() -> None:
    message = job_pb2.Job(id="j", version="1.0.0", trigger=cron_trigger("0 9 * * *").to_proto())
    job = convert.job_from_pb(message)
    assert job.enabled  # absent means true
    assert job.retry is None and job.log_level is None
    assert job.trigger == cron_trigger("0 9 * * *")
    message.enabled = False
    message.log_level = job_pb2.LOG_LEVEL_DEBUG
    job = convert.job_from_pb(message, [message])
    assert not job.enabled
    assert job.log_level == "DEBUG"
    assert [v.version for v in job.versions] == ["1.0.0"]


def test_job_match_from_pb() -> None:
    match = convert.job_match_from_pb(
        event_service_pb2.JobMatch(
            job_id="j", job_version="1.0.0", matched=False, reason="name differs"
        )
    )
    assert (match.matched, match.reason, match.validation_errors) == (False, "name differs", ())


def test_retry_policy() -> None:
    policy = {
        "limit": 3,
        "factor": 2.0,
        "min_timeout_ms": 10,
        "max_timeout_ms": 100,
        "randomize": False,
    }
    assert convert.retry_from_pb(convert.retry_to_pb(policy)) == policy
    assert convert.retry_from_pb(convert.retry_to_pb({"limit": 1})) == {"limit": 1}
    with pytest.raises(ValueError, match=r"^retry\.limits: is not a retry option \(known: limit,"):
        convert.retry_to_pb({"limits": 1})
    with pytest.raises(ValueError, match=r"^job\.retry\.limit: must be between 1 and 100"):
        convert.retry_to_pb({"limit": 0}, field="job.retry")


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ({"limit": 0}, r"retry\.limit: must be between 1 and 100, got 0"),
        ({"limit": 101}, r"retry\.limit"),
        ({"factor": 0.99}, r"retry\.factor: must be a finite number >= 1"),
        ({"factor": math.inf}, r"retry\.factor"),
        ({"min_timeout_ms": 10, "max_timeout_ms": 9}, r"retry\.max_timeout_ms: must be >= min"),
        ({"min_timeout_ms": 60001}, r"retry\.min_timeout_ms: .*over the default max_timeout_ms"),
        ({"min_timeout_ms": -1}, r"retry\.min_timeout_ms"),
        ({"limit": "3"}, r"retry\.limit"),
    ],
)
def test_retry_policy_values_the_server_refuses_fail_naming_the_field(
    policy: dict[str, Any], error: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        convert.retry_to_pb(policy)


_uint32 = st.integers(0, 2**32 - 1) | st.integers(0, 120_000)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "limit": st.none() | st.integers(0, 120) | _uint32,
            "factor": st.none() | st.floats(0, 5) | st.floats(allow_nan=True),
            "min_timeout_ms": st.none() | _uint32,
            "max_timeout_ms": st.none() | _uint32,
            "randomize": st.none() | st.booleans(),
        },
    )
)
def test_retry_to_pb_refuses_exactly_what_the_server_refuses(policy: dict[str, Any]) -> None:
    try:
        convert.retry_to_pb(policy)
    except ValueError:
        client_refuses = True
    else:
        client_refuses = False
    try:
        retry_policy(policy, "job.retry")
    except InvalidArgument:
        server_refuses = True
    else:
        server_refuses = False
    assert client_refuses == server_refuses


# -- triggers ---------------------------------------------------------------------------


class NewUser(BaseModel):
    userId: str


TRIGGERS = [
    event_trigger("new.user"),
    event_trigger(
        ["a", "b"],
        source="stripe",
        filter={"plan": ["pro"]},
        context_filter={"env": [{"$startsWith": "prod"}]},
        schema={"type": "object"},
    ),
    cron_trigger("0  9 * * 1", timezone="Europe/Paris", catch_up=True),
    interval_trigger(30),
    invoke_trigger(),
    invoke_trigger(schema={"type": "object"}),
]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: t.describe())
def test_trigger_proto_round_trip(trigger: Trigger) -> None:
    assert convert.trigger_from_pb(trigger.to_proto()) == trigger


def test_trigger_protos() -> None:
    event = event_trigger("new.user").to_proto()
    assert event.WhichOneof("kind") == "event"
    assert list(event.event.names) == ["new.user"]
    assert event.event.source == "trigger.dev"
    assert not event.event.HasField("filter")
    assert cron_trigger("0 9 * * *").to_proto().cron.cron == "0 9 * * *"
    assert interval_trigger(5).to_proto().interval.seconds == 5
    assert invoke_trigger().to_proto().WhichOneof("kind") == "invoke"
    assert convert.trigger_from_pb(job_pb2.Trigger()) is None


def test_pydantic_schema_is_sent_as_json_schema_and_the_model_kept() -> None:
    trigger = event_trigger("new.user", schema=NewUser)
    assert trigger.model is NewUser
    assert trigger.schema == NewUser.model_json_schema()
    assert trigger.to_proto().event.schema.fields["required"].list_value.values[0].string_value == (
        "userId"
    )
    assert invoke_trigger(schema=NewUser).model is NewUser


def test_describe() -> None:
    assert event_trigger(["a", "b"]).describe() == "event a,b"
    assert event_trigger("a", source="s").describe() == "event a from s"
    # Not "event a,b": one name holding a comma is told from two names.
    assert event_trigger(["a,b"]).describe() == 'event ["a,b"]'
    assert event_trigger(["new user", "x"]).describe() == 'event ["new user", "x"]'
    assert cron_trigger("0 9 * * *").describe() == "cron 0 9 * * * (UTC)"
    assert interval_trigger(5).describe() == "every 5s"
    assert invoke_trigger().describe() == "invoke"


@pytest.mark.parametrize(
    "make",
    [
        lambda: event_trigger(""),
        lambda: event_trigger([]),
        lambda: event_trigger(["a", ""]),
        lambda: cron_trigger("0 9 * *"),
        lambda: cron_trigger("0 9 * * * *"),
        lambda: interval_trigger(0),
        lambda: interval_trigger(True),
        lambda: interval_trigger(1.5),  # type: ignore[arg-type]
    ],
)
def test_bad_triggers_fail_when_built(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: event_trigger("a", filter=["x"]),  # type: ignore[arg-type]
        lambda: event_trigger("a", schema=3),  # type: ignore[arg-type]
        lambda: invoke_trigger(schema=str),  # type: ignore[arg-type]
    ],
)
def test_badly_typed_trigger_options_fail_when_built(make: Any) -> None:
    with pytest.raises(TypeError):
        make()
