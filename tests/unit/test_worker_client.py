"""The worker's entry points: Client.define_job, listen (with signals) and `tripwire worker`."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from tripwire.client import Client, JobDefinition, JobDefinitionError, cli, invoke_trigger
from tripwire.client.worker import listen

from .test_worker_fakes import FakeServer, FakeStream, Request


async def handler(payload: Any, io: Any, ctx: Any) -> None:
    return None


def test_define_job_adds_checked_jobs_to_the_client() -> None:
    client = Client("app")
    job = client.define_job(id="job-1", name="First", version="0.0.1", trigger=invoke_trigger())(
        handler
    )
    assert isinstance(job, JobDefinition) and job.name == "First"
    assert list(client.jobs) == [job]
    with pytest.raises(JobDefinitionError, match="already defined"):
        client.define_job(id="job-1", version="0.0.2", trigger=invoke_trigger())
    with pytest.raises(JobDefinitionError, match="semantic version"):
        client.define_job(id="job-2", version="latest", trigger=invoke_trigger())(handler)
    assert len(client.jobs) == 1


def test_listen_serves_until_sigterm_then_drains(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tripwire")
    root_handlers = list(logging.getLogger().handlers)
    client = Client("app", url="tw.example:50051")
    client.define_job(id="job-1", version="1.0.0", trigger=invoke_trigger())(handler)

    class SignallingServer(FakeServer):
        """Welcomes the worker, then sends this process SIGTERM."""

        def __call__(self, requests: AsyncIterator[Request]) -> FakeStream:
            stream = super().__call__(requests)
            stream.welcome()
            asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
            return stream

    server = SignallingServer()
    listen(client, connect=server, shutdown_timeout=1.0)  # returns: SIGTERM drained it
    assert len(server.opened) == 1
    stream = server.opened[0]
    assert stream.half_closed.is_set()
    assert stream.log[0].HasField("hello")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    # Said at INFO through the `tripwire` logger, once each; logging itself is left
    # to the application (only `tripwire worker` sets it up).
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    connected = [m for m in said if m.startswith("connected to")]
    assert len(connected) == 1
    assert re.fullmatch(
        rf"connected to tw\.example:50051 as {re.escape(stream.log[0].hello.worker_id)}, "
        r"serving job-1@1\.0\.0 \(session .*\)",
        connected[0],
    )
    assert "shutting down: finishing running runs (signal again to stop now)" in said
    assert len([m for m in said if m.startswith("draining: ")]) == 1
    assert all(r.name.startswith("tripwire.") for r in caplog.records)
    assert logging.getLogger().handlers == root_handlers


def test_the_worker_command_loads_the_client_and_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    app = SimpleNamespace(listen=lambda: seen.append("listen"))

    def import_module(name: str) -> Any:
        seen.append(name)
        return SimpleNamespace(client=app, other=app)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    assert cli.main(["worker", "myapp.jobs:other"]) == 0
    assert cli.main(["worker", "myapp.jobs"]) == 0  # the attribute defaults to `client`
    assert seen == ["myapp.jobs", "listen", "myapp.jobs", "listen"]


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


CONNECTED = "connected to h:1 as w1, serving job-1@1.0.0"


def logs_as_a_module_would(seen: list[str], set_up_root_later: bool) -> Any:
    """A Client whose listen logs as the SDK does, and as a module's own code does
    meanwhile (its own logger; a warning, which sets the root up if nothing has)."""

    def listen() -> None:
        seen.append("listen")
        logging.getLogger("tripwire.worker").info(CONNECTED)
        logging.getLogger("app").info("the module's own line")
        if set_up_root_later:
            logging.warning("later, at run time")
        logging.getLogger("tripwire.worker").info("draining")

    return SimpleNamespace(listen=listen)


@pytest.mark.parametrize(
    "setup",
    ["none", "root handler", "sdk handler", "sdk level", "child handler", "no propagate",
     "app logger", "disabled"],
)  # fmt: skip
def test_the_worker_command_shows_the_sdks_lines_as_the_module_set_logging_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], setup: str
) -> None:
    """Without it the SDK's INFO lines (connected, draining) would go nowhere. They go
    to stderr when the module set nothing up, once each whatever the module sets up
    later; through the module's handlers when it did (even by accident: logging.info()
    before any setup makes a root handler at WARNING, and dictConfig disables the
    SDK's loggers); as the module says when it set the SDK's loggers up itself. The
    module's own logging is as it would be without the command, and the command
    leaves the loggers as it found them."""
    seen: list[str] = []
    later = setup in ("none", "app logger")
    monkeypatch.setattr(
        cli.importlib,
        "import_module",
        lambda name: SimpleNamespace(client=logs_as_a_module_would(seen, later)),
    )
    root, sdk = logging.getLogger(), logging.getLogger("tripwire")
    child, app = logging.getLogger("tripwire.worker"), logging.getLogger("app")
    kept = _Kept()
    # pytest's own handlers, and the loggers' settings, are put back after.
    monkeypatch.setattr(root, "handlers", [kept] if setup in ("root handler", "disabled") else [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    monkeypatch.setattr(sdk, "handlers", [kept] if setup == "sdk handler" else [])
    monkeypatch.setattr(sdk, "level", logging.INFO if setup == "sdk handler" else logging.NOTSET)
    if setup == "sdk level":
        sdk.level = logging.WARNING
    monkeypatch.setattr(sdk, "propagate", setup != "no propagate")
    monkeypatch.setattr(child, "handlers", [kept] if setup == "child handler" else [])
    monkeypatch.setattr(
        child, "level", logging.INFO if setup == "child handler" else logging.NOTSET
    )
    monkeypatch.setattr(child, "disabled", setup == "disabled")
    app_lines = _Kept()
    monkeypatch.setattr(app, "handlers", [app_lines] if setup == "app logger" else [])
    monkeypatch.setattr(app, "level", logging.INFO if setup == "app logger" else logging.NOTSET)
    before = (sdk.level, sdk.propagate, list(sdk.handlers))
    assert cli.main(["worker", "myapp.jobs"]) == 0
    err = capsys.readouterr().err
    if later:  # once each: ours, until the module's warning sets the root up; then there
        line = r"\d\d:\d\d:\d\d INFO tripwire\.worker: "
        expected = (
            rf"{line}{re.escape(CONNECTED)}\nWARNING:root:later, at run time\n"
            r"INFO:tripwire\.worker:draining\n"
        )
        assert re.fullmatch(expected, err), err
    else:
        assert err == ""
    shown = setup in ("root handler", "sdk handler", "child handler", "disabled")
    assert kept.lines == ([CONNECTED, "draining"] if shown else [])
    assert app_lines.lines == (["the module's own line"] if setup == "app logger" else [])
    assert root.level == logging.WARNING
    assert (sdk.level, sdk.propagate, list(sdk.handlers)) == before
    assert seen == ["listen"]


def test_the_sdks_lines_go_to_a_root_handler_the_module_sets_up_at_run_time(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Until then on stderr; from then on where the module's logging goes (a file, an
    error tracker), as without the command; afterwards the loggers as they were."""
    kept = _Kept()

    def listen() -> None:
        logging.getLogger("tripwire.worker").info(CONNECTED)
        logging.getLogger().addHandler(kept)  # the module's own setup, at run time
        logging.getLogger().addFilter(lambda record: record.name == "root")  # as propagation,
        logging.getLogger("tripwire.worker").warning("draining")  # the root's filters pass
        logging.getLogger("tripwire").propagate = True  # the module's say: propagation
        logging.getLogger("tripwire.worker").warning("stopped")  # hands it there, once

    monkeypatch.setattr(
        cli.importlib,
        "import_module",
        lambda name: SimpleNamespace(client=SimpleNamespace(listen=listen)),
    )
    root, sdk = logging.getLogger(), logging.getLogger("tripwire")
    monkeypatch.setattr(root, "handlers", [])  # pytest's own are put back after
    monkeypatch.setattr(root, "filters", [])
    monkeypatch.setattr(sdk, "handlers", [])
    monkeypatch.setattr(sdk, "level", logging.NOTSET)
    monkeypatch.setattr(sdk, "propagate", True)
    assert cli.main(["worker", "myapp.jobs"]) == 0
    err = capsys.readouterr().err
    assert re.fullmatch(rf"\d\d:\d\d:\d\d INFO tripwire\.worker: {re.escape(CONNECTED)}\n", err)
    assert kept.lines == ["draining", "stopped"]
    assert (sdk.level, sdk.propagate, sdk.handlers) == (logging.NOTSET, True, [])


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "--url", "h:1", "myapp.jobs"],
        ["--url", "h:1", "worker", "myapp.jobs"],
        ["worker", "myapp.jobs", "--api-key=k"],
        ["--api-key", "k", "worker", "myapp.jobs"],
        ["worker", "--json", "myapp.jobs"],
        ["--json", "worker", "myapp.jobs"],
    ],
)
def test_the_worker_command_refuses_the_options_of_the_commands_own_client(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded: list[str] = []
    monkeypatch.setattr(cli.importlib, "import_module", loaded.append)
    assert cli.main(argv) == 2
    option = next(a for a in argv if a.startswith("--")).partition("=")[0]
    assert capsys.readouterr().err == (
        f"error: {option}: `tripwire worker` takes its URL and API key from the Client in "
        "its module (Client(name, url=..., api_key=...)), and has no --url, --api-key or "
        "--json\n"
    )
    assert loaded == []  # refused before anything is loaded


def test_the_worker_commands_help_says_what_it_takes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["worker", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "usage: tripwire worker [-h] MODULE[:ATTR]" in out
    assert "(ATTR defaults to client)" in out
    assert "--url" not in out.split("options:")[1]  # not listed as one it takes
    assert "--api-key" not in out.split("options:")[1]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_for_tripwire:client", "cannot load"),
        ("os:nothing_here", "cannot load"),
        ("os:sep", "is not a tripwire Client"),
    ],
)
def test_the_worker_command_explains_a_bad_target(
    target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["worker", target]) == 2  # bad usage
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message if message == 'cannot load' else target}")
    assert message in err
