"""The Python client across a server restart: `wait_for_run` keeps waiting when the
server it watches shuts down (its WatchRun ends UNAVAILABLE) and comes back."""

from __future__ import annotations

import asyncio

import pytest
from tripwire.client import Client, _channel, _requests, invoke_trigger
from tripwire.client.errors import DeadlineExceeded

pytestmark = pytest.mark.e2e

WITHIN = 30.0


@pytest.fixture
async def watching(monkeypatch):
    """Set once a waiter's watch is open and has the run's state (from any thread)."""
    seen_one = asyncio.Event()
    loop = asyncio.get_running_loop()
    read = _requests.watch_update

    def seen(reply):
        loop.call_soon_threadsafe(seen_one.set)
        return read(reply)

    monkeypatch.setattr(_requests, "watch_update", seen)
    return seen_one


async def test_wait_for_run_outlasts_a_server_restart(start_server, watching):
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


@pytest.mark.parametrize("flavour", ["async", "blocking"])
async def test_wait_for_run_ends_at_its_timeout_while_the_server_is_down(
    start_server, watching, flavour
):
    """Watching again after the deadline, gRPC answers a server it cannot reach
    UNAVAILABLE, not DEADLINE_EXCEEDED: the wait must still end at its timeout."""
    server = start_server()
    client = Client("waiter", url=server.address)
    try:
        await client.aio.register_job("inv", version="1.0.0", trigger=invoke_trigger())
        run = await client.aio.invoke_job("inv")  # no worker: it stays QUEUED
        if flavour == "async":
            waiting = asyncio.ensure_future(client.aio.wait_for_run(run.id, timeout=3))
        else:
            waiting = asyncio.ensure_future(
                asyncio.to_thread(client.wait_for_run, run.id, timeout=3)
            )
        await asyncio.wait_for(watching.wait(), WITHIN)
        server.kill9()  # and it never comes back
        with pytest.raises(DeadlineExceeded, match=f"run {run.id} is still QUEUED after 3 s"):
            await asyncio.wait_for(waiting, WITHIN)
    finally:
        await client.aio.close()
        client.close()


def test_client_channels_cap_grpcs_reconnect_backoff():
    """gRPC's own backoff grows to two minutes: a client that lived through a long
    outage would fail every call for that long after the server came back."""
    cap_ms = int(_channel.RECONNECT_CAP * 1000)
    settings = _channel.Settings(name="n", url="localhost:1", api_key=None, timeout=None)
    for opened in (_channel.open_sync, _channel.open_async):
        captured = {}

        def keep(target, options, *args, captured=captured):
            captured.update(options)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("grpc.insecure_channel", keep)
            patch.setattr("grpc.aio.insecure_channel", keep)
            opened(settings)
        assert captured["grpc.max_reconnect_backoff_ms"] == cap_ms <= 5000
