"""The Python client across a server restart: `wait_for_run` keeps waiting when the
server it watches shuts down (its WatchRun ends UNAVAILABLE) and comes back."""

from __future__ import annotations

import asyncio

import pytest
from tripwire.client import Client, _requests, invoke_trigger

pytestmark = pytest.mark.e2e

WITHIN = 30.0


async def test_wait_for_run_outlasts_a_server_restart(start_server, monkeypatch):
    watching = asyncio.Event()
    read = _requests.watch_update

    def seen(reply):
        watching.set()  # the waiter's watch is open and has the run's state
        return read(reply)

    monkeypatch.setattr(_requests, "watch_update", seen)
    first = start_server()
    client = Client("waiter", url=first.address)
    try:
        await client.aio.register_job("inv", version="1.0.0", trigger=invoke_trigger())
        run = await client.aio.invoke_job("inv")  # no worker: it stays QUEUED
        waiting = asyncio.create_task(client.aio.wait_for_run(run.id, timeout=WITHIN))
        await asyncio.wait_for(watching.wait(), WITHIN)
        assert first.terminate() == 0  # ends every WatchRun UNAVAILABLE

        second = start_server(db=first.db, args=("--address", first.address))
        assert second.address == first.address
        await client.aio.cancel_run(run.id)
        done = await asyncio.wait_for(waiting, WITHIN)
        assert done.status == "CANCELED"
    finally:
        await client.aio.close()
        client.close()
