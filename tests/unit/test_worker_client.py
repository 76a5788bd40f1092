"""The worker's entry points: Client.define_job, listen (with signals) and `tripwire worker`."""

from __future__ import annotations

import asyncio
import os
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


def test_listen_serves_until_sigterm_then_drains() -> None:
    client = Client("app")
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
