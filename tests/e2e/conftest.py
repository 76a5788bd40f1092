"""The e2e tier: the real server as a subprocess, driven over 127.0.0.1.

`server` starts one server per test on a SQLite file in tmp_path; `start_server`
starts more (a restart on the same file, a server with API keys). Every process
is started in its own process group and killed with it when the test ends.
Helpers reach tests as fixtures (`run`, `grpcurl`) so no test imports this file.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent
GRPCURL = BIN / "grpcurl"
REPO = Path(__file__).resolve().parents[2]

START_DEADLINE = 20.0
STOP_DEADLINE = 20.0
COMMAND_TIMEOUT = 30.0
_ADDRESS_LINE = re.compile(r"^tripwire listening on (\S+:\d+)$")

T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without TRIPWIRE_* variables, so a developer's shell
    settings cannot leak into a test, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    address: str
    db: Path
    proc: subprocess.Popen[str]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill9(self) -> None:
        """SIGKILL the whole process group, as a crash or an OOM kill would."""
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=STOP_DEADLINE)

    def terminate(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM or SIGINT) and wait for a graceful exit; the exit code."""
        _signal_group(self.proc, sig)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill9()
            pytest.fail(f"server ignored {sig.name} for {STOP_DEADLINE}s:\n{self.stderr()}")


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    # Keeps reading stdout so the server can never block on a full pipe.
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _wait_serving(address: str, deadline: float) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        updates = stub.Watch(
            health_pb2.HealthCheckRequest(service=""),
            timeout=max(0.1, deadline - time.monotonic()),
            wait_for_ready=True,
        )
        for update in updates:
            if update.status == health_pb2.HealthCheckResponse.SERVING:
                updates.cancel()
                return
        raise AssertionError(f"health watch of {address} ended before SERVING")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """A factory: `start_server(db=None, args=(), command=None)` starts a server
    (default: `python -m tripwire.server`) on 127.0.0.1:0 and waits until its
    health is SERVING. Every process it started is killed at teardown."""
    started: list[ServerProcess] = []

    def start(
        db: Path | None = None,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,
    ) -> ServerProcess:
        n = len(started)
        db = db if db is not None else tmp_path / "tripwire.db"
        stderr_path = tmp_path / f"server-{n}.stderr"
        argv = [
            *(command or [sys.executable, "-m", "tripwire.server"]),
            "--address",
            "127.0.0.1:0",
            "--db",
            str(db),
            *args,
        ]
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=tmp_path,
                env=clean_env(),
                start_new_session=True,
            )
        lines: queue.Queue[str | None] = queue.Queue()
        server = ServerProcess("", db, proc, stderr_path)
        started.append(server)
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()

        deadline = time.monotonic() + START_DEADLINE
        try:
            line = lines.get(timeout=START_DEADLINE)
        except queue.Empty:
            pytest.fail(f"no address line within {START_DEADLINE}s:\n{server.stderr()}")
        if line is None:
            proc.wait(timeout=STOP_DEADLINE)
            pytest.fail(
                f"server exited with {proc.returncode} before listening:\n{server.stderr()}"
            )
        match = _ADDRESS_LINE.match(line)
        if not match:
            pytest.fail(f"unexpected first stdout line {line!r}:\n{server.stderr()}")
        server.address = match.group(1)
        try:
            _wait_serving(server.address, deadline)
        except grpc.RpcError as exc:
            pytest.fail(f"health of {server.address} never SERVING ({exc}):\n{server.stderr()}")
        return server

    yield start

    for server in started:
        _signal_group(server.proc, signal.SIGKILL)
        try:
            server.proc.wait(timeout=STOP_DEADLINE)
        finally:
            if server.proc.stdout is not None:
                server.proc.stdout.close()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


def run_command(
    argv: Sequence[str | Path],
    *,
    timeout: float = COMMAND_TIMEOUT,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a deadline, capturing its output as text. `env` is
    added to the cleaned environment."""
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(**(env or {})),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


class Grpcurl:
    """`grpcurl -plaintext [-H h]... [-d json] ADDRESS [verb...] [method]`."""

    def __call__(
        self,
        address: str,
        method: str | None = None,
        data: Any = None,
        *,
        headers: Sequence[str] = (),
        verb: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        argv: list[str | Path] = [GRPCURL, "-plaintext", "-max-time", "20"]
        for header in headers:
            argv += ["-H", header]
        if data is not None:
            argv += ["-d", data if isinstance(data, str) else json.dumps(data)]
        argv += [address, *verb]
        if method is not None:
            argv.append(method)
        return run_command(argv)

    def json(self, address: str, method: str, data: Any = None, **kw: Any) -> Any:
        """The decoded reply of a call that must succeed."""
        result = self(address, method, data, **kw)
        assert result.returncode == 0, f"grpcurl {method} failed:\n{result.stderr}"
        return json.loads(result.stdout)


@pytest.fixture
def run() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_command


@pytest.fixture
def grpcurl() -> Grpcurl:
    return Grpcurl()


@pytest.fixture
def poll() -> Callable[..., Awaitable[Any]]:
    return poll_until


async def poll_until(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll with a deadline: call `fetch` every `interval` seconds until `done`
    holds for its result; fail with the last result after `within` seconds."""
    loop = asyncio.get_running_loop()
    last: T | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await fetch()
                if done(last):
                    return last
                tick: asyncio.Future[None] = loop.create_future()
                handle = loop.call_later(interval, tick.set_result, None)
                try:
                    await tick
                finally:
                    handle.cancel()
    except TimeoutError:
        pytest.fail(f"{what} not reached within {within}s; last: {last}")
