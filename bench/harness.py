"""What the benchmarks share: servers as subprocesses on 127.0.0.1, a job to
match the events, counting what was stored, and the result line run_all reads.

Not a benchmark itself; `bench/send_event.py` and `bench/send_events.py` import it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import multiprocessing.pool
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tripwire.v1 import (
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)

BENCH = Path(__file__).resolve().parent
START_DEADLINE = 30.0
STOP_DEADLINE = 20.0
RPC_TIMEOUT = 30.0
RESULT_PREFIX = "RESULT "
_ADDRESS_LINE = re.compile(r"listening on (\S+:\d+)$")


class Server:
    """A server subprocess in its own process group; `with` kills it on exit."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, health: bool) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.stderr"
        self.health = health
        self.address = ""
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill9()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                start_new_session=True,
            )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(self.proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + START_DEADLINE
        try:
            line = lines.get(timeout=START_DEADLINE)
        except queue.Empty:
            line = None
        match = _ADDRESS_LINE.search(line or "")
        if match is None:
            self.kill9()
            raise RuntimeError(
                f"{self.name} did not print its address (got {line!r}):\n"
                + self.log_path.read_text(errors="replace")[-4000:]
            )
        self.address = match.group(1)
        with grpc.insecure_channel(self.address) as channel:
            if self.health:
                updates = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=max(0.1, deadline - time.monotonic()),
                    wait_for_ready=True,
                )
                for update in updates:
                    if update.status == health_pb2.HealthCheckResponse.SERVING:
                        updates.cancel()
                        break
            else:
                grpc.channel_ready_future(channel).result(timeout=deadline - time.monotonic())

    def kill9(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            stop_group(self.proc, sig)
            self.proc = None


def stop_group(
    proc: subprocess.Popen[str], first: signal.Signals, grace: float = STOP_DEADLINE
) -> None:
    """Send `first` to the process group, SIGKILL the group if the leader lingers past
    `grace` (and in any case, for children that outlive it), then close its pipes."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, first)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STOP_DEADLINE)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def tripwire_server(db: Path, log_dir: Path, event_loop: str = "uvloop") -> Server:
    argv = [sys.executable, "-m", "tripwire.server", "--address", "127.0.0.1:0", "--db", str(db)]
    return Server("tripwire", [*argv, "--event-loop", event_loop], log_dir, health=True)


def echo_server(log_dir: Path, event_loop: str = "uvloop") -> Server:
    argv = [sys.executable, str(BENCH / "echo_server.py"), "--address", "127.0.0.1:0"]
    return Server("echo", [*argv, "--event-loop", event_loop], log_dir, health=False)


def register_job(address: str, job_id: str, event_names: Iterable[str]) -> None:
    """An event-triggered job, so that every event creates one run."""
    job = job_pb2.Job(
        id=job_id,
        version="1.0.0",
        trigger=job_pb2.Trigger(event=job_pb2.EventTrigger(names=list(event_names))),
    )
    with grpc.insecure_channel(address) as channel:
        job_service_pb2_grpc.JobServiceStub(channel).RegisterJob(
            job_service_pb2.RegisterJobRequest(job=job), timeout=RPC_TIMEOUT
        )


def stored_ids(address: str, name: str) -> set[str]:
    """The ids of the stored events named `name`, by paging ListEvents to the end."""
    ids: set[str] = set()
    token = ""
    with grpc.insecure_channel(address) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        while True:
            page = stub.ListEvents(
                event_service_pb2.ListEventsRequest(name=name, page_size=1000, page_token=token),
                timeout=RPC_TIMEOUT,
            )
            ids.update(e.id for e in page.events)
            token = page.next_page_token
            if not token:
                return ids


def missing_ids(acked: Iterable[str], stored: set[str]) -> list[str]:
    """The acknowledged events that are not stored."""
    return [event_id for event_id in acked if event_id not in stored]


def missing(acked: Iterable[str], stored: set[str]) -> list[str]:
    """The failure, if any acknowledged event is not stored."""
    lost = missing_ids(acked, stored)
    if not lost:
        return []
    return [f"{len(lost)} acknowledged events not stored, e.g. {', '.join(lost[:5])}"]


def check_sample(address: str, event_ids: Iterable[str], job_id: str) -> list[str]:
    """Problems found looking the ids up: each must be a delivered event with
    exactly one run, of `job_id`."""
    problems = []
    with grpc.insecure_channel(address) as channel:
        stub = event_service_pb2_grpc.EventServiceStub(channel)
        for event_id in event_ids:
            try:
                got = stub.GetEvent(
                    event_service_pb2.GetEventRequest(id=event_id), timeout=RPC_TIMEOUT
                )
            except grpc.RpcError as exc:
                problems.append(f"GetEvent {event_id}: {exc.code().name} {exc.details()}")
                continue
            if got.event.status != event_pb2.EVENT_STATUS_DELIVERED:
                problems.append(f"{event_id}: status {got.event.status}")
            if [r.job_id for r in got.runs] != [job_id]:
                problems.append(f"{event_id}: runs {[r.job_id for r in got.runs]}")
    return problems


def load_process() -> concurrent.futures.ProcessPoolExecutor:
    """A fresh process for a load generator, so it shares no GIL with the
    bench's bookkeeping (the servers are subprocesses already)."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    )


@contextlib.contextmanager
def terminating_load_process() -> Iterator[multiprocessing.pool.Pool]:
    """A fresh process for the load, as load_process, except that leaving the
    block (a SIGTERM included) terminates it at once instead of waiting for the load."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc), or NaN."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `with Server` kills its process."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def emit(result: dict[str, Any]) -> None:
    """The one machine-readable line bench/run_all.py looks for."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)
