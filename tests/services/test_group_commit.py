"""The writers' batch gathering (D44): calls on their way join the batch; nothing waits for time to pass. The
connection a writer holds (D46, D49): kept from one batch to the next, returned when idle and at shutdown."""

from __future__ import annotations

import asyncio

from cival.core.db import Database
from cival.database.driver_sql import DriverStatement
from cival.services.group_commit import Writer, let_arrive


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


# --- the held connection (D46, D49) --------------------------------------------------------------------------------


class _Selects(Writer[int, int]):
    """A writer whose batch is one driver transaction on its held connection."""

    async def write_batch(self, items: list[int]) -> list[int | Exception]:
        async with self.database.driver_transaction(None, held=self.held) as tx:
            await _SELECT_ONE.execute(tx)
        return list(items)


_SELECT_ONE = DriverStatement("SELECT 1", {})


async def test_a_writer_keeps_its_connection_from_one_batch_to_the_next(db: Database) -> None:
    writer = _Selects(db, "test-writer")
    assert await writer.submit(1) == 1
    first = writer.held.pooled
    assert first is not None  # the queue is empty, and the connection is still the writer's
    assert await writer.submit(2) == 2
    assert writer.held.pooled is first  # the next batch used it: no check-out in between
    await writer.finish()
    assert writer.held.pooled is None  # shutdown returns it to the pool


async def test_an_idle_writer_returns_its_connection_and_the_next_batch_takes_one_afresh(db: Database) -> None:
    writer = _Selects(db, "test-writer")
    await writer.submit(1)
    held = writer.held
    assert held.pooled is not None
    writer._release_if_idle()  # what the idle timer runs HOLD_IDLE_SECONDS after the queue emptied
    assert writer.held is not held  # swapped out at once
    assert writer.held.pooled is None
    assert writer._releasing is not None
    await writer._releasing
    assert held.pooled is None  # back in the pool
    assert await writer.submit(2) == 2  # checked out afresh
    assert writer.held.pooled is not None
    await writer.finish()


async def test_the_idle_timer_leaves_the_connection_of_a_batch_in_progress(db: Database) -> None:
    writer = _Selects(db, "test-writer")
    await writer.submit(1)
    kept = writer.held.pooled
    pending = asyncio.ensure_future(writer.submit(2))
    await asyncio.sleep(0)  # one turn of the loop: the call is queued and its batch task started
    writer._release_if_idle()  # the timer of the previous batch fires while this one is on its way
    assert await pending == 2
    assert writer.held.pooled is kept  # not released under the running batch
    await writer.finish()
