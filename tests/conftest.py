"""Shared fixtures: a real grpc.aio server on 127.0.0.1:0 with a SQLite file in tmp_path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from tripwire.server.app import Server
from tripwire.server.config import Settings
from tripwire.v1 import (
    event_service_pb2_grpc,
    job_service_pb2_grpc,
    run_service_pb2_grpc,
    worker_service_pb2_grpc,
)

T = TypeVar("T")


class FakeClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.now = start_ms if start_ms is not None else time.time_ns() // 1_000_000
        self.server: Server | None = None

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)
        if self.server is not None:
            self.server.hub.timers()  # wake the timer loop to look at the new time


@dataclass
class Stubs:
    channel: grpc.aio.Channel
    events: event_service_pb2_grpc.EventServiceStub
    jobs: job_service_pb2_grpc.JobServiceStub
    runs: run_service_pb2_grpc.RunServiceStub
    workers: worker_service_pb2_grpc.WorkerServiceStub


def make_stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(
        channel=channel,
        events=event_service_pb2_grpc.EventServiceStub(channel),
        jobs=job_service_pb2_grpc.JobServiceStub(channel),
        runs=run_service_pb2_grpc.RunServiceStub(channel),
        workers=worker_service_pb2_grpc.WorkerServiceStub(channel),
    )


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start servers with settings overrides; all are stopped at the end."""
    started: list[Server] = []

    async def start(clock: Callable[[], int] | None = None, **overrides: Any) -> Server:
        settings = replace(
            Settings(address="127.0.0.1:0", db_path=str(tmp_path / "tripwire.db")), **overrides
        )
        server = Server(settings, clock) if clock else Server(settings)
        if isinstance(clock, FakeClock):
            clock.server = server
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(grace=0.5)


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
async def stubs(server: Server) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield make_stubs(channel)


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, within: float = 10.0, every: float = 0.02
) -> T:
    """Poll `check` until it returns something truthy, failing after `within` seconds."""
    deadline = time.monotonic() + within
    never = asyncio.Event()
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        try:
            await asyncio.wait_for(never.wait(), every)
        except TimeoutError:
            pass
