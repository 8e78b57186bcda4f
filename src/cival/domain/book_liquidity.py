"""What is left of the latest L2 snapshot for orders that take liquidity: the matching engine's view of the market,
and the checks that what the market sends the engine is storable.

Takers walk the opposite side best price first and fill at each level's price. Liquidity taken stays taken until the
next snapshot, so two orders never both fill against the same quantity of one book: per side, the levels before
`index` are used up, and `used` of the one at it. `best_ask` / `best_bid` is the price of that level (None once the
side is used up): what a limit order crosses. These are the engine's internals (`cival.domain.matching`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_DOWN, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow

from cival.domain.matching_events import Event, Filled
from cival.domain.order_book import OrderBookL2
from cival.domain.orders import STORED_QUANTUM, Fill

_ZERO = Decimal(0)
# A fill's fee is quantity x price x rate in the quote asset, rounded half-even to 8 decimals:
# `round_fee(multiply_exact(multiply_exact(quantity, price), rate), STORED_QUANTUM)`, written out at each fill (here
# and for resting orders in `matching`): a call per fill would cost more than the formula. The products are exact
# (up to ~40 digits; the context traps Inexact) and rounded once. Context methods, because they parse their
# arguments faster than `x.quantize(q, ROUND_HALF_EVEN, context)` parses its keywords.
multiply_exact = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact]).multiply
round_fee = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow]).quantize  # half-even


# Quantizing to 8 decimals in this context raises unless the value is storable: a digit dropped is Inexact, and a
# value of 10**12 or more needs 21 digits, over this precision (InvalidOperation). One call, not a quantize and two
# comparisons: a book has dozens of values to check.
_STORABLE = Context(prec=20, rounding=ROUND_DOWN, traps=[InvalidOperation, Inexact])


def is_storable(value: Decimal) -> bool:
    """Positive, below 10**12, at most 8 decimals: what DECIMAL(20,8) holds, and what keeps the engine's sums exact."""
    if not value.is_finite() or not value > _ZERO:
        return False
    try:
        _STORABLE.quantize(value, STORED_QUANTUM)
    except (Inexact, InvalidOperation):
        return False
    return True


def check_book_storable(book: OrderBookL2) -> None:
    """Raise ValueError unless every level's price and quantity is storable (`is_storable`)."""
    # BookLevel has already checked that each is positive and finite.
    quantize, quantum = _STORABLE.quantize, STORED_QUANTUM
    try:
        for levels in (book.bids, book.asks):
            for level in levels:
                quantize(level.price, quantum)
                quantize(level.quantity, quantum)
    except (Inexact, InvalidOperation):
        for level in (*book.bids, *book.asks):
            if not (is_storable(level.price) and is_storable(level.quantity)):
                raise ValueError(
                    f"book level {level.price} x {level.quantity} is not storable: more than 8 decimals or 12 digits"
                ) from None
        raise


class BookLiquidity:
    """The latest book and how much of each side has been taken from it."""

    __slots__ = ("book", "ask_index", "ask_used", "best_ask", "bid_index", "bid_used", "best_bid", "_next_trade_id")

    def __init__(self, id_source: Callable[[], str]) -> None:
        self.book: OrderBookL2 | None = None
        self.ask_index = 0
        self.ask_used = _ZERO
        self.best_ask: Decimal | None = None
        self.bid_index = 0
        self.bid_used = _ZERO
        self.best_bid: Decimal | None = None
        self._next_trade_id = id_source

    def reset(self, book: OrderBookL2, asks_taken: tuple[int, Decimal], bids_taken: tuple[int, Decimal]) -> None:
        """A new snapshot, of which the engine's resting orders have already taken `(index, used)` per side."""
        self.book = book
        asks, bids = book.asks, book.bids
        self.ask_index, self.ask_used = asks_taken
        self.best_ask = asks[self.ask_index].price if self.ask_index < len(asks) else None
        self.bid_index, self.bid_used = bids_taken
        self.best_bid = bids[self.bid_index].price if self.bid_index < len(bids) else None

    def reference_price(self, is_buy: bool) -> Decimal | None:
        """The best price the book quotes to a buy (its best ask) or a sell, taken or not: a market order's notional."""
        book = self.book
        if book is None:
            return None
        levels = book.asks if is_buy else book.bids
        return levels[0].price if levels else None

    def crosses(self, is_buy: bool, limit: Decimal) -> bool:
        """Whether a limit order would take liquidity still available."""
        if is_buy:
            return self.best_ask is not None and self.best_ask <= limit
        return self.best_bid is not None and self.best_bid >= limit

    def available(self, is_buy: bool, limit: Decimal | None, wanted: Decimal) -> bool:
        """Whether the book still holds `wanted` at prices no worse than `limit`."""
        book = self.book
        if book is None:
            return False
        if is_buy:
            levels, index, used = book.asks, self.ask_index, self.ask_used
        else:
            levels, index, used = book.bids, self.bid_index, self.bid_used
        total = -used
        for level in levels[index:]:
            if limit is not None and (level.price > limit if is_buy else level.price < limit):
                break
            total += level.quantity
            if total >= wanted:
                return True
        return False

    def take(
        self,
        order_id: str,
        is_buy: bool,
        remaining: Decimal,
        limit: Decimal | None,
        fee_rate: Decimal,
        ts: datetime,
        events: list[Event],
    ) -> Decimal:
        """Fill as taker, best level first, at each level's price, no worse than `limit`; returns what is left."""
        book = self.book
        if book is None:
            return remaining
        if is_buy:
            levels, index, used = book.asks, self.ask_index, self.ask_used
        else:
            levels, index, used = book.bids, self.bid_index, self.bid_used
        count = len(levels)
        next_trade_id = self._next_trade_id
        while remaining and index < count:
            level = levels[index]
            price = level.price
            if limit is not None and (price > limit if is_buy else price < limit):
                break
            available = level.quantity - used
            if available > remaining:
                take = remaining
                used += take
            else:
                take = available
                index += 1
                used = _ZERO
            remaining -= take
            fee = round_fee(multiply_exact(multiply_exact(take, price), fee_rate), STORED_QUANTUM)
            events.append(Filled(order_id, Fill(next_trade_id(), take, price, fee, "taker", ts)))
        best = levels[index].price if index < count else None
        if is_buy:
            self.ask_index, self.ask_used, self.best_ask = index, used, best
        else:
            self.bid_index, self.bid_used, self.best_bid = index, used, best
        return remaining
