"""Python worker processes for the e2e tests: `tripwire worker MODULE:ATTR` (or any
command) in its own process group, with stdout and stderr in a file under tmp_path.

`Workers.close()` SIGKILLs every group it started (a stopped process too: SIGKILL
needs no SIGCONT); test modules call it from a fixture's teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

TRIPWIRE = Path(sys.executable).parent / "tripwire"
REPO = Path(__file__).resolve().parents[2]
STOP_DEADLINE = 20.0


def worker_env(address: str, **extra: str) -> dict[str, str]:
    """This environment without TRIPWIRE_* variables (a developer's shell must not
    leak in), with TRIPWIRE_URL = `address` and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env.update(PYTHONUNBUFFERED="1", TRIPWIRE_URL=address, **extra)
    return env


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the worker's whole process group."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill9(self) -> None:
        """SIGKILL the process group, as a crash or an OOM kill would, and reap it."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_DEADLINE)

    def freeze(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing is read or sent."""
        self.signal(signal.SIGSTOP)

    def terminate(self) -> int:
        """SIGTERM (the worker drains) and wait; its exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill9()
            pytest.fail(f"worker ignored SIGTERM for {STOP_DEADLINE}s:\n{self.output()}")


class Workers:
    """Starts worker processes in tmp_path's log files; `close` kills them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[WorkerProcess] = []

    def start(
        self,
        address: str,
        target: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """`tripwire worker TARGET` (or `argv`) from the repository root, with
        TRIPWIRE_URL = `address` and `env` added."""
        if argv is None:
            assert target is not None, "give a MODULE:ATTR target or an argv"
            argv = [str(TRIPWIRE), "worker", target]
        log_path = self.tmp_path / f"worker-{len(self.started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=worker_env(address, **(env or {})),
                start_new_session=True,
            )
        worker = WorkerProcess(proc, log_path)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.signal(signal.SIGKILL)
        for worker in self.started:
            worker.proc.wait(timeout=STOP_DEADLINE)

    def outputs(self) -> str:
        """Every worker's output, for failure messages."""
        return "\n".join(
            f"--- worker {i} (pid {w.pid}) ---\n{w.output()}" for i, w in enumerate(self.started)
        )
