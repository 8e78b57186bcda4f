"""The paper exchange's matching engine for one instrument: Cival's orders against the simulated market.

Liquidity comes from the market, never from other Cival orders: users' orders do not match each other (each account
trades against the market as it would on a venue, and one tenant's fills must not depend on another tenant's
orders). So the engine's own book may hold a buy above a sell; each fills only against the market.

- Taking (market, IOC/FOK, the crossing part of a limit, a triggered stop): walks the latest L2 book's opposite side
  best price first, filling at each level's price up to its quantity. Liquidity taken stays taken until the next
  book arrives (`on_book`), so two orders never both fill against the same quantity of one snapshot. FOK checks
  first that the book holds the whole quantity within its limit, and fills nothing otherwise (`fok_unfilled`).
- Resting (GTC limits): a book per side, price-time priority. A resting order fills as maker at its own price when
  a market trade prints at or through it (a buy at P when the market trades at or below P; a sell at P at or above
  P), or when a new book quotes at or through it (an ask at or below a resting buy). Each trade's quantity, and each
  level's quantity, is shared out best order first, so fills are partial when it runs out. This is the optimistic
  "touch" model: the queue ahead of the order at its price on the real venue is not known, so it is not simulated.
  Buys and sells are each matched against the full quantity of a trade: a print says both a buyer and a seller met.
- Stops wait for a market trade at or through their stop price (a buy stop when the trade price >= stop price, a
  sell stop when <= stop price), are triggered after that trade has filled the resting orders (the trade that
  triggers a stop cannot also fill it), in submission order, and then work as a market order (stop) or as a limit
  order with the stop-limit's time in force, queued behind the orders already resting at its price. A stop that the
  last trade price would already trigger is rejected (`stop_would_trigger_immediately`), as Binance does, instead of
  firing at once unexpectedly; after `restore` that check resumes with the first trade.
- Fees are `quantity x price x rate` in the quote asset, rounded half-even to 8 decimals per fill: maker rate for
  resting fills, taker rate for taking fills.

Events: `Filled` per execution, `Rested` when an order starts working (on the book, or a stop waiting for its
trigger), `Triggered`, `Cancelled` (with why) and `Rejected` (with the validation code and detail). An order refused
by validation is an event, not an exception; exceptions are for the caller's mistakes (a duplicate id, a naive
timestamp, cancelling an order that is not working).

Everything is deterministic: no clock, no randomness; trade ids come from `id_source` in event order, so the same
calls give the same events. Price levels are kept per side as a sorted list of prices in integer ticks (`bisect`)
and a dict from ticks to the level's FIFO queue; an order index by id makes cancel O(1) (the order is marked dead
and skipped when matching reaches it; a level mostly dead is compacted).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    getcontext,
)

from cival.domain.candles import TradeTick
from cival.domain.instruments import Instrument
from cival.domain.order_book import BookLevel, OrderBookL2
from cival.domain.orders import (
    MAX_STORED,
    STORED_QUANTUM,
    CancelReason,
    Fill,
    Liquidity,
    OrderRejected,
    OrderSide,
    OrderType,
    OrderValidator,
    RejectCode,
    TimeInForce,
)

_ZERO = Decimal(0)
# Products (fees) of two stored values need up to ~40 digits: they use this context, which traps Inexact.
_EXACT = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_ROUND = Context(prec=100, traps=[InvalidOperation, DivisionByZero, Overflow])
_mul = _EXACT.multiply
# Sums and differences use plain operators (three times cheaper than context methods, and this is the hot path):
# every quantity the engine adds or subtracts is checked on entry to have at most 8 decimals and be below 10**12,
# so a result has at most 21 digits, exact in any context that keeps that many (Python's default keeps 28).
_MIN_PRECISION = 21
# Enum members as module constants: a class attribute lookup on an Enum costs as much as the comparison itself.
_BUY = OrderSide.BUY
_MARKET, _LIMIT, _STOP = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP
_GTC, _IOC, _FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
_REQUESTED, _IOC_REMAINDER, _FOK_UNFILLED = (
    CancelReason.REQUESTED,
    CancelReason.IOC_REMAINDER,
    CancelReason.FOK_UNFILLED,
)


class OrderNotWorking(ValueError):
    """The order is not working on this engine: unknown, or already filled, cancelled or rejected."""


class DuplicateOrder(ValueError):
    """An order id that is already working on this engine.

    Finished orders are forgotten (the engine's memory stays bounded by what is working): that an id is never reused
    over an order's whole life is the database's job, where it is the primary key.
    """


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order as submitted; validated by the engine, which answers with events."""

    order_id: str
    side: OrderSide
    type: OrderType
    quantity: Decimal
    time_in_force: TimeInForce
    ts: datetime
    price: Decimal | None = None
    stop_price: Decimal | None = None
    post_only: bool = False


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """A working order as stored: what `open_orders` returns and `restore` takes back.

    `triggered_at` is set for a stop-limit that has triggered and rests as a limit: it joined the book then, so that
    is its time priority (the creation `ts` for every other order).
    """

    request: OrderRequest
    filled_quantity: Decimal = _ZERO
    triggered_at: datetime | None = None

    @property
    def priority_ts(self) -> datetime:
        """When the order took its place in the queue."""
        return self.triggered_at or self.request.ts


# The three events the hot path creates write their fields out: a generated frozen __init__ costs twice as much.
_set_field = object.__setattr__


@dataclass(frozen=True, slots=True, init=False)
class Filled:
    """Part or all of an order executed."""

    order_id: str
    fill: Fill

    def __init__(self, order_id: str, fill: Fill) -> None:
        _set_field(self, "order_id", order_id)
        _set_field(self, "fill", fill)


@dataclass(frozen=True, slots=True, init=False)
class Rested:
    """The order is working: a limit on the book, or a stop waiting for its trigger."""

    order_id: str

    def __init__(self, order_id: str) -> None:
        _set_field(self, "order_id", order_id)


@dataclass(frozen=True, slots=True, init=False)
class Cancelled:
    """The order stopped working; what was not filled never will be."""

    order_id: str
    reason: CancelReason

    def __init__(self, order_id: str, reason: CancelReason) -> None:
        _set_field(self, "order_id", order_id)
        _set_field(self, "reason", reason)


@dataclass(frozen=True, slots=True)
class Rejected:
    """The order was refused and never worked."""

    order_id: str
    reason: RejectCode
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Triggered:
    """A stop's trigger was hit at `ts`: it now works as a market or limit order."""

    order_id: str
    ts: datetime


Event = Filled | Rested | Cancelled | Rejected | Triggered


def _required(value: Decimal | None, request: OrderRequest) -> Decimal:
    # validate_order (or _check_restorable) has already ensured the value; this narrows the type.
    if value is None:
        raise ValueError(f"order {request.order_id}: a {request.type} order is missing its price or stop price")
    return value


class _Order:
    """The engine's working record: only what matching reads and writes, to keep the hot path small."""

    __slots__ = ("request", "order_id", "is_buy", "ladder", "key", "remaining", "seq", "is_alive", "triggered_at")

    # `ladder` and `key` (ticks of the price it queues at: the limit on the book, the stop among the stops) are set
    # by `_Ladder.add`; nothing reads them before, and an order that never queues never pays for them.
    ladder: _Ladder
    key: int

    def __init__(self, request: OrderRequest, is_buy: bool, remaining: Decimal, seq: int) -> None:
        self.request = request
        self.order_id = request.order_id
        self.is_buy = is_buy
        self.remaining = remaining
        self.seq = seq
        self.is_alive = True
        self.triggered_at: datetime | None = None


class _Level:
    __slots__ = ("price", "orders", "count")

    def __init__(self, price: Decimal) -> None:
        self.price = price
        self.orders: deque[_Order] = deque()
        self.count = 0  # live orders; dead ones are skipped lazily


class _Ladder:
    """Price levels of one side: their prices in ticks, ascending, and each level's FIFO queue by ticks.

    Keys are integer ticks, not Decimals: hashing a fresh Decimal costs more than the whole rest of an insert.
    """

    __slots__ = ("ticks", "levels")

    def __init__(self) -> None:
        self.ticks: list[int] = []
        self.levels: dict[int, _Level] = {}

    def add(self, order: _Order, ticks: int, price: Decimal) -> None:
        order.ladder = self
        order.key = ticks
        level = self.levels.get(ticks)
        if level is None:
            insort(self.ticks, ticks)
            level = self.levels[ticks] = _Level(price)
        level.orders.append(order)
        level.count += 1

    def discard(self, order: _Order) -> None:
        """Drop a live order already marked dead: O(1) unless its level empties (then a bisect and a list delete)."""
        key = order.key
        level = self.levels[key]
        level.count -= 1
        if not level.count:
            del self.levels[key]
            del self.ticks[bisect_left(self.ticks, key)]
        elif len(level.orders) > 2 * level.count + 16:
            # Compact so a long-lived level full of cancelled orders does not grow without bound.
            level.orders = deque(o for o in level.orders if o.is_alive)

    def highest(self) -> _Level | None:
        """The level with the highest price, or None."""
        return self.levels[self.ticks[-1]] if self.ticks else None

    def lowest(self) -> _Level | None:
        """The level with the lowest price, or None."""
        return self.levels[self.ticks[0]] if self.ticks else None

    def remove_highest(self) -> _Level:
        """Take out the level with the highest price."""
        return self.levels.pop(self.ticks.pop())

    def remove_lowest(self) -> _Level:
        """Take out the level with the lowest price."""
        return self.levels.pop(self.ticks.pop(0))


def _refuse_context() -> None:
    raise RuntimeError(
        f"this thread's decimal context keeps {getcontext().prec} digits; exact matching needs {_MIN_PRECISION}"
    )


def _is_storable(value: Decimal) -> bool:
    """Positive, below 10**12, at most 8 decimals: what DECIMAL(20,8) holds, and what keeps sums exact."""
    return (
        value.is_finite() and _ZERO < value < MAX_STORED and value.quantize(STORED_QUANTUM, ROUND_DOWN, _ROUND) == value
    )


def _check_book_storable(book: OrderBookL2) -> None:
    # BookLevel has already checked positive and finite; inlined, since a book has dozens of levels.
    quantum, down, context, limit = STORED_QUANTUM, ROUND_DOWN, _ROUND, MAX_STORED
    for levels in (book.bids, book.asks):
        for level in levels:
            price, quantity = level.price, level.quantity
            if (
                price >= limit
                or quantity >= limit
                or price.quantize(quantum, down, context) != price
                or quantity.quantize(quantum, down, context) != quantity
            ):
                raise ValueError(f"book level {price} x {quantity} is not storable: more than 8 decimals or 12 digits")


class MatchingEngine:
    """Price-time priority matching of one instrument's orders against the simulated market."""

    def __init__(
        self,
        instrument: Instrument,
        *,
        maker_fee_rate: Decimal,
        taker_fee_rate: Decimal,
        id_source: Callable[[], str],
    ) -> None:
        for name, rate in (("maker_fee_rate", maker_fee_rate), ("taker_fee_rate", taker_fee_rate)):
            if not isinstance(rate, Decimal) or not rate.is_finite() or not 0 <= rate < 1:
                raise ValueError(f"{name} {rate!r} must be a Decimal in [0, 1)")
        self.instrument = instrument
        self.maker_fee_rate = maker_fee_rate
        self.taker_fee_rate = taker_fee_rate
        self._next_trade_id = id_source
        self._validate = OrderValidator(instrument).validate
        self._tick = instrument.tick_size
        self.book: OrderBookL2 | None = None
        self.last_trade_price: Decimal | None = None
        self._orders: dict[str, _Order] = {}
        self._bids = _Ladder()
        self._asks = _Ladder()
        self._buy_stops = _Ladder()
        self._sell_stops = _Ladder()
        self._seq = 0
        # Liquidity taken from the current book: levels before the index are used up, `used` of the one at it.
        self._ask_index = 0
        self._ask_used = _ZERO
        self._bid_index = 0
        self._bid_used = _ZERO

    # -- inputs ---------------------------------------------------------------------------------------------------

    def submit(self, request: OrderRequest, book: OrderBookL2 | None = None) -> list[Event]:
        """Validate and work a new order; with `book`, exactly `on_book(book)` first (its events come first)."""
        order_id = request.order_id
        if order_id in self._orders:
            raise DuplicateOrder(f"order {order_id} is already working")
        if request.ts.tzinfo is None:
            raise ValueError(f"order {order_id}: ts {request.ts.isoformat()} is naive; it must be timezone-aware")
        events = self.on_book(book) if book is not None else []
        if getcontext().prec < _MIN_PRECISION:
            _refuse_context()
        order_type = request.type
        is_buy = request.side == _BUY
        price = request.price
        try:
            self._validate(
                request.side,
                order_type,
                request.quantity,
                price,
                request.stop_price,
                request.time_in_force,
                request.post_only,
                self._reference_price(is_buy) if order_type == _MARKET else None,
            )
        except OrderRejected as exc:
            events.append(Rejected(order_id, exc.code, exc.detail))
            return events
        self._seq += 1
        order = _Order(request, is_buy, request.quantity, self._seq)
        if order_type == _LIMIT:
            if price is None:
                raise ValueError(f"order {order_id}: a limit order without a price passed validation")
            if request.post_only and self._crosses(is_buy, price):
                detail = f"post-only {request.side} at {price} would take liquidity from the book"
                events.append(Rejected(order_id, RejectCode.POST_ONLY_WOULD_CROSS, detail))
            else:
                self._work_limit(order, price, request.time_in_force, request.ts, events)
        elif order_type == _MARKET:
            self._work_market(order, request.time_in_force, request.ts, events)
        else:
            self._hold_stop(order, events)
        return events

    def cancel(self, order_id: str) -> list[Event]:
        """Cancel a working order; raises `OrderNotWorking` for an unknown or finished one."""
        order = self._orders.pop(order_id, None)
        if order is None:
            raise OrderNotWorking(f"order {order_id} is not working: unknown, or already filled, cancelled or rejected")
        order.is_alive = False
        order.ladder.discard(order)
        return [Cancelled(order_id, _REQUESTED)]

    def on_trade(self, price: Decimal, quantity: Decimal, ts: datetime) -> list[Event]:
        """A market trade: fill resting orders it prints at or through, then trigger the stops it reaches."""
        if not isinstance(price, Decimal) or not price.is_finite() or price <= _ZERO:
            raise ValueError(f"trade price {price!r} must be a positive Decimal")
        if not isinstance(quantity, Decimal) or not _is_storable(quantity):
            raise ValueError(f"trade quantity {quantity!r} must be positive, below 10**12, with at most 8 decimals")
        if ts.tzinfo is None:
            raise ValueError(f"trade ts {ts.isoformat()} is naive; it must be timezone-aware")
        if getcontext().prec < _MIN_PRECISION:
            _refuse_context()
        events: list[Event] = []
        self.last_trade_price = price
        best_bid, best_ask = self._bids.highest(), self._asks.lowest()
        if best_bid is not None and best_bid.price >= price:
            self._match_trade(self._bids, True, price, quantity, ts, events)
        if best_ask is not None and best_ask.price <= price:
            self._match_trade(self._asks, False, price, quantity, ts, events)
        lowest_buy_stop, highest_sell_stop = self._buy_stops.lowest(), self._sell_stops.highest()
        if (lowest_buy_stop is not None and lowest_buy_stop.price <= price) or (
            highest_sell_stop is not None and highest_sell_stop.price >= price
        ):
            for order in self._pop_triggered(price):
                self._work_triggered(order, ts, events)
        return events

    def on_trade_tick(self, tick: TradeTick) -> list[Event]:
        """`on_trade` for a `TradeTick`."""
        return self.on_trade(tick.price, tick.quantity, tick.ts)

    def on_book(self, book: OrderBookL2) -> list[Event]:
        """A new L2 snapshot: it becomes the liquidity takers use, and fills resting orders it quotes through."""
        if book.symbol != self.instrument.symbol or book.exchange != self.instrument.exchange:
            raise ValueError(
                f"book for {book.symbol} on {book.exchange} given to the engine of {self.instrument.symbol} on "
                f"{self.instrument.exchange}"
            )
        _check_book_storable(book)
        if getcontext().prec < _MIN_PRECISION:
            _refuse_context()
        self.book = book
        events: list[Event] = []
        ts = book.timestamp
        self._ask_index, self._ask_used = self._match_book(self._bids, True, book.asks, ts, events)
        self._bid_index, self._bid_used = self._match_book(self._asks, False, book.bids, ts, events)
        return events

    def restore(self, orders: Iterable[OpenOrder]) -> None:
        """Rebuild the working orders of an empty engine from storage, in time priority (`priority_ts`, stable)."""
        if self._orders:
            raise ValueError("restore needs an empty engine")
        if getcontext().prec < _MIN_PRECISION:
            _refuse_context()
        for stored in sorted(orders, key=lambda o: o.priority_ts):
            request = stored.request
            self._check_restorable(stored)
            self._seq += 1
            is_buy = request.side == _BUY
            order = _Order(request, is_buy, request.quantity - stored.filled_quantity, self._seq)
            order.triggered_at = stored.triggered_at
            if request.type == _LIMIT or stored.triggered_at is not None:
                price = _required(request.price, request)
                (self._bids if is_buy else self._asks).add(order, self._ticks_checked(price, request), price)
            else:
                stop = _required(request.stop_price, request)
                (self._buy_stops if is_buy else self._sell_stops).add(order, self._ticks_checked(stop, request), stop)
            self._orders[request.order_id] = order

    # -- queries --------------------------------------------------------------------------------------------------

    def open_orders(self) -> list[OpenOrder]:
        """Every working order, in time priority, as `restore` takes them back."""
        return [
            OpenOrder(o.request, o.request.quantity - o.remaining, o.triggered_at)
            for o in sorted(self._orders.values(), key=lambda o: o.seq)
        ]

    def is_working(self, order_id: str) -> bool:
        """Whether the order rests on the book or waits for its trigger."""
        return order_id in self._orders

    def remaining(self, order_id: str) -> Decimal:
        """What a working order still has to fill."""
        order = self._orders.get(order_id)
        if order is None:
            raise OrderNotWorking(f"order {order_id} is not working")
        return order.remaining

    # -- internals ------------------------------------------------------------------------------------------------

    def _reference_price(self, is_buy: bool) -> Decimal | None:
        book = self.book
        if book is None:
            return None
        levels = book.asks if is_buy else book.bids
        return levels[0].price if levels else None

    def _crosses(self, is_buy: bool, limit: Decimal | None) -> bool:
        """Whether a limit order would take liquidity still available in the current book."""
        book = self.book
        if book is None or limit is None:
            return False
        if is_buy:
            return self._ask_index < len(book.asks) and book.asks[self._ask_index].price <= limit
        return self._bid_index < len(book.bids) and book.bids[self._bid_index].price >= limit

    def _available(self, is_buy: bool, limit: Decimal | None, wanted: Decimal) -> bool:
        """Whether the book still holds `wanted` at prices no worse than `limit`."""
        book = self.book
        if book is None:
            return False
        if is_buy:
            levels, index, used = book.asks, self._ask_index, self._ask_used
        else:
            levels, index, used = book.bids, self._bid_index, self._bid_used
        total = -used
        for level in levels[index:]:
            if limit is not None and (level.price > limit if is_buy else level.price < limit):
                break
            total += level.quantity
            if total >= wanted:
                return True
        return False

    def _fill(self, quantity: Decimal, price: Decimal, rate: Decimal, liquidity: Liquidity, ts: datetime) -> Fill:
        fee = _mul(_mul(quantity, price), rate).quantize(STORED_QUANTUM, ROUND_HALF_EVEN, _ROUND)
        return Fill(self._next_trade_id(), quantity, price, fee, liquidity, ts)

    def _take(self, order: _Order, limit: Decimal | None, ts: datetime, events: list[Event]) -> None:
        """Fill `order` as taker from the book, best level first, at each level's price, no worse than `limit`."""
        book = self.book
        if book is None:
            return
        is_buy = order.is_buy
        if is_buy:
            levels, index, used = book.asks, self._ask_index, self._ask_used
        else:
            levels, index, used = book.bids, self._bid_index, self._bid_used
        remaining = order.remaining
        count = len(levels)
        rate = self.taker_fee_rate
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
            events.append(Filled(order.order_id, self._fill(take, price, rate, "taker", ts)))
        order.remaining = remaining
        if is_buy:
            self._ask_index, self._ask_used = index, used
        else:
            self._bid_index, self._bid_used = index, used

    def _work_market(self, order: _Order, tif: TimeInForce, ts: datetime, events: list[Event]) -> None:
        if tif == _FOK and not self._available(order.is_buy, None, order.remaining):
            events.append(Cancelled(order.order_id, _FOK_UNFILLED))
            return
        self._take(order, None, ts, events)
        if order.remaining:
            events.append(Cancelled(order.order_id, _IOC_REMAINDER))

    def _work_limit(self, order: _Order, limit: Decimal, tif: TimeInForce, ts: datetime, events: list[Event]) -> None:
        is_buy = order.is_buy
        if tif == _FOK and not self._available(is_buy, limit, order.remaining):
            events.append(Cancelled(order.order_id, _FOK_UNFILLED))
            return
        book = self.book
        if book is not None and (
            (self._ask_index < len(book.asks) and book.asks[self._ask_index].price <= limit)
            if is_buy
            else (self._bid_index < len(book.bids) and book.bids[self._bid_index].price >= limit)
        ):
            self._take(order, limit, ts, events)
            if not order.remaining:
                return
        if tif == _GTC:
            # Exact: the limit is on the tick (validated), so the quotient is a whole number of at most 21 digits.
            (self._bids if is_buy else self._asks).add(order, int(limit / self._tick), limit)
            self._orders[order.order_id] = order
            events.append(Rested(order.order_id))
        else:
            events.append(Cancelled(order.order_id, _IOC_REMAINDER))

    def _hold_stop(self, order: _Order, events: list[Event]) -> None:
        stop = _required(order.request.stop_price, order.request)
        last = self.last_trade_price
        if last is not None and (last >= stop if order.is_buy else last <= stop):
            detail = f"the last trade at {last} is already through the stop price {stop}"
            events.append(Rejected(order.order_id, RejectCode.STOP_WOULD_TRIGGER_IMMEDIATELY, detail))
            return
        (self._buy_stops if order.is_buy else self._sell_stops).add(order, int(stop / self._tick), stop)
        self._orders[order.order_id] = order
        events.append(Rested(order.order_id))

    def _work_triggered(self, order: _Order, ts: datetime, events: list[Event]) -> None:
        del self._orders[order.order_id]
        events.append(Triggered(order.order_id, ts))
        request = order.request
        if request.type == _STOP:
            # Market orders are IOC by nature; a stop's GTC was its wait for the trigger.
            self._work_market(order, _IOC, ts, events)
            return
        # It joins the book now: that is its time priority, behind the orders already resting.
        self._seq += 1
        order.seq = self._seq
        order.triggered_at = ts
        order.is_alive = True
        self._work_limit(order, _required(request.price, request), request.time_in_force, ts, events)

    def _pop_triggered(self, price: Decimal) -> list[_Order]:
        """Remove and return the stops a trade at `price` reaches, in submission order."""
        triggered: list[_Order] = []
        buy_stops, sell_stops = self._buy_stops, self._sell_stops
        level = buy_stops.lowest()
        while level is not None and level.price <= price:
            triggered.extend(o for o in buy_stops.remove_lowest().orders if o.is_alive)
            level = buy_stops.lowest()
        level = sell_stops.highest()
        while level is not None and level.price >= price:
            triggered.extend(o for o in sell_stops.remove_highest().orders if o.is_alive)
            level = sell_stops.highest()
        triggered.sort(key=lambda o: o.seq)
        for order in triggered:
            order.is_alive = False  # off the stop ladders; a stop-limit comes alive again on the book
        return triggered

    def _fill_maker(self, queue: _Level, order: _Order, take: Decimal, ts: datetime, events: list[Event]) -> None:
        """Fill the head of `queue` by `take` at its own price; a completed order leaves the queue."""
        remaining = order.remaining - take
        order.remaining = remaining
        events.append(Filled(order.order_id, self._fill(take, queue.price, self.maker_fee_rate, "maker", ts)))
        if not remaining:
            queue.orders.popleft()
            queue.count -= 1
            order.is_alive = False
            del self._orders[order.order_id]

    def _match_trade(
        self, ladder: _Ladder, is_buy: bool, price: Decimal, quantity: Decimal, ts: datetime, events: list[Event]
    ) -> None:
        """Share a trade's `quantity` among the resting orders it prints at or through, best first."""
        while quantity:
            queue = ladder.highest() if is_buy else ladder.lowest()
            if queue is None or (queue.price < price if is_buy else queue.price > price):
                return
            orders = queue.orders
            while queue.count and quantity:
                order = orders[0]
                if not order.is_alive:
                    orders.popleft()
                    continue
                take = order.remaining if order.remaining <= quantity else quantity
                quantity -= take
                self._fill_maker(queue, order, take, ts, events)
            if queue.count:
                return
            if is_buy:
                ladder.remove_highest()
            else:
                ladder.remove_lowest()

    def _match_book(
        self, ladder: _Ladder, is_buy: bool, levels: Sequence[BookLevel], ts: datetime, events: list[Event]
    ) -> tuple[int, Decimal]:
        """Fill resting orders against the new book's `levels` (best first) that quote at or through them.

        The best resting order meets the best level; when it cannot cross that level, no other order can, so the
        loop ends. Returns where the book's consumption stopped: the level index and the quantity used of it.
        """
        count = len(levels)
        index, used = 0, _ZERO
        while index < count:
            queue = ladder.highest() if is_buy else ladder.lowest()
            if queue is None:
                break
            best = queue.price
            level = levels[index]
            if level.price > best if is_buy else level.price < best:
                break
            orders = queue.orders
            while queue.count:
                order = orders[0]
                if not order.is_alive:
                    orders.popleft()
                    continue
                available = level.quantity - used
                if available > order.remaining:
                    take = order.remaining
                    used += take
                else:
                    take = available
                    index += 1
                    used = _ZERO
                self._fill_maker(queue, order, take, ts, events)
                if index == count:
                    break
                level = levels[index]
                if level.price > best if is_buy else level.price < best:
                    break
            if queue.count:
                break
            if is_buy:
                ladder.remove_highest()
            else:
                ladder.remove_lowest()
        return index, used

    def _ticks_checked(self, price: Decimal, request: OrderRequest) -> int:
        ticks = price / self._tick
        if ticks != ticks.to_integral_value():
            # The instrument's tick changed since the order was placed: queueing it would merge distinct prices.
            raise ValueError(f"order {request.order_id}: {price} is not on the tick {self._tick}")
        return int(ticks)

    def _check_restorable(self, stored: OpenOrder) -> None:
        request = stored.request
        if request.order_id in self._orders:
            raise DuplicateOrder(f"order {request.order_id} appears twice")
        is_triggered = stored.triggered_at is not None
        is_on_book = request.type == _LIMIT or (request.type == OrderType.STOP_LIMIT and is_triggered)
        is_waiting = request.type in (_STOP, OrderType.STOP_LIMIT) and not is_triggered
        if not (is_on_book or is_waiting):
            raise ValueError(f"order {request.order_id}: a {request.type} order (triggered={is_triggered}) never rests")
        if is_on_book and (request.time_in_force != _GTC or request.price is None):
            raise ValueError(f"order {request.order_id}: only GTC orders with a price rest on the book")
        if is_waiting and request.stop_price is None:
            raise ValueError(f"order {request.order_id}: a waiting stop needs a stop price")
        filled = stored.filled_quantity
        if not _is_storable(request.quantity) or not (filled == 0 or _is_storable(filled)):
            raise ValueError(f"order {request.order_id}: quantity or filled {filled} is not storable")
        if not filled < request.quantity or (filled and not is_on_book):
            raise ValueError(f"order {request.order_id}: filled {filled} of {request.quantity} cannot be working")
