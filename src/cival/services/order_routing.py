"""Paper orders are worked by ONE process: the market-data leader, whose market steps feed the paper engines.

Every API worker accepts orders, and stores each one (committed) before anything else, as always. A worker that is
not the leader then asks the leader, over the cache's pub/sub (Redis when several workers run), to submit or cancel
the order; the leader works it on its engines, stores the events through its writer, and answers with the order as
stored. One engine per pair, in one process, is what makes a resting order fill once: engines in several workers
would each fill it.

No answer within `order_route_timeout_seconds` (no leader yet, leader gone or overloaded) leaves a submitted order
`unknown`, never rejected. The leader settles unknown orders: a late request still works the order (it becomes
pending, or fills), and its periodic sweep cancels an unknown order that is not on its engines after twice the
timeout (the request never arrived; the order's reserved funds are released). A worker that is itself taking the
lead works its own unanswered orders once it leads (`OrderManagement._route_submit`, D22).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from cival.core.cache import Cache
from cival.core.exceptions import ServiceUnavailable
from cival.core.logging import get_logger

log = get_logger(__name__)

REQUESTS = "paper:orders"
"""The leader's request channel: `{"id", "op": "submit"|"cancel", "order_id", "reply_to"}`."""

Worker = Callable[[str, uuid.UUID], Awaitable[dict[str, Any]]]
"""The leader's handler: `(op, order_id) -> {"order": <OrderOut as JSON>}` or `{"error": code, "detail": ...}`."""


class VenueUnavailable(ServiceUnavailable):
    code = "venue_unavailable"


class OrderRoute:
    """Requests to the leader (every worker) and the leader's service of them (the leader only)."""

    def __init__(self, cache: Cache, instance_id: str, timeout: float) -> None:
        self.cache = cache
        self.timeout = timeout
        self.reply_channel = f"paper:replies:{instance_id}"
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._replies: asyncio.Task[None] | None = None
        self._serving: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()

    # --- every worker: asking --------------------------------------------------------------------------------

    async def request(self, op: str, order_id: uuid.UUID) -> dict[str, Any] | None:
        """The leader's answer, or None when none came in time (or no leader listens)."""
        await self._listen_for_replies()
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        message = {"id": request_id, "op": op, "order_id": str(order_id), "reply_to": self.reply_channel}
        try:
            if await self.cache.publish(REQUESTS, json.dumps(message).encode()) == 0:
                return None  # nobody leads the paper exchange right now
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            self._pending.pop(request_id, None)

    async def _listen_for_replies(self) -> None:
        if self._replies is None or self._replies.done():  # first use, or the subscription ended: (re)open it
            self._ready.clear()
            self._replies = asyncio.create_task(self._read_replies(), name="order-route-replies")
        await self._ready.wait()

    async def _read_replies(self) -> None:
        async with self.cache.subscribe(self.reply_channel) as subscription:
            self._ready.set()
            async for _, raw in subscription:
                try:
                    reply = json.loads(raw)
                    future = self._pending.get(reply["id"])
                except (ValueError, KeyError, TypeError):
                    log.warning("malformed order route reply", size=len(raw))
                    continue
                if future is not None and not future.done():
                    future.set_result(reply)

    # --- the leader: serving ---------------------------------------------------------------------------------

    async def serve(self, worker: Worker) -> None:
        """Start answering requests (on becoming the leader); returns once subscribed."""
        if self._serving is not None:
            return
        subscribed = asyncio.Event()
        self._serving = asyncio.create_task(self._serve(worker, subscribed), name="order-route-serve")
        await subscribed.wait()

    async def stop_serving(self) -> None:
        task, self._serving = self._serving, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, worker: Worker, subscribed: asyncio.Event) -> None:
        async with self.cache.subscribe(REQUESTS) as subscription:
            subscribed.set()
            async for _, raw in subscription:
                try:
                    message = json.loads(raw)
                    op, order_id, reply_to = message["op"], uuid.UUID(message["order_id"]), message["reply_to"]
                    request_id = message["id"]
                except (ValueError, KeyError, TypeError):
                    log.warning("malformed order route request", size=len(raw))
                    continue
                # Each request on its own task: the engines are worked synchronously, so order is kept per call.
                task = asyncio.create_task(self._answer(worker, op, order_id, request_id, reply_to))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)

    async def _answer(self, worker: Worker, op: str, order_id: uuid.UUID, request_id: str, reply_to: str) -> None:
        try:
            reply = await worker(op, order_id)
        except Exception as exc:  # the requester must not wait out its timeout for an error we know of
            log.exception("routed order request failed", op=op, order_id=str(order_id))
            reply = {"error": "internal_error", "detail": f"the paper exchange failed: {type(exc).__name__}"}
        with contextlib.suppress(Exception):
            await self.cache.publish(reply_to, json.dumps({"id": request_id, **reply}).encode())

    async def close(self) -> None:
        await self.stop_serving()
        for task in list(self._handlers):
            with contextlib.suppress(Exception):
                await task
        if self._replies is not None:
            self._replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replies
            self._replies = None
