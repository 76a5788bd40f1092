"""The worker protocol without the Python SDK: examples/node-worker, a plain
Node.js worker built on @grpc/grpc-js and the .proto files, runs a job end to end
(run request, a cached task it executes, a log line, the run result)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from tripwire.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    job_pb2,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WORKER_DIR = REPO / "examples" / "node-worker"
NPM_TIMEOUT = 300.0
READY_DEADLINE = 20.0
RUN_DEADLINE = 30.0
STOP_DEADLINE = 20.0
RPC_TIMEOUT = 20.0
UNFINISHED = {run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_EXECUTING, run_pb2.RUN_STATUS_WAITING}


def _env() -> dict[str, str]:
    # No TRIPWIRE_URL / TRIPWIRE_API_KEY from a developer's shell.
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}


def _installed() -> bool:
    """node_modules holds exactly what package-lock.json pins (npm's hidden
    lockfile, node_modules/.package-lock.json, records what was installed)."""
    try:
        lock = json.loads((WORKER_DIR / "package-lock.json").read_text())
        hidden = json.loads((WORKER_DIR / "node_modules" / ".package-lock.json").read_text())
        package = json.loads((WORKER_DIR / "package.json").read_text())
    except (OSError, ValueError):
        return False
    packages = {path: entry for path, entry in lock["packages"].items() if path}
    root = lock["packages"][""].get("dependencies")
    return bool(packages == hidden.get("packages") and root == package.get("dependencies"))


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the example's dependencies installed (`npm ci`,
    skipped when node_modules already matches the lockfile)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Node.js worker example needs `node` and `npm` on PATH")
    if not _installed():
        result = subprocess.run(
            [npm, "ci", "--prefix", str(WORKER_DIR), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            env=_env(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return node


@dataclass
class NodeWorker:
    proc: subprocess.Popen[str]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self) -> int:
        """SIGTERM the worker; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node worker ignored SIGTERM for {STOP_DEADLINE}s:\n{self.stderr()}")


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


@pytest.fixture
def node_worker(node: str, tmp_path: Path) -> Iterator[Callable[[str], NodeWorker]]:
    """`node_worker(address)` starts `node worker.js ADDRESS` and returns once it
    printed `ready` (it has its welcome). Killed at teardown; its stderr is
    printed there, so a failing test shows it."""
    started: list[tuple[NodeWorker, threading.Thread]] = []

    def start(address: str) -> NodeWorker:
        stderr_path = tmp_path / f"node-worker-{len(started)}.stderr"
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(
                [node, str(WORKER_DIR / "worker.js"), address],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=tmp_path,
                env=_env(),
                start_new_session=True,
            )
        worker = NodeWorker(proc, stderr_path)
        lines: queue.Queue[str | None] = queue.Queue()
        pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        pump.start()
        started.append((worker, pump))
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=READY_DEADLINE)
            except queue.Empty:
                pytest.fail(f"no `ready` within {READY_DEADLINE}s: {seen}\n{worker.stderr()}")
            if line is None:
                proc.wait(timeout=STOP_DEADLINE)
                pytest.fail(f"the node worker exited with {proc.returncode}:\n{worker.stderr()}")
            if line == "ready":
                return worker
            seen.append(line)

    yield start

    for worker, pump in started:
        if worker.proc.poll() is None:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=STOP_DEADLINE)
        pump.join(timeout=STOP_DEADLINE)
        if worker.proc.stdout is not None:
            worker.proc.stdout.close()
        print(f"node worker stderr:\n{worker.stderr()}")


async def test_node_worker_runs_a_job(server, node_worker, poll):
    worker = node_worker(server.address)
    payload = struct_pb2.Value()
    payload.struct_value.update({"n": 21})

    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await event_service_pb2_grpc.EventServiceStub(channel).SendEvent(
            event_service_pb2.SendEventRequest(
                event=event_pb2.EventInput(name="node.ping", id="ping-1", payload=payload)
            ),
            timeout=RPC_TIMEOUT,
        )
        assert [(r.job_id, r.job_version) for r in reply.event.runs] == [("node-job", "1.0.0")]
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        request = run_service_pb2.GetRunRequest(id=reply.event.runs[0].id)
        got = await poll(
            lambda: runs.GetRun(request, timeout=RPC_TIMEOUT),
            lambda got: got.run.status not in UNFINISHED,
            within=RUN_DEADLINE,
            what="a finished run",
        )

    assert run_pb2.RunStatus.Name(got.run.status) == "RUN_STATUS_SUCCESS", got
    assert json_format.MessageToDict(got.run.output) == {"doubled": 42}
    assert got.run.attempt == 1
    assert [(t.key, t.kind, t.status, json_format.MessageToDict(t.output)) for t in got.tasks] == [
        ("double", run_pb2.TASK_KIND_RUN, run_pb2.TASK_STATUS_COMPLETED, 42)
    ]
    assert [(log.seq, log.level, log.message) for log in got.logs] == [
        (1, job_pb2.LOG_LEVEL_INFO, "doubled")
    ]
    assert worker.terminate() == 0, worker.stderr()
