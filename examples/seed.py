"""The seed page's two jobs, in Python.

Run a worker for them (with the server running, `make run`):

    .venv/bin/tripwire worker examples.seed:client

job-1 fires every day at 09:00 UTC (or now, with InvokeJob) and sends a
`new.user` event from inside the run; job-2 runs for each `new.user` event
whose payload fits the NewUser schema and logs it.
"""

from __future__ import annotations

import os

from pydantic import BaseModel
from tripwire.client import IO, Client, RunContext, cron_trigger, event_trigger

client = Client("my-app", url=os.environ.get("TRIPWIRE_URL", "localhost:50051"))


class NewUser(BaseModel):
    userId: str  # the event's JSON field name


@client.define_job(
    id="job-1", name="First job", version="0.0.1", trigger=cron_trigger(cron="0 9 * * *")
)
async def first_job(payload: dict[str, object], io: IO, ctx: RunContext) -> None:
    # Executed by the server together with the task record: sent exactly once,
    # however often this run is retried or resumed.
    await io.send_event("send-event", {"name": "new.user", "payload": {"userId": "u_1234567890"}})


@client.define_job(
    id="job-2",
    name="Second job",
    version="0.0.1",
    trigger=event_trigger(name="new.user", schema=NewUser),
)
async def second_job(payload: NewUser, io: IO, ctx: RunContext) -> None:
    await io.logger.log("New user created", {"userId": payload.userId})


if __name__ == "__main__":
    client.listen()
