"""The writers' batch gathering (D44): calls on their way join the batch; nothing waits for time to pass. The
connection a writer holds (D46, D49): kept from one batch to the next, returned when idle and at shutdown. The BEGIN
sent ahead while a batch gathers (D59): taken up by the batch's transaction, never left open."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.core.db import Database, HeldConnection
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


# --- the BEGIN sent ahead (D59) -------------------------------------------------------------------------------------


class _Nothing(Writer[int, int]):
    """A writer whose batches need no transaction."""

    async def write_batch(self, items: list[int]) -> list[int | Exception]:
        return list(items)


def _log_queries(held: HeldConnection) -> list[str]:
    sent: list[str] = []
    held.pooled.driver_connection.add_query_logger(lambda record: sent.append(record.query))
    return sent


class _SelectsNotingAhead(_Selects):
    """Notes, as each batch starts, whether a BEGIN is on its way ahead of the batch's transaction."""

    def __init__(self, database: Database, name: str) -> None:
        super().__init__(database, name)
        self.ahead: list[bool] = []

    async def write_batch(self, items: list[int]) -> list[int | Exception]:
        self.ahead.append(self.held.begun is not None)
        return await super().write_batch(items)


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_writer_with_work_queued_begins_ahead_and_its_transaction_takes_that_begin_up(db: Database) -> None:
    writer = _SelectsNotingAhead(db, "test-writer")
    await writer.submit(1)  # its first batch checks out the connection, so it begins as usual
    sent = _log_queries(writer.held)
    assert await writer.submit(2) == 2
    assert writer.ahead == [False, True]  # the second batch's BEGIN was sent while the batch gathered
    assert writer.held.begun is None  # taken up
    assert [q for q in sent if "BEGIN" in q] == [sent[0]]  # and not sent again
    assert sent[-1].endswith("COMMIT")
    assert not writer.held.pooled.driver_connection.is_in_transaction()
    await writer.finish()


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_batch_that_runs_no_transaction_leaves_no_transaction_open(db: Database) -> None:
    writer = _Nothing(db, "test-writer")
    async with db.driver_transaction(None, held=writer.held):  # so that it holds a connection
        pass
    assert await writer.submit(1) == 1
    assert writer._task is not None
    await writer._task  # the call is answered first, then what was begun ahead is ended
    assert writer.held.begun is None
    assert not writer.held.pooled.driver_connection.is_in_transaction()
    await writer.finish()


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_releasing_a_connection_with_a_begin_ahead_rolls_it_back_first(db: Database) -> None:
    held = HeldConnection()
    async with db.driver_transaction(None, held=held):
        pass
    driver: Any = held.pooled.driver_connection
    db.begin_ahead(held)
    await db.release(held)
    assert held.begun is None
    assert held.pooled is None
    assert not driver.is_in_transaction()


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_begin_ahead_that_fails_fails_its_transaction_and_the_next_one_goes_on(
    db: Database, owner_engine: AsyncEngine
) -> None:
    held = HeldConnection()
    try:
        async with db.driver_transaction(None, held=held):
            pass
        async with owner_engine.connect() as owner:  # the held connection goes, and the writer does not know it
            pid = held.pooled.driver_connection.get_server_pid()
            await owner.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        db.begin_ahead(held)
        with pytest.raises(OperationalError):
            async with db.driver_transaction(None, held=held):
                pass
        assert held.pooled is None  # discarded
        async with db.driver_transaction(None, held=held) as tx:  # on a fresh connection
            await _SELECT_ONE.execute(tx)
    finally:
        await db.release(held)


async def test_a_begin_is_sent_ahead_on_postgresql_only(db: Database) -> None:
    held = HeldConnection()
    db.begin_ahead(held)
    assert held.begun is None  # no connection held yet: the transaction begins as usual
    async with db.driver_transaction(None, held=held):
        pass
    db.begin_ahead(held)
    assert (held.begun is None) == db.is_sqlite  # SQLite has no round trip to save
    await db.release(held)
