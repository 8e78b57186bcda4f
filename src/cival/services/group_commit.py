"""Group commit: the order path's two writers (the fill applier, D21; the order intake, D43).

Each is ONE task per process that stores whatever calls are queued in one transaction, in queue order, and answers
them. Under load, what a batch holds is decided by when the task looks: an order whose request is still being
parsed, authenticated and validated reaches the queue a few turns of the event loop later, and a batch taken at
once leaves it for the next transaction. Every transaction costs its round trips and its loads whatever it holds,
so the writer first lets those arrive (D44). It keeps its pooled connection while it has work, and for
`HOLD_IDLE_SECONDS` after (D46, D49). A batch whose transaction fails is stored again one call at a time, so a bad
call fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sized
from typing import Generic, TypeVar

from cival.core.db import Database, HeldConnection

MOST_YIELDS = 8
HOLD_IDLE_SECONDS = 1.0
"""How long a writer keeps its pooled connection once its queue is empty (D49): under a steady flow of orders the
queue empties after every batch, and returning the connection to the pool and taking it out again each time cost
two crossings into SQLAlchemy's pool per transaction. Below D40's idle ping threshold, so a connection is never
held idle longer than the pool would have let it sit unpinged."""

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


async def let_arrive(queue: Sized, most: int = MOST_YIELDS) -> None:
    """Yield to the event loop while `queue` grows, at most `most` times: the calls already on their way join the
    batch. Alone (nothing else running), this is two turns of the loop; it never waits for time to pass."""
    size = -1
    for _ in range(most):
        if len(queue) == size:
            return
        size = len(queue)
        await asyncio.sleep(0)


class Writer(Generic[ItemT, ResultT]):
    """A group-committing writer: `submit` queues a call; subclasses say how a batch is written (`write_batch`: one
    result or error per call, in order) and what is published once it is (`publish_batch`, before any call is
    answered)."""

    def __init__(self, database: Database, name: str, *, max_batch: int = 64) -> None:
        self.database = database
        self.max_batch = max_batch
        self.held = HeldConnection()  # kept while there are batches to store, and a moment after (D46, D49)
        self._name = name
        self._queue: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._releasing: asyncio.Future[None] | None = None

    async def submit(self, item: ItemT) -> ResultT:
        """Queue `item` (synchronously, before the first await: queue order is call order) and wait until it is
        stored; its result, or its error raised."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=self._name)
        return await asyncio.shield(future)

    async def finish(self) -> None:
        """Wait until what is queued is stored, and return the connection to the pool (shutdown)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._releasing is not None:
            await asyncio.gather(self._releasing, return_exceptions=True)
        await self.database.release(self.held)

    async def write_batch(self, items: list[ItemT]) -> list[ResultT | Exception]:
        """Store `items` in one transaction: each one's result, or the error that failed it alone. Raising fails
        the whole batch (it is then stored again one item at a time)."""
        raise NotImplementedError

    async def publish_batch(self, results: list[ResultT | Exception]) -> None:
        """Publish what a stored batch changed (best effort), before its calls are answered."""

    def failed(self, error: Exception) -> None:
        """A transaction failed with `error` (its calls are answered with it)."""

    async def _drain(self) -> None:
        try:
            while self._queue:
                self.database.begin_ahead(self.held)  # its round trip runs while the calls arrive (D59)
                await let_arrive(self._queue)
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                await self._store_batch(batch)
                await self.database.end_ahead(self.held)  # a batch that ran no transaction left it unused
        except BaseException:
            await self.database.release(self.held)
            raise
        # The queue is empty and this task ends here (no await since the check): a call queued from now on starts
        # the next one. The connection goes back to the pool if none has come within HOLD_IDLE_SECONDS.
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(HOLD_IDLE_SECONDS, self._release_if_idle)

    def _release_if_idle(self) -> None:
        self._idle = None
        if self._task is None or self._task.done():  # no batch on its way
            # Swapped out now, released in the background: a batch that starts meanwhile checks out its own.
            held, self.held = self.held, HeldConnection()
            self._releasing = asyncio.ensure_future(self.database.release(held))

    async def _store_batch(self, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await self.write_batch([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                self.failed(exc)
                _answer(batch[0][1], exc)
                return
            for item, future in batch:  # one by one, so a bad call fails alone
                try:
                    (result,) = await self.write_batch([item])
                except Exception as one_exc:
                    self.failed(one_exc)
                    _answer(future, one_exc)
                    continue
                await self.publish_batch([result])
                _answer(future, result)
            return
        await self.publish_batch(results)
        for (_, future), result in zip(batch, results, strict=True):
            _answer(future, result)


def _answer(future: asyncio.Future[ResultT], outcome: ResultT | Exception) -> None:
    if future.done():  # the caller went away
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
