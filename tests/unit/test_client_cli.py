"""The tripwire command line without a server: parsing, tables, output, exit codes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from tripwire.client import (
    DeadlineExceeded,
    ErrorInfo,
    Event,
    EventDetail,
    Job,
    JobMatch,
    LogEntry,
    NotFound,
    Page,
    Run,
    RunDetail,
    Task,
    ValidationError,
    cli,
    cron_trigger,
    event_trigger,
)
from tripwire.client import _render as render

T0 = datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)

# -- parsing ----------------------------------------------------------------------------


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def test_global_options_before_or_after_the_command() -> None:
    before = parse("--url", "h:1", "--api-key", "k", "--json", "events")
    after = parse("events", "--url", "h:1", "--api-key", "k", "--json")
    for args in (before, after):
        assert (args.url, args.api_key, args.json) == ("h:1", "k", True)


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIPWIRE_URL", raising=False)
    monkeypatch.delenv("TRIPWIRE_API_KEY", raising=False)
    args = parse("jobs")
    assert (args.url, args.api_key, args.json) == ("localhost:50051", None, False)
    monkeypatch.setenv("TRIPWIRE_URL", "env:2")
    monkeypatch.setenv("TRIPWIRE_API_KEY", "envkey")
    args = parse("jobs")
    assert (args.url, args.api_key) == ("env:2", "envkey")
    assert parse("jobs", "--url", "flag:3").url == "flag:3"


def test_send_arguments() -> None:
    args = parse(
        "send",
        "new.user",
        "--payload",
        '{"userId": "u_1"}',
        "--context",
        "[1]",
        "--id",
        "e1",
        "--source",
        "s",
        "--deliver-after",
        "30",
    )
    assert cli._event_dict(args) == {
        "name": "new.user",
        "payload": {"userId": "u_1"},
        "context": [1],
        "source": "s",
        "id": "e1",
    }
    assert args.deliver_after == 30
    assert cli._event_dict(parse("match", "a")) == {"name": "a"}


def test_list_arguments() -> None:
    args = parse("runs", "--job", "j", "--event", "e", "--status", "SUCCESS", "--limit", "5")
    assert (args.job, args.event, args.status, args.limit) == ("j", "e", "SUCCESS", 5)
    assert parse("events").limit == 20
    args = parse("invoke", "job-1", "--payload", "3", "--idempotency-key", "k")
    assert (args.job_id, args.payload, args.idempotency_key, args.context) == (
        "job-1",
        3,
        "k",
        None,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["send", "a", "--payload", "{bad"], "argument --payload: not valid JSON"),
        (["match", "a", "--context", "nope"], "argument --context: not valid JSON"),
        (["events", "--limit", "0"], "expected a whole number >= 1"),
        (["runs", "--limit", "99999999999"], "argument --limit: expected a whole number >= 1"),
        (["send", "a", "--deliver-after", "1" + "0" * 20], "argument --deliver-after: expected"),
        (["send", "a", "--deliver-after", "soon"], "expected whole seconds"),
        (["frobnicate"], "invalid choice"),
        (["send"], "required: name"),
        (["runs", "--status", "bogus"], "argument --status: must be one of QUEUED, EXECUTING"),
        (["events", "--status", "nope"], "argument --status: must be one of PENDING, DELIVERED"),
        # Refused by the client before any call, named as the server names it.
        (["send", "neg", "--deliver-after", "-5"], "error: options.deliver_after: must not be"),
        (["send", "", "--url", "127.0.0.1:9"], "error: event.name: is required\n"),
        (["match", "", "--url", "127.0.0.1:9"], "error: event.name: is required\n"),
        (["invoke", "", "--url", "127.0.0.1:9"], "error: job_id: is required\n"),
        (["run", "", "--url", "127.0.0.1:9"], "error: id: is required\n"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_statuses_are_checked_before_any_call_in_any_case(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse("runs", "--status", " success").status == "SUCCESS"
    assert parse("runs", "--status", "run_status_timed_out").status == "TIMED_OUT"
    assert parse("events", "--status", "Pending").status == "PENDING"
    status, _, err = run_cli(["runs", "--status", "done"], capsys)
    assert status == 2 and "INVALID_ARGUMENT" not in err
    assert fake.calls == []  # no client, no call
    assert cli.main(["runs", "--help"]) == 0
    listed = " ".join(capsys.readouterr().out.split())  # as wrapped for the terminal
    assert "QUEUED, EXECUTING, WAITING, SUCCESS, FAILURE, CANCELED, TIMED_OUT" in listed
    assert cli.main(["events", "--help"]) == 0
    assert "PENDING, DELIVERED, CANCELLED" in " ".join(capsys.readouterr().out.split())


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "commands:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "match" in capsys.readouterr().out


# -- serve ------------------------------------------------------------------------------


def test_serve_hands_everything_after_it_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def import_module(name: str) -> Any:
        seen.append(name)
        return SimpleNamespace(main=lambda argv: seen.append(argv) or 3)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    assert cli.main(["serve", "--address", "127.0.0.1:0", "--url", "x", "--help"]) == 3
    assert seen == [
        "tripwire.server.__main__",
        ["--address", "127.0.0.1:0", "--url", "x", "--help"],
    ]
    assert cli._serve_args(["--url=x", "serve"]) == []
    assert cli._serve_args(["events", "serve"]) is None


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--api-key", "k=prod", "serve"], "tripwire serve --api-key KEY=ENV"),
        (["--api-key=k=prod", "serve", "--address", "127.0.0.1:0"], "--api-key KEY=ENV"),
        # It was dropped: the server listened on its default address instead.
        (["--url", "0.0.0.0:6000", "serve"], "tripwire serve --address HOST:PORT"),
        (["--url=0.0.0.0:6000", "serve"], "tripwire serve --address HOST:PORT"),
        (["--json", "serve"], "the server has no such option"),
    ],
)
def test_a_client_option_before_serve_is_refused(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_serve", lambda argv: pytest.fail("the server was started"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {argv[0].partition('=')[0]} before 'serve' is the client's")
    assert says in err


def test_serve_without_the_server_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def import_module(name: str) -> Any:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == (
        "the server is not installed: from a checkout of this repository, pip install '.[server]'"
    )


# -- rendering --------------------------------------------------------------------------


def test_table_aligns_columns_and_formats_cells() -> None:
    text = render.table(
        ["ID", "OK", "WHEN", "DATA"],
        [("a", True, T0, {"k": [1, 2]}), ("longer-id", False, None, "two\nlines")],
    )
    assert text.splitlines() == [
        "ID         OK   WHEN                  DATA",
        'a          yes  2024-05-01T09:00:00Z  {"k":[1,2]}',
        "longer-id  no   -                     two lines",
    ]


def test_cells_are_cut() -> None:
    assert render.cell("x" * 100) == "x" * 79 + "…"
    assert render.cell("注" * 100) == "注" * 39 + "…"  # two columns each
    assert render.cell("") == "-"
    assert render.cell(0) == "0"


def test_wide_characters_keep_the_columns_aligned_and_controls_show_escaped() -> None:
    text = render.table(
        ["NAME", "SOURCE"],
        [("注文.作成", "shop"), ("ok", "trigger.dev"), ("e\u0301t\u00e9", "x"), ("a\tb", "y")],
    )
    assert text.splitlines() == [
        "NAME       SOURCE",
        "注文.作成  shop",  # nine columns wide
        "ok         trigger.dev",
        "e\u0301t\u00e9        x",  # three
        "a\\tb       y",
    ]
    assert render.width("注文.作成") == 9 and render.width("e\u0301") == 1
    # Separators and bidirectional controls (from a server before these were refused).
    assert render.cell("a\u2028b\u202ec\nd") == "a\\u2028b\\u202ec d"


def test_block_aligns_labels() -> None:
    assert render.block([("id", "e1"), ("delivered at", None), ("stack", "a\nb")]) == (
        "id            e1\ndelivered at  -\nstack         a\n              b"
    )


def test_a_multi_line_value_keeps_its_lines_but_no_terminal_controls() -> None:
    """A run's error is the handler's text: it must not clear or recolour the screen,
    nor reorder it, in `tripwire run`."""
    error = "harmless\r\n\x1b[2J\x1b[31mSTATUS SUCCESS\x1b[0m \u202eevil\n\tat line 3"
    assert render.block([("error", error)]) == (
        "error  harmless\n"
        "       \\x1b[2J\\x1b[31mSTATUS SUCCESS\\x1b[0m \\u202eevil\n"
        "       \tat line 3"
    )


def test_iso_is_utc_with_z() -> None:
    assert render.iso(T0) == "2024-05-01T09:00:00Z"
    assert render.iso(T0, precise=True) == "2024-05-01T09:00:00.123456Z"
    assert render.iso(None) == "-"


def _run(status: str = "SUCCESS", **changes: Any) -> Run:
    fields: dict[str, Any] = dict(
        id="r1",
        job_id="welcome",
        job_version="1.0.0",
        event_id="e1",
        status=status,
        attempt=1,
        created_at=T0,
        started_at=T0,
        completed_at=T0,
        updated_at=T0,
        output={"sent": True},
        error=None,
        validation_errors=(),
        account_id=None,
        wait_until=None,
    )
    fields.update(changes)
    return Run(**fields)


def _event(runs: tuple[Run, ...] = (), **changes: Any) -> Event:
    fields: dict[str, Any] = dict(
        id="e1",
        name="new.user",
        source="trigger.dev",
        payload={"userId": "u_1"},
        context={},
        timestamp=T0,
        deliver_at=T0,
        delivered_at=T0,
        cancelled_at=None,
        deduplicated=False,
        status="DELIVERED",
        account_id=None,
        created_at=T0,
        runs=runs,
    )
    fields.update(changes)
    return Event(**fields)


def _job(**changes: Any) -> Job:
    fields: dict[str, Any] = dict(
        id="welcome",
        name="Welcome",
        version="1.0.0",
        trigger=event_trigger("new.user"),
        enabled=True,
        concurrency_limit=0,
        max_duration_seconds=0,
        retry=None,
        log_level=None,
        created_at=T0,
        updated_at=T0,
        latest=True,
        next_fire_at=None,
    )
    fields.update(changes)
    return Job(**fields)


def test_json_of_models() -> None:
    job = _job(trigger=event_trigger("a", schema={"type": "object"}))
    data = json.loads(render.dumps([_event(runs=(_run(),)), job]))
    assert data[0]["timestamp"] == "2024-05-01T09:00:00.123456Z"
    assert data[0]["runs"][0]["output"] == {"sent": True}
    assert data[1]["trigger"]["names"] == ["a"]
    assert "model" not in data[1]["trigger"]


# -- commands, against a fake client ----------------------------------------------------


class FakeClient:
    """Stands in for Client: canned answers, records the calls."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    fail: BaseException | None = None

    def __init__(self, name: str, url: str, *, api_key: str | None = None) -> None:
        FakeClient.calls.append(("__init__", (name, url), {"api_key": api_key}))

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            FakeClient.calls.append((method, args, kwargs))
            if FakeClient.fail is not None:
                raise FakeClient.fail
            return ANSWERS[method]

        return call


TASK = Task(
    id="t1",
    run_id="r1",
    parent_id=None,
    key="send-email",
    idempotency_key="h",
    kind="RUN",
    status="COMPLETED",
    position=1,
    attempts=0,
    params=None,
    output={"ok": 1},
    error=None,
    started_at=T0,
    completed_at=T0,
    retry_at=None,
    retry=None,
)
LOG = LogEntry(seq=1, level="INFO", message="New user created", data={"userId": "u_1"}, time=T0)
ANSWERS: dict[str, Any] = {
    "send_event": _event(runs=(_run("QUEUED"),)),
    "list_events": Page((_event(),), None),
    "get_event": EventDetail(_event(), (_run(),)),
    "cancel_event": _event(status="CANCELLED", cancelled_at=T0, delivered_at=None),
    "list_jobs": Page((_job(), _job(id="daily", trigger=cron_trigger("0 9 * * *"))), None),
    "get_job": _job(versions=(_job(), _job(version="0.9.0", latest=False, enabled=False))),
    "list_runs": Page((_run(),), "next"),
    "get_run": RunDetail(_run(), (TASK,), (LOG,)),
    "cancel_run": _run("CANCELED"),
    "cancel_runs_for_event": ["r1", "r2"],
    "set_job_enabled": [_job(enabled=False), _job(version="0.9.0", enabled=False, latest=False)],
    "watch_run": [
        _run("EXECUTING", completed_at=None, output=None, worker_id="host-7-4242"),
        dataclasses.replace(TASK, status="RUNNING", output=None, completed_at=None),
        LOG,
        TASK,
        _run("SUCCESS"),
    ],
    "invoke_job": _run("QUEUED", output=None),
    "match_event": [
        JobMatch("welcome", "1.0.0", True, ""),
        JobMatch("billing", "2.0.0", False, "source differs", ()),
        JobMatch(
            "strict",
            "1.0.0",
            True,
            "payload fails the schema",
            (ValidationError("/userId", "is required"),),
        ),
    ],
}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    monkeypatch.setattr(cli, "Client", FakeClient)
    FakeClient.calls = []
    FakeClient.fail = None
    return FakeClient


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_send(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(
        ["--url", "h:1", "--api-key", "k", "send", "new.user", "--payload", '{"userId":"u_1"}'],
        capsys,
    )
    assert status == 0
    assert fake.calls[0] == ("__init__", ("tripwire-cli", "h:1"), {"api_key": "k"})
    assert fake.calls[1] == (
        "send_event",
        ({"name": "new.user", "payload": {"userId": "u_1"}},),
        {"deliver_after": None},
    )
    assert "name          new.user" in out
    assert "delivered at  2024-05-01T09:00:00Z" in out
    assert "runs:\nID  JOB      VERSION  EVENT  STATUS  ATTEMPT" in out
    assert "r1  welcome  1.0.0    e1     QUEUED" in out


def test_send_json(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["send", "new.user", "--json"], capsys)
    assert status == 0
    data = json.loads(out)
    assert data["id"] == "e1" and data["runs"][0]["status"] == "QUEUED"


@pytest.mark.parametrize(
    ("argv", "method", "expected"),
    [
        (["events", "--name", "new.user", "--limit", "5"], "list_events", "e1  new.user"),
        (["event", "e1"], "get_event", "runs:\nID"),
        (["cancel-event", "e1"], "cancel_event", "status        CANCELLED"),
        (["jobs"], "list_jobs", "daily    1.0.0    Welcome  cron 0 9 * * * (UTC)"),
        (["job", "welcome"], "get_job", "0.9.0    no       no"),
        (["runs", "--status", "SUCCESS"], "list_runs", "r1  welcome  1.0.0    e1     SUCCESS"),
        (["run", "r1"], "get_run", "logs:\nSEQ  TIME"),
        (["cancel-run", "r1"], "cancel_run", "status        CANCELED"),
        (
            ["invoke", "welcome", "--payload", '{"a":1}'],
            "invoke_job",
            "job           welcome@1.0.0",
        ),
        (
            ["match", "new.user", "--payload", "{}"],
            "match_event",
            "billing  2.0.0    no     source",
        ),
    ],
)
def test_commands(
    argv: list[str],
    method: str,
    expected: str,
    fake: type[FakeClient],
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run_cli(argv, capsys)
    assert (status, err) == (0, "")
    assert fake.calls[1][0] == method
    assert expected in out
    status, out, _ = run_cli(["--json", *argv], capsys)
    assert status == 0
    json.loads(out)


def test_run_shows_tasks_and_logs(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run_cli(["run", "r1"], capsys)
    assert "1  send-email  RUN   COMPLETED" in out
    assert 'New user created  {"userId":"u_1"}' in out
    _, out, _ = run_cli(["match", "x"], capsys)
    assert out.endswith(
        "strict   1.0.0    yes    payload fails the schema\n\n"
        "strict 1.0.0, schema errors:\n  /userId: is required\n"
    )


def test_watch_prints_each_update_on_a_line_as_it_comes(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(["watch", "r1", "--timeout", "30"], capsys)
    assert status == 0
    assert fake.calls[1] == ("watch_run", ("r1",), {"timeout": 30.0})
    at = "2024-05-01T09:00:00.123456Z"
    assert out.splitlines() == [
        f"{at}  run  EXECUTING  attempt 1  on host-7-4242",
        f"{at}  task  #1  send-email  RUN  RUNNING",
        f'{at}  log  INFO  New user created  {{"userId":"u_1"}}',
        f'{at}  task  #1  send-email  RUN  COMPLETED  {{"ok":1}}',
        f'{at}  run  SUCCESS  attempt 1  output {{"sent":true}}',
    ]


def test_watch_json_is_an_object_a_line_named_by_its_kind(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(["--json", "watch", "r1"], capsys)
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [next(iter(line)) for line in lines] == ["run", "task", "log", "task", "run"]
    assert lines[2]["log"]["message"] == "New user created"
    assert lines[-1]["run"]["status"] == "SUCCESS"


def test_watch_past_its_timeout_says_so(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    fake.fail = DeadlineExceeded("Deadline Exceeded")
    assert run_cli(["watch", "r1", "--timeout", "2.5"], capsys) == (
        1,
        "",
        "error: the run did not end within --timeout 2.5 s\n",
    )
    # Past ten years the client would refuse it in Python's words ("or None").
    for bad in ("0", "-1", "inf", "nan", "soon", "1e12"):
        status, _, err = run_cli(["watch", "r1", "--timeout", bad], capsys)
        assert status == 2
        assert f"expected seconds > 0 and <= 315360000 (ten years), got '{bad}'" in err


def test_cancel_runs_lists_the_runs_it_cancelled(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["cancel-runs", "e1"], capsys) == (0, "cancelled 2 runs:\nr1\nr2\n", "")
    assert fake.calls[1] == ("cancel_runs_for_event", ("e1",), {})
    ANSWERS["cancel_runs_for_event"] = []
    try:
        assert run_cli(["cancel-runs", "e1"], capsys)[1] == "no unfinished runs: none cancelled\n"
    finally:
        ANSWERS["cancel_runs_for_event"] = ["r1", "r2"]


@pytest.mark.parametrize(("command", "enabled"), [("enable", True), ("disable", False)])
def test_enable_and_disable_switch_a_jobs_versions(
    command: str, enabled: bool, fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli([command, "welcome"], capsys)
    assert status == 0
    assert fake.calls[1] == ("set_job_enabled", ("welcome", enabled), {"version": None})
    assert out.splitlines()[0].split() == ["ID", "VERSION", "ENABLED", "LATEST"]
    assert out.splitlines()[2].split() == ["welcome", "0.9.0", "no", "no"]
    run_cli([command, "welcome", "--version", "1.0.0"], capsys)
    assert fake.calls[-1] == ("set_job_enabled", ("welcome", enabled), {"version": "1.0.0"})
    # An empty one (--version "$UNSET") is not taken for every version.
    calls = len(fake.calls)
    status, _, err = run_cli([command, "welcome", "--version", ""], capsys)
    assert status == 2 and "--version: expected a version, got ''" in err
    assert len(fake.calls) == calls


def test_list_filters_reach_the_client(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(["runs", "--job", "j", "--event", "e", "--status", "FAILURE", "--limit", "3"], capsys)
    assert fake.calls[1] == (
        "list_runs",
        (),
        {"job_id": "j", "event_id": "e", "status": "FAILURE", "page_size": 3, "page_token": None},
    )
    run_cli(["invoke", "j", "--idempotency-key", "k"], capsys)
    assert fake.calls[-1] == ("invoke_job", ("j", None), {"context": None, "idempotency_key": "k"})


def test_server_errors_exit_1(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail = NotFound("no run r9")
    status, out, err = run_cli(["run", "r9"], capsys)
    assert (status, out) == (1, "")
    assert err == "error: NOT_FOUND: no run r9\n"


def test_ctrl_c_during_a_call_exits_130_without_a_traceback(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    # A server that accepts the connection and never answers: the user gives up.
    fake.fail = KeyboardInterrupt()
    status, out, err = run_cli(["events"], capsys)
    assert (status, out, err) == (130, "", "")


def test_a_reader_gone_early_ends_the_output_quietly() -> None:
    # `tripwire events | head -1`: the pipe closes before the output is written.
    read, write = os.pipe()
    os.close(read)
    code = "import sys; from tripwire.client.cli import _print; sys.exit(_print('x' * 200_000))"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], stdout=write, stderr=subprocess.PIPE, timeout=30
        )
    finally:
        os.close(write)
    assert done.returncode == 141  # as a program stopped by SIGPIPE
    assert done.stderr == b""


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ("COMPLETED", '{"ok":1}'),  # a later try completed: the old error is history
        ("WAITING", "retrying after RuntimeError: boom"),
        ("RUNNING", "retrying after RuntimeError: boom"),
        ("ERRORED", "RuntimeError: boom"),
    ],
)
def test_a_task_shows_its_outcome_not_an_earlier_tries_error(status: str, shown: str) -> None:
    task = dataclasses.replace(
        TASK, status=status, attempts=1, error=ErrorInfo("RuntimeError", "boom")
    )
    row = render.tasks_table([task]).splitlines()[1]
    assert row.rstrip().endswith(shown)


def test_the_tasks_table_counts_failed_tries_under_a_header_saying_so() -> None:
    # `attempts` counts failed executions: a task that ran once and completed has 0,
    # which a column named ATTEMPTS showed as if it had never run.
    header, row = render.tasks_table([dataclasses.replace(TASK, attempts=0)]).splitlines()
    assert header.split()[:5] == ["#", "KEY", "KIND", "STATUS", "FAILED"]
    assert row.split()[4] == "0"


def test_an_executing_run_names_the_worker_holding_it() -> None:
    held = render.run_block(_run("EXECUTING", output=None, worker_id="host-7-4242"))
    assert "worker        host-7-4242" in held.splitlines()
    assert "worker" not in render.run_block(_run())


def test_a_match_reason_too_long_for_its_cell_is_given_in_full_below() -> None:
    reason = (
        "filter: payload.plan is " + '"free", not one of ' + ", ".join(f'"p{i}"' for i in range(30))
    )
    out = render.matches_table(
        [JobMatch("billing", "2.0.0", False, reason, ()), JobMatch("ok", "1.0.0", True, "")]
    )
    first, *rest = out.split("\n\n")
    assert reason not in first and "…" in first  # the table keeps its shape
    assert rest == [f"billing 2.0.0: {reason}"]


def test_an_empty_url_is_a_usage_error(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["--url", " ", "events"], capsys) == (
        2,
        "",
        "error: --url: is empty (TRIPWIRE_URL too?)\n",
    )
    assert fake.calls == []


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--url", "http://"], "error: --url: names no server: give host:port, e.g. "),
        (["--api-key", "k\u00e9y"], "error: --api-key: must be printable ASCII"),
    ],
)
def test_settings_the_client_refuses_name_their_option(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli([*argv, "events"], capsys)
    assert (status, out) == (2, "")
    assert err.startswith(said), err


def test_a_listing_with_more_says_how_to_get_the_next_page(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(["runs", "--page-token", "t1"], capsys)
    assert status == 0 and out.rstrip().endswith("more: add --page-token next")
    assert fake.calls[-1][2]["page_token"] == "t1"
    # With --json, stdout stays the list; the hint goes to stderr.
    status, out, err = run_cli(["--json", "runs"], capsys)
    assert [r["id"] for r in json.loads(out)] == ["r1"]
    assert err == "more: add --page-token next\n"
    assert fake.calls[-1][2]["page_token"] is None
    # The last page says nothing more.
    status, out, err = run_cli(["events", "--page-token", "x"], capsys)
    assert "more:" not in out + err and fake.calls[-1][2]["page_token"] == "x"


def test_events_as_json_leave_out_the_runs_a_list_does_not_carry(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(["--json", "events"], capsys)
    (event,) = json.loads(out)
    assert status == 0 and event["id"] == "e1" and "runs" not in event
    status, out, _ = run_cli(["--json", "event", "e1"], capsys)
    assert status == 0 and [r["id"] for r in json.loads(out)["runs"]] == ["r1"]
