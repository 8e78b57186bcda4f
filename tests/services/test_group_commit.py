"""The writers' batch gathering (D44): calls on their way join the batch; nothing waits for time to pass."""

from __future__ import annotations

import asyncio

from cival.services.group_commit import let_arrive


async def _arrive_after(queue: list[int], turns: int) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)
    queue.append(turns)


async def test_calls_arriving_while_the_queue_grows_join_the_batch() -> None:
    queue = [-1]
    # Each arrives one turn of the loop after the one before: the queue grows at every turn.
    arrivals = [asyncio.ensure_future(_arrive_after(queue, turns)) for turns in range(4)]
    await let_arrive(queue)
    assert queue == [-1, 0, 1, 2, 3]
    await asyncio.gather(*arrivals)


async def test_gathering_stops_once_a_turn_brings_nothing() -> None:
    queue = [0]
    late = asyncio.ensure_future(_arrive_after(queue, 1))  # a quiet turn comes before it
    await let_arrive(queue)
    assert queue == [0]  # the batch is taken without it: it goes in the next one
    await late
    assert queue == [0, 1]


async def test_gathering_is_bounded_however_long_calls_keep_arriving() -> None:
    queue = [-1]
    arrivals = [asyncio.ensure_future(_arrive_after(queue, turns)) for turns in range(30)]
    await let_arrive(queue, most=5)
    assert len(queue) == 6  # the five turns' arrivals, and no more
    await asyncio.gather(*arrivals)
