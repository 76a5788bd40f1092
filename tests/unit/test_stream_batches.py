"""Batching on the RunJob stream (protocol step 11), on both sides: the SDK's
requests and the server's replies go one at a time, or, once the other side
reads batches, what has piled up goes as one message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from tripwire.client import worker as sdk
from tripwire.server.api import worker as server
from tripwire.v1 import worker_service_pb2 as pb

from .test_worker_fakes import within


@dataclass
class Side:
    """One end of the stream: its queue, its sender and a message to send."""

    limit: int
    start: Callable[[bool], tuple[asyncio.Queue[Any], AsyncIterator[Any]]]
    message: Callable[[int, str], Any]  # a message carrying a number and some text
    number: Callable[[Any], int]


def sdk_side() -> Side:
    def start(batches: bool) -> tuple[asyncio.Queue[Any], AsyncIterator[Any]]:
        queue = sdk._Outbox()
        queue.batches = batches
        return queue, sdk._requests(queue)

    def message(n: int, text: str) -> pb.RunJobRequest:
        return pb.RunJobRequest(log=pb.RunLog(run_id="run_1", attempt=1, seq=n, message=text))

    return Side(sdk.BATCH_BYTES, start, message, lambda m: m.log.seq)


def server_side() -> Side:
    def start(batches: bool) -> tuple[asyncio.Queue[Any], AsyncIterator[Any]]:
        queue: asyncio.Queue[pb.RunJobResponse | None] = asyncio.Queue()
        return queue, server.outgoing(queue, batches)

    def message(n: int, text: str) -> pb.RunJobResponse:
        return pb.RunJobResponse(cancel=pb.CancelRunNotice(run_id="run_1", attempt=n, reason=text))

    return Side(server.BATCH_BYTES, start, message, lambda m: m.cancel.attempt)


@pytest.fixture(params=[sdk_side, server_side], ids=["sdk", "server"])
def side(request: pytest.FixtureRequest) -> Side:
    made: Side = request.param()
    return made


def unpacked(side: Side, sent: list[Any]) -> list[int]:
    """The numbers sent, in order, batches opened."""
    numbers = []
    for message in sent:
        inner = message.batch.messages if message.HasField("batch") else [message]
        numbers += [side.number(m) for m in inner]
    return numbers


async def take(messages: AsyncIterator[Any], count: int) -> list[Any]:
    return [await within(anext(messages)) for _ in range(count)]


async def test_unless_the_other_side_reads_batches_each_message_goes_alone(side: Side) -> None:
    queue, messages = side.start(False)
    for n in (1, 2, 3):
        queue.put_nowait(side.message(n, ""))
    sent = await take(messages, 3)
    assert not any(m.HasField("batch") for m in sent)
    assert unpacked(side, sent) == [1, 2, 3]


async def test_what_piled_up_goes_as_one_batch_in_order_and_a_lone_message_alone(
    side: Side,
) -> None:
    queue, messages = side.start(True)
    queue.put_nowait(side.message(1, ""))
    (alone,) = await take(messages, 1)
    assert not alone.HasField("batch")
    for n in (2, 3, 4):
        queue.put_nowait(side.message(n, ""))
    (batch,) = await take(messages, 1)
    assert batch.HasField("batch")
    assert unpacked(side, [batch]) == [2, 3, 4]


async def test_a_batch_stops_short_of_the_size_limit_and_the_rest_follows(side: Side) -> None:
    queue, messages = side.start(True)
    big = "x" * (side.limit // 3)
    for n in range(1, 6):
        queue.put_nowait(side.message(n, big))
    sent = await take(messages, 3)
    assert [len(m.batch.messages) for m in sent] == [2, 2, 0]  # the last one goes alone
    assert all(m.ByteSize() <= side.limit + 100 for m in sent)
    assert unpacked(side, sent) == [1, 2, 3, 4, 5]


async def test_the_end_of_the_stream_behind_a_pile_comes_after_it(side: Side) -> None:
    queue, messages = side.start(True)
    for n in (1, 2):
        queue.put_nowait(side.message(n, ""))
    queue.put_nowait(None)
    queue.put_nowait(side.message(3, ""))  # never sent: the stream ended before it
    sent = [message async for message in messages]
    assert unpacked(side, sent) == [1, 2]
