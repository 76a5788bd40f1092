"""A worker the crash tests run as a subprocess (`tripwire worker
tests.e2e.crash_worker:client`, with TRIPWIRE_URL set).

Job `three-steps` does three `io.run_task` steps and one `io.send_event`. Each
step appends a line to the file named by CRASH_SIDE_EFFECTS, a side effect outside
the process that a replay must not repeat. Between step 2 and step 3 the handler
waits until the file named by CRASH_GATE exists, so a test can kill, freeze or cut
off the worker at a known point.

Job `one-at-a-time` (concurrency limit 1) does one `io.run_task` step whose function
runs in a thread, which nothing can stop: it appends `enter` to the side-effect file,
waits for the gate, then appends `exit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tripwire.client import IO, Client, RunContext, invoke_trigger

JOB_ID = "three-steps"
LIMITED_JOB_ID = "one-at-a-time"
EVENT_NAME = "crash.step-sent"
GATE_POLL = 0.05

logging.basicConfig(
    level=logging.INFO,
    format=f"%(asctime)s pid {os.getpid()} %(levelname)s %(name)s: %(message)s",
)

client = Client("crash-tests", url=os.environ["TRIPWIRE_URL"])
SIDE_EFFECTS = Path(os.environ["CRASH_SIDE_EFFECTS"])
GATE = Path(os.environ["CRASH_GATE"])


def _step(n: int, ctx: RunContext) -> Callable[[], int]:
    def effect() -> int:
        with SIDE_EFFECTS.open("a") as out:
            out.write(f"step-{n} attempt={ctx.attempt} pid={os.getpid()}\n")
        return n

    return effect


async def _gate() -> None:
    never = asyncio.Event()
    while not await asyncio.to_thread(GATE.exists):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(never.wait(), GATE_POLL)


@client.define_job(id=JOB_ID, name="Three steps", version="1.0.0", trigger=invoke_trigger())
async def three_steps(payload: Any, io: IO, ctx: RunContext) -> dict[str, Any]:
    logging.info("run %s attempt %d started", ctx.run_id, ctx.attempt)
    one = await io.run_task("step-1", _step(1, ctx))
    sent = await io.send_event("announce", {"name": EVENT_NAME, "payload": {"run": ctx.run_id}})
    two = await io.run_task("step-2", _step(2, ctx))
    logging.info("run %s attempt %d at the gate", ctx.run_id, ctx.attempt)
    await _gate()
    three = await io.run_task("step-3", _step(3, ctx))
    return {"steps": [one, two, three], "event": sent.id}


def _held(ctx: RunContext) -> Callable[[], None]:
    def effect() -> None:
        at = f"run={ctx.run_id} attempt={ctx.attempt} pid={os.getpid()}"
        with SIDE_EFFECTS.open("a") as out:
            out.write(f"enter {at}\n")
        pause = threading.Event()
        while not GATE.exists():
            pause.wait(GATE_POLL)
        with SIDE_EFFECTS.open("a") as out:
            out.write(f"exit {at}\n")

    return effect


@client.define_job(
    id=LIMITED_JOB_ID,
    name="One at a time",
    version="1.0.0",
    trigger=invoke_trigger(),
    concurrency_limit=1,
)
async def one_at_a_time(payload: Any, io: IO, ctx: RunContext) -> None:
    await io.run_task("held", _held(ctx))
