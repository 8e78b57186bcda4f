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

Events (`matching_events`, re-exported here): `Filled` per execution, `Rested` when an order starts working (on the
book, or a stop waiting for its trigger), `Triggered`, `Cancelled` (with why) and `Rejected` (with the validation code
and detail). An order refused by validation is an event, not an exception; exceptions are for the caller's mistakes
(a duplicate id, a naive timestamp, cancelling an order that is not working).

Everything is deterministic: no clock, no randomness; trade ids come from `id_source` in event order, so the same
calls give the same events.

The parts: `matching_events` (requests, stored orders, events, errors; re-exported here), `resting_book` (the engine's
own book: price levels by integer ticks, a heap for the best one, O(1) cancel), `book_liquidity` (what is left of the
latest L2 snapshot for takers, and the storable checks) and this module, which works orders through them.

Speed (`benchmarks/matching.py`): every paper order and market step runs through here, and in CPython the cost is
counted in bytecodes, calls and objects per operation, so the common case is written for that. A plainly valid limit
or market order is accepted by a few comparisons inline (quantity bounds, a remainder for the step, the limit's
integer ratio for the tick, which is also its key in ticks); anything else, or any doubt, goes to `OrderValidator`,
which stays the authority and words the rejection. Orders that never rest (market, IOC, FOK) get no queue record,
and a limit that rests without crossing is queued inline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal, getcontext

from cival.domain.book_liquidity import BookLiquidity, check_book_storable, is_storable, multiply_exact, round_fee
from cival.domain.candles import TradeTick
from cival.domain.instruments import Instrument
from cival.domain.matching_events import (
    Cancelled,
    DuplicateOrder,
    Event,
    Filled,
    OpenOrder,
    OrderNotWorking,
    OrderRequest,
    Rejected,
    Rested,
    Triggered,
)
from cival.domain.order_book import BookLevel, OrderBookL2
from cival.domain.order_validation import OrderValidator
from cival.domain.orders import (
    MAX_STORED,
    STORED_QUANTUM,
    CancelReason,
    Fill,
    OrderRejected,
    OrderSide,
    OrderType,
    RejectCode,
    TimeInForce,
)
from cival.domain.resting_book import Ladder, PriceLevel, RestingOrder

__all__ = [
    "Cancelled",
    "DuplicateOrder",
    "Event",
    "Filled",
    "MatchingEngine",
    "OpenOrder",
    "OrderNotWorking",
    "OrderRequest",
    "Rejected",
    "Rested",
    "Triggered",
]

_ZERO = Decimal(0)
# Sums and differences use plain operators (three times cheaper than context methods, and this is the hot path):
# every quantity the engine adds or subtracts is checked on entry to have at most 8 decimals and be below 10**12,
# so a result has at most 21 digits, exact in any context that keeps that many (Python's default keeps 28).
_MIN_PRECISION = 21
# Enum members as module constants: a class attribute lookup on an Enum costs as much as the comparison itself.
_BUY, _SELL = OrderSide.BUY, OrderSide.SELL
_MARKET, _LIMIT, _STOP = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP
_GTC, _IOC, _FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
_REQUESTED, _IOC_REMAINDER, _FOK_UNFILLED = (
    CancelReason.REQUESTED,
    CancelReason.IOC_REMAINDER,
    CancelReason.FOK_UNFILLED,
)


def _required(value: Decimal | None, request: OrderRequest) -> Decimal:
    # validate_order (or _check_restorable) has already ensured the value; this narrows the type.
    if value is None:
        raise ValueError(f"order {request.order_id}: a {request.type} order is missing its price or stop price")
    return value


def _refuse_context() -> None:
    raise RuntimeError(
        f"this thread's decimal context keeps {getcontext().prec} digits; exact matching needs {_MIN_PRECISION}"
    )


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
        # The quick acceptance (`submit`): the instrument's rules as bounds and integers. The instrument is frozen and
        # checks that its units have at most 8 decimals and its minimum size is positive.
        self._is_quick = instrument.is_active
        self._step = instrument.step_size
        self._min_size = instrument.min_order_size
        self._max_size = min(instrument.max_order_size, MAX_STORED - STORED_QUANTUM)
        self._min_notional = instrument.min_notional
        tick_numerator, tick_denominator = self._tick_ratio = instrument.tick_size.as_integer_ratio()
        # A price on the tick is below MAX_STORED exactly when its ticks are below this.
        self._tick_limit = -(-int(MAX_STORED) * tick_denominator // tick_numerator)
        self._liquidity = BookLiquidity(id_source)
        self.last_trade_price: Decimal | None = None
        self._orders: dict[str, RestingOrder] = {}
        self._bids = Ladder(highest_first=True)
        self._asks = Ladder(highest_first=False)
        self._buy_stops = Ladder(highest_first=False)  # the lowest triggers first, on a trade at or above it
        self._sell_stops = Ladder(highest_first=True)
        self._seq = 0

    @property
    def book(self) -> OrderBookL2 | None:
        """The latest L2 snapshot (`on_book`), which takers fill against."""
        return self._liquidity.book

    # -- inputs ---------------------------------------------------------------------------------------------------

    def submit(self, request: OrderRequest, book: OrderBookL2 | None = None) -> list[Event]:
        """Validate and work a new order; with `book`, exactly `on_book(book)` first (its events come first)."""
        order_id = request.order_id
        if order_id in self._orders:
            raise DuplicateOrder(f"order {order_id} is already working")
        ts = request.ts
        if ts.tzinfo is None:
            raise ValueError(f"order {order_id}: ts {ts.isoformat()} is naive; it must be timezone-aware")
        events = self.on_book(book) if book is not None else []
        if getcontext().prec < _MIN_PRECISION:
            _refuse_context()
        order_type = request.type
        side = request.side
        is_buy = side == _BUY
        quantity = request.quantity
        # The quick acceptance of a plainly valid order, a subset of what the validator accepts: the instrument's
        # quantity rules here, the shape, price and notional below. False means "ask the validator", not "invalid".
        # The remainder is exact: the quantity is bounded, so the quotient has at most 20 digits, and the context
        # keeps at least 21 (checked above).
        is_plain = (
            self._is_quick
            and (side is _BUY or side is _SELL)
            and request.stop_price is None
            and type(quantity) is Decimal
            and quantity.is_finite()
            and self._min_size <= quantity <= self._max_size
            and not quantity % self._step
        )
        if order_type == _LIMIT:
            price = request.price
            tif = request.time_in_force
            ticks = 0
            if (
                is_plain
                and (tif is _GTC or ((tif is _IOC or tif is _FOK) and not request.post_only))
                and type(price) is Decimal
                and price.is_finite()
            ):
                # The price in ticks, exactly; on the tick and in range, or not plain.
                numerator, denominator = price.as_integer_ratio()
                tick_numerator, tick_denominator = self._tick_ratio
                ticks, off_tick = divmod(numerator * tick_denominator, denominator * tick_numerator)
                minimum = self._min_notional
                if (
                    off_tick
                    or not 0 < ticks < self._tick_limit
                    or (minimum and multiply_exact(quantity, price) < minimum)
                ):
                    ticks = 0
            if not ticks and not self._is_valid(request, is_buy, events):
                return events
            if price is None:
                raise ValueError(f"order {order_id}: a limit order without a price passed validation")
            # `BookLiquidity.crosses`, and below the resting tail of `_work_limit`, inline: most orders go this way.
            best = self._liquidity.best_ask if is_buy else self._liquidity.best_bid
            crosses = best is not None and (best <= price if is_buy else best >= price)
            if request.post_only and crosses:
                detail = f"post-only {side} at {price} would take liquidity from the book"
                events.append(Rejected(order_id, RejectCode.POST_ONLY_WOULD_CROSS, detail))
            elif crosses or not ticks or tif is not _GTC:
                self._work_limit(request, is_buy, quantity, price, ticks or None, None, events)
            else:  # `Ladder.add`
                ladder = self._bids if is_buy else self._asks
                level = ladder.levels.get(ticks) or ladder.open_level(ticks, price)
                self._seq += 1
                order = RestingOrder(request, quantity, self._seq, None, level)
                level.orders.append(order)
                level.count += 1
                self._orders[order_id] = order
                events.append(Rested(order_id))
        elif order_type == _MARKET:
            tif = request.time_in_force
            if is_plain and (tif is _IOC or tif is _FOK) and request.price is None and not request.post_only:
                minimum, reference = self._min_notional, self._liquidity.reference_price(is_buy)
                is_plain = not minimum or reference is None or multiply_exact(quantity, reference) >= minimum
            else:
                is_plain = False
            if is_plain or self._is_valid(request, is_buy, events):
                self._work_market(order_id, is_buy, quantity, tif, ts, events)
        elif self._is_valid(request, is_buy, events):
            self._hold_stop(request, is_buy, events)
        return events

    def cancel(self, order_id: str) -> list[Event]:
        """Cancel a working order; raises `OrderNotWorking` for an unknown or finished one."""
        order = self._orders.pop(order_id, None)
        if order is None:
            raise OrderNotWorking(f"order {order_id} is not working: unknown, or already filled, cancelled or rejected")
        order.is_alive = False
        order.level.ladder.discard(order)
        return [Cancelled(order_id, _REQUESTED)]

    def on_trade(self, price: Decimal, quantity: Decimal, ts: datetime) -> list[Event]:
        """A market trade: fill resting orders it prints at or through, then trigger the stops it reaches."""
        if not isinstance(price, Decimal) or not price.is_finite() or price <= _ZERO:
            raise ValueError(f"trade price {price!r} must be a positive Decimal")
        if not isinstance(quantity, Decimal) or not is_storable(quantity):
            raise ValueError(f"trade quantity {quantity!r} must be positive, below 10**12, with at most 8 decimals")
        if ts.tzinfo is None:
            raise ValueError(f"trade ts {ts.isoformat()} is naive; it must be timezone-aware")
        if getcontext().prec < _MIN_PRECISION:
            _refuse_context()
        events: list[Event] = []
        self.last_trade_price = price
        best = self._bids.best()
        if best is not None and best.price >= price:
            self._match_trade(self._bids, True, price, quantity, ts, events)
        best = self._asks.best()
        if best is not None and best.price <= price:
            self._match_trade(self._asks, False, price, quantity, ts, events)
        if self._buy_stops.levels or self._sell_stops.levels:
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
        check_book_storable(book)
        if getcontext().prec < _MIN_PRECISION:
            _refuse_context()
        events: list[Event] = []
        ts = book.timestamp
        asks_taken = self._match_book(self._bids, True, book.asks, ts, events)
        bids_taken = self._match_book(self._asks, False, book.bids, ts, events)
        self._liquidity.reset(book, asks_taken, bids_taken)
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
            is_buy = request.side == _BUY
            if request.type == _LIMIT or stored.triggered_at is not None:
                price = _required(request.price, request)
                ladder = self._bids if is_buy else self._asks
            else:
                price = _required(request.stop_price, request)
                ladder = self._buy_stops if is_buy else self._sell_stops
            ticks = self._ticks_checked(price, request)
            self._seq += 1
            remaining = request.quantity - stored.filled_quantity
            self._orders[request.order_id] = ladder.add(
                request, remaining, self._seq, stored.triggered_at, ticks, price
            )

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

    # -- validation -----------------------------------------------------------------------------------------------

    def _is_valid(self, request: OrderRequest, is_buy: bool, events: list[Event]) -> bool:
        """Run the validator; a refusal becomes a `Rejected` event."""
        try:
            self._validate(
                request.side,
                request.type,
                request.quantity,
                request.price,
                request.stop_price,
                request.time_in_force,
                request.post_only,
                self._liquidity.reference_price(is_buy) if request.type == _MARKET else None,
            )
        except OrderRejected as exc:
            events.append(Rejected(request.order_id, exc.code, exc.detail))
            return False
        return True

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
        if not is_storable(request.quantity) or not (filled == 0 or is_storable(filled)):
            raise ValueError(f"order {request.order_id}: quantity or filled {filled} is not storable")
        if not filled < request.quantity or (filled and not is_on_book):
            raise ValueError(f"order {request.order_id}: filled {filled} of {request.quantity} cannot be working")

    # -- taking liquidity -----------------------------------------------------------------------------------------

    def _work_market(
        self, order_id: str, is_buy: bool, quantity: Decimal, tif: TimeInForce, ts: datetime, events: list[Event]
    ) -> None:
        liquidity = self._liquidity
        if tif == _FOK and not liquidity.available(is_buy, None, quantity):
            events.append(Cancelled(order_id, _FOK_UNFILLED))
            return
        if liquidity.take(order_id, is_buy, quantity, None, self.taker_fee_rate, ts, events):
            events.append(Cancelled(order_id, _IOC_REMAINDER))

    def _work_limit(
        self,
        request: OrderRequest,
        is_buy: bool,
        remaining: Decimal,
        limit: Decimal,
        ticks: int | None,
        triggered_at: datetime | None,
        events: list[Event],
    ) -> None:
        """Take what crosses, then rest the remainder (GTC) or cancel it.

        `ticks` is the limit's, when `submit` has it; `triggered_at` is set for a stop-limit that has just triggered:
        it works from then, and joins the queue behind the orders already resting.
        """
        order_id = request.order_id
        tif = request.time_in_force
        liquidity = self._liquidity
        if tif == _FOK and not liquidity.available(is_buy, limit, remaining):
            events.append(Cancelled(order_id, _FOK_UNFILLED))
            return
        if liquidity.crosses(is_buy, limit):
            ts = triggered_at or request.ts
            remaining = liquidity.take(order_id, is_buy, remaining, limit, self.taker_fee_rate, ts, events)
            if not remaining:
                return
        if tif != _GTC:
            events.append(Cancelled(order_id, _IOC_REMAINDER))
            return
        if ticks is None:
            # Exact: the limit is on the tick (validated), so the quotient is a whole number of at most 21 digits.
            ticks = int(limit / self._tick)
        self._seq += 1
        ladder = self._bids if is_buy else self._asks
        self._orders[order_id] = ladder.add(request, remaining, self._seq, triggered_at, ticks, limit)
        events.append(Rested(order_id))

    # -- stops ----------------------------------------------------------------------------------------------------

    def _hold_stop(self, request: OrderRequest, is_buy: bool, events: list[Event]) -> None:
        order_id = request.order_id
        stop = _required(request.stop_price, request)
        last = self.last_trade_price
        if last is not None and (last >= stop if is_buy else last <= stop):
            detail = f"the last trade at {last} is already through the stop price {stop}"
            events.append(Rejected(order_id, RejectCode.STOP_WOULD_TRIGGER_IMMEDIATELY, detail))
            return
        self._seq += 1
        ladder = self._buy_stops if is_buy else self._sell_stops
        ticks = int(stop / self._tick)
        self._orders[order_id] = ladder.add(request, request.quantity, self._seq, None, ticks, stop)
        events.append(Rested(order_id))

    def _work_triggered(self, order: RestingOrder, ts: datetime, events: list[Event]) -> None:
        request, order_id = order.request, order.order_id
        del self._orders[order_id]
        events.append(Triggered(order_id, ts))
        is_buy = request.side == _BUY
        if request.type == _STOP:
            # Market orders are IOC by nature; a stop's GTC was its wait for the trigger.
            self._work_market(order_id, is_buy, order.remaining, _IOC, ts, events)
            return
        self._work_limit(request, is_buy, order.remaining, _required(request.price, request), None, ts, events)

    def _pop_triggered(self, price: Decimal) -> list[RestingOrder]:
        """Remove and return the stops a trade at `price` reaches, in submission order."""
        triggered: list[RestingOrder] = []
        buy_stops, sell_stops = self._buy_stops, self._sell_stops
        level = buy_stops.best()
        while level is not None and level.price <= price:
            buy_stops.remove_best()
            triggered.extend(o for o in level.orders if o.is_alive)
            level = buy_stops.best()
        level = sell_stops.best()
        while level is not None and level.price >= price:
            sell_stops.remove_best()
            triggered.extend(o for o in level.orders if o.is_alive)
            level = sell_stops.best()
        triggered.sort(key=lambda o: o.seq)
        for order in triggered:
            order.is_alive = False  # off the stop ladders; a stop-limit comes back as a new record on the book
        return triggered

    # -- resting orders -------------------------------------------------------------------------------------------

    def _fill_maker(
        self, queue: PriceLevel, order: RestingOrder, take: Decimal, ts: datetime, events: list[Event]
    ) -> None:
        """Fill the head of `queue` by `take` at its own price; a completed order leaves the queue."""
        remaining = order.remaining - take
        order.remaining = remaining
        price = queue.price
        order_id = order.order_id
        fee = round_fee(multiply_exact(multiply_exact(take, price), self.maker_fee_rate), STORED_QUANTUM)
        events.append(Filled(order_id, Fill(self._next_trade_id(), take, price, fee, "maker", ts)))
        if not remaining:
            queue.orders.popleft()
            queue.count -= 1
            order.is_alive = False
            del self._orders[order_id]

    def _match_trade(
        self, ladder: Ladder, is_buy: bool, price: Decimal, quantity: Decimal, ts: datetime, events: list[Event]
    ) -> None:
        """Share a trade's `quantity` among the resting orders it prints at or through, best first."""
        while quantity:
            queue = ladder.best()
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
            ladder.remove_best()

    def _match_book(
        self, ladder: Ladder, is_buy: bool, levels: Sequence[BookLevel], ts: datetime, events: list[Event]
    ) -> tuple[int, Decimal]:
        """Fill resting orders against the new book's `levels` (best first) that quote at or through them.

        The best resting order meets the best level; when it cannot cross that level, no other order can, so the
        loop ends. Returns where the book's consumption stopped: the level index and the quantity used of it.
        """
        count = len(levels)
        index, used = 0, _ZERO
        while index < count:
            queue = ladder.best()
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
            ladder.remove_best()
        return index, used
