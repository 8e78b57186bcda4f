"""How the order path's two writers gather a batch (group commit: the intake, D43; the applier, D21; D44).

Each writer is one task that stores whatever is queued in one transaction. Under load, what a batch holds is decided
by when the task looks: an order whose request is still being parsed, authenticated and validated reaches the queue
a few turns of the event loop later, and a batch taken at once leaves it for the next transaction. Every transaction
costs its round trips and its loads whatever it holds, so the writer first lets those arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sized

MOST_YIELDS = 8


async def let_arrive(queue: Sized, most: int = MOST_YIELDS) -> None:
    """Yield to the event loop while `queue` grows, at most `most` times: the calls already on their way join the
    batch. Alone (nothing else running), this is two turns of the loop; it never waits for time to pass."""
    size = -1
    for _ in range(most):
        if len(queue) == size:
            return
        size = len(queue)
        await asyncio.sleep(0)
