"""The matching engine's own book: working orders queued by price and time, one `Ladder` per side (and per stop side).

Prices are kept in integer ticks: a dict from ticks to the level's FIFO queue, and a heap of the ticks for the best
level. Integer keys, not Decimals: hashing a fresh Decimal costs more than the rest of an insert. Cancelling is O(1):
the order is marked dead and left in its queue, skipped when matching reaches it; its level's live count goes down,
the level leaves the ladder when that reaches zero, and a queue mostly made of dead orders is compacted.

These are the engine's internals (`cival.domain.matching`), not an API: the engine owns every field.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from decimal import Decimal
from heapq import heapify, heappop, heappush

from cival.domain.matching_events import OrderRequest


class RestingOrder:
    """A working order: on the book, or a stop waiting for its trigger. Only what matching reads and writes."""

    __slots__ = ("order_id", "request", "remaining", "seq", "is_alive", "triggered_at", "level")

    def __init__(
        self, request: OrderRequest, remaining: Decimal, seq: int, triggered_at: datetime | None, level: PriceLevel
    ) -> None:
        self.order_id = request.order_id  # copied: a fill then need not read the request, long out of the CPU's caches
        self.request = request
        self.remaining = remaining
        self.seq = seq  # time priority across the engine: the order in which orders started working
        self.is_alive = True  # False once filled, cancelled or triggered: its queue skips it
        self.triggered_at = triggered_at
        self.level = level


class PriceLevel:
    """The FIFO queue of one price; `count` is its live orders (dead ones are skipped lazily)."""

    __slots__ = ("ladder", "ticks", "price", "orders", "count")

    def __init__(self, ladder: Ladder, ticks: int, price: Decimal) -> None:
        self.ladder = ladder
        self.ticks = ticks
        self.price = price  # as the order that opened the level wrote it: fills at this level print this Decimal
        self.orders: deque[RestingOrder] = deque()
        self.count = 0


class Ladder:
    """The price levels of one side, by ticks, and the best of them first: the highest (bids, sell stops) or the
    lowest (asks, buy stops).

    The order of levels is a heap of their ticks (negated when the highest is best), which is O(log n) to add to; a
    level that leaves (cancelled empty) stays in the heap until it comes to the top, where `best` drops it. So an
    entry whose level is gone, or a second entry for a level opened again at the same ticks, is skipped; the heap is
    rebuilt when such entries outnumber the levels.
    """

    __slots__ = ("sign", "heap", "levels")

    def __init__(self, *, highest_first: bool) -> None:
        self.sign = -1 if highest_first else 1
        self.heap: list[int] = []  # sign x ticks
        self.levels: dict[int, PriceLevel] = {}

    def open_level(self, ticks: int, price: Decimal) -> PriceLevel:
        """A new, empty level at `ticks` (there is none yet)."""
        level = self.levels[ticks] = PriceLevel(self, ticks, price)
        heap = self.heap
        if len(heap) > 2 * len(self.levels) + 64:
            sign = self.sign
            heap[:] = [sign * key for key in self.levels]
            heapify(heap)
        else:
            heappush(heap, self.sign * ticks)
        return level

    def add(
        self,
        request: OrderRequest,
        remaining: Decimal,
        seq: int,
        triggered_at: datetime | None,
        ticks: int,
        price: Decimal,
    ) -> RestingOrder:
        """Queue a working order last at `ticks`, opening the level at `price` if there is none.

        `MatchingEngine.submit` does the same inline for a plain limit order that rests: most orders go that way.
        """
        level = self.levels.get(ticks) or self.open_level(ticks, price)
        order = RestingOrder(request, remaining, seq, triggered_at, level)
        level.orders.append(order)
        level.count += 1
        return order

    def discard(self, order: RestingOrder) -> None:
        """Drop a live order just marked dead: O(1) (its level's heap entry, if it empties, is dropped lazily)."""
        level = order.level
        level.count -= 1
        if not level.count:
            del self.levels[level.ticks]
        elif len(level.orders) > 2 * level.count + 16:
            # Compact so a long-lived level full of cancelled orders does not grow without bound.
            level.orders = deque(o for o in level.orders if o.is_alive)

    def best(self) -> PriceLevel | None:
        """The best level, or None."""
        heap, levels, sign = self.heap, self.levels, self.sign
        while heap:
            level = levels.get(sign * heap[0])
            if level is not None:
                return level
            heappop(heap)
        return None

    def remove_best(self) -> None:
        """Take out the best level (there is one: `best` has just returned it)."""
        del self.levels[self.sign * heappop(self.heap)]
