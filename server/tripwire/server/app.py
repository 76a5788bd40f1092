"""Assembles the server: store, domain services, gRPC servicers, background loops.

`Server.start()` returns the bound address; `Server.stop()` shuts down in
stages, within one grace period: health NOT_SERVING -> new calls refused
UNAVAILABLE -> workers drained -> in-flight calls given what is left of the
grace -> stop the loops -> close the store. A second request_stop() stops
the waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tripwire.v1 import (
    event_service_pb2,
    job_service_pb2,
    run_service_pb2,
    worker_service_pb2,
)

from . import retention, scheduler
from .api import convert, reflection, services
from .api.events import EventServicer
from .api.jobs import JobServicer
from .api.rpc import Authenticator
from .api.runs import RunServicer
from .api.worker import WorkerServicer
from .config import DEFAULT_ENVIRONMENT, Settings
from .dispatcher import Dispatcher
from .events import EventService, Limits
from .hub import Hub
from .jobs import JobService
from .matching import JobIndex
from .runs import RunService
from .store import SQLiteStore
from .work import WorkService

log = logging.getLogger(__name__)

SERVICES = (
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"],
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    run_service_pb2.DESCRIPTOR.services_by_name["RunService"],
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"],
)
SERVICE_NAMES = tuple(service.full_name for service in SERVICES)


SERVICE_FILES = (
    event_service_pb2.DESCRIPTOR,
    job_service_pb2.DESCRIPTOR,
    run_service_pb2.DESCRIPTOR,
    worker_service_pb2.DESCRIPTOR,
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Server:
    def __init__(self, settings: Settings, clock: Callable[[], int] = now_ms) -> None:
        self.settings = settings
        self.clock = clock
        self.address = ""
        self._stop = asyncio.Event()
        self._closed = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # a second stop request: wait for nothing more

    async def start(self) -> str:
        settings = self.settings
        self.hub = Hub(asyncio.get_running_loop())
        self.index = JobIndex()
        self.store = SQLiteStore(settings.db_path, self.index, self.hub)
        await self.store.open()
        limits = Limits(
            settings.max_payload_bytes,
            settings.max_name_length,
            settings.max_batch,
            convert.value_bytes,
        )
        self.events = EventService(self.store, self.index, limits, self.clock)
        self.jobs = JobService(self.store, self.index, limits, self.clock)
        self.runs = RunService(self.store, self.hub, self.clock)
        self.work = WorkService(self.store, self.index, self.jobs, limits, self.clock)
        self.dispatcher = Dispatcher(self.store, self.index, self.clock)
        self.hub.listener = self.dispatcher
        # What was executing when the last server stopped: its workers' streams broke
        # with it, so, as any broken stream's, their runs are queued again once a
        # lease has passed (they may still be running them: a function in a thread).
        # The first write: where a read-only or locked file shows.
        try:
            orphans = await self.store.orphans()
        except Exception as exc:  # whatever the backend raises: it cannot be written
            await self.store.close()
            raise OSError(f"cannot write to the database {settings.db_path!r}: {exc}") from exc

        self.auth = auth = Authenticator(settings.api_keys)
        self.grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.workers = WorkerServicer(self.work, self.dispatcher, auth, settings)
        for service, servicer in zip(
            SERVICES,
            (
                EventServicer(
                    self.events, auth, settings.max_payload_bytes, settings.max_batch_bytes
                ),
                JobServicer(self.jobs, auth, settings.max_payload_bytes),
                RunServicer(self.runs, auth),
                self.workers,
            ),
            strict=True,
        ):
            services.add(self.grpc, service, servicer, auth)
        self.health = services.Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable(
            [*SERVICE_NAMES, health.SERVICE_NAME],
            [*SERVICE_FILES, health_pb2.DESCRIPTOR],
            self.grpc,
        )

        host = settings.address.rpartition(":")[0]
        try:
            port = self.grpc.add_insecure_port(settings.address)
        except RuntimeError:  # grpcio >= 1.6x raises instead of returning 0
            port = 0
        if port == 0:
            await self.store.close()
            raise OSError(
                f"could not bind {settings.address} (in use, or not an address of this host)"
            )
        self.dispatcher.hold(orphans)
        self.workers.requeue_later([(run.id, run.attempt) for run in orphans], settings.lease)
        await self.grpc.start()
        self.address = f"{host}:{port}"
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

        grace_ms = int(settings.schedule_grace * 1000)
        self._supervise(
            "timers", scheduler.run_timers(self.store, self.hub, self.clock, grace_ms, self._stop)
        )
        if settings.retention_days:
            self._supervise(
                "retention",
                retention.run_retention(
                    self.store, self.clock, settings.retention_days, self._stop
                ),
            )
        if settings.api_keys:
            envs = ", ".join(sorted({repr(env) for env in settings.api_keys.values()}))
            keys = f"{len(settings.api_keys)} API keys, for environments {envs}"
        else:
            keys = f"no API keys: every call is in environment {DEFAULT_ENVIRONMENT!r}"
        log.info("tripwire listening on %s (db %s; %s)", self.address, settings.db_path, keys)
        return self.address

    def _supervise(self, name: str, loop: Coroutine[Any, Any, None]) -> None:
        """Run a background loop; if it dies, the server stops loudly."""
        task = asyncio.create_task(loop, name=f"tripwire-{name}")

        def done(task: asyncio.Task[None]) -> None:
            if task.cancelled() or self._stop.is_set():
                return
            self._failure = task.exception() or RuntimeError(f"loop {name!r} exited")
            log.critical("background loop %r died; stopping", name, exc_info=self._failure)
            self.request_stop()

        task.add_done_callback(done)
        self._loops.append(task)

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: stop in stages; asked again, stop without waiting."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self.stop())
        else:
            if not self._hurry.is_set():
                log.warning("asked again to stop: not waiting for runs or calls any more")
            self._hurry.set()
            self.store.wait_at_most(0)  # nor for a write lock another process holds

    async def stop(self, grace: float | None = None) -> None:
        if self._stop.is_set():
            await self._closed.wait()
            return
        self._stop.set()
        grace = self.settings.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace  # one grace period for every stage
        # Writes (the requeue of workers' runs, what is queued at close) wait no longer
        # for a write lock another process holds (a sqlite3 shell's open transaction).
        self.store.wait_at_most(grace)
        await self.health.enter_graceful_shutdown()
        # New calls are refused UNAVAILABLE (a client retries them later); calls
        # already in progress finish.
        self.auth.closing = True
        # Workers first: they finish or hand back their runs.
        await self.workers.drain(grace, self._hurry)
        self.hub.close_watches()  # a WatchRun would otherwise hold the stop for the grace
        left = 0.0 if self._hurry.is_set() else max(deadline - time.monotonic(), 0.0)
        stopped = asyncio.ensure_future(self.grpc.stop(left))
        hurried = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait([stopped, hurried], return_when=asyncio.FIRST_COMPLETED)
        if not stopped.done():
            await self.grpc.stop(0)  # asked again: cancel what is still running
            await stopped
        hurried.cancel()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.workers.close()
        await self.dispatcher.close()
        await self.store.close()
        self._closed.set()
        log.info("tripwire stopped")

    async def wait_closed(self) -> None:
        """Until the server has stopped; raises if it stopped because a loop died."""
        await self._closed.wait()
        if self._failure is not None:
            raise self._failure
