"""The matching engine equals a straightforward reference on random operation sequences.

The engine keeps prices in integer ticks, a heap of price levels with lazy deletion, the book's consumption as an
index, and accepts plainly valid orders with a few comparisons of its own before the validator. The reference below
does the same job the obvious way: Decimals throughout, every resting order in one list sorted on each use, the
book's remaining quantity per level, and `OrderValidator` for every order. Both must give the same events (trade
ids, fees and detail texts included), the same errors and the same working orders after every step, on instruments
whose units are and are not powers of ten, with and without a minimum notional, and with prices and quantities that
are off the tick or step, written with trailing zeros or an exponent, negative, too large, or not finite.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cival.domain.instruments import Instrument
from cival.domain.matching import (
    Cancelled,
    DuplicateOrder,
    Event,
    Filled,
    MatchingEngine,
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
    CancelReason,
    Fill,
    Liquidity,
    OrderRejected,
    OrderSide,
    OrderType,
    RejectCode,
    TimeInForce,
    quantize_stored,
)

D = Decimal
T0 = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
BUY, SELL = OrderSide.BUY, OrderSide.SELL
MARKET, LIMIT, STOP, STOP_LIMIT = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
MAKER_RATE, TAKER_RATE = D("0.001"), D("0.0025")
# Powers of ten, no minimum notional; and a tick and step that are not, with a minimum notional that bites.
PLAIN = Instrument("paper", "BTC/USDT", "BTC", "USDT", D("0.01"), D("0.001"), D("0.001"), D(1000))
ODD = Instrument("paper", "BTC/USDT", "BTC", "USDT", D("0.05"), D("0.002"), D("0.004"), D(500), min_notional=D(20))


@dataclass
class Working:
    request: OrderRequest
    remaining: Decimal
    priority: int
    triggered_at: datetime | None = None

    @property
    def is_buy(self) -> bool:
        return self.request.side == BUY

    @property
    def is_waiting_stop(self) -> bool:
        return self.request.type in (STOP, STOP_LIMIT) and self.triggered_at is None

    @property
    def limit(self) -> Decimal:
        assert self.request.price is not None
        return self.request.price

    @property
    def stop(self) -> Decimal:
        assert self.request.stop_price is not None
        return self.request.stop_price


def through(price: Decimal, limit: Decimal, is_buy: bool) -> bool:
    """Whether a buyer (seller) with this limit would not pay (accept) `price`."""
    return price > limit if is_buy else price < limit


class Reference:
    """The engine's documented behaviour, written the obvious way."""

    def __init__(self, instrument: Instrument, trade_ids: Iterator[int]) -> None:
        self.validate = OrderValidator(instrument).validate
        self.trade_ids = trade_ids
        self.priorities = itertools.count()
        self.book: OrderBookL2 | None = None
        self.left: dict[bool, list[Decimal]] = {True: [], False: []}  # what a buy (sell) can still take, per level
        self.last_trade: Decimal | None = None
        self.working: dict[str, Working] = {}

    # -- inputs -----------------------------------------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> list[Event]:
        if request.order_id in self.working:
            raise DuplicateOrder(request.order_id)
        order = Working(request, request.quantity, -1)
        reference = None
        if request.type == MARKET and self.book is not None:
            levels = self.book.asks if order.is_buy else self.book.bids
            reference = levels[0].price if levels else None
        try:
            self.validate(
                request.side,
                request.type,
                request.quantity,
                request.price,
                request.stop_price,
                request.time_in_force,
                request.post_only,
                reference,
            )
        except OrderRejected as exc:
            return [Rejected(request.order_id, exc.code, exc.detail)]
        events: list[Event] = []
        if request.type == LIMIT:
            if request.post_only and self.available(order.is_buy, order.limit)[:1]:
                detail = f"post-only {request.side} at {order.limit} would take liquidity from the book"
                return [Rejected(request.order_id, RejectCode.POST_ONLY_WOULD_CROSS, detail)]
            self.work_limit(order, request.ts, events)
        elif request.type == MARKET:
            self.work_market(order, request.time_in_force, request.ts, events)
        else:
            last = self.last_trade
            if last is not None and (last >= order.stop if order.is_buy else last <= order.stop):
                detail = f"the last trade at {last} is already through the stop price {order.stop}"
                return [Rejected(request.order_id, RejectCode.STOP_WOULD_TRIGGER_IMMEDIATELY, detail)]
            self.rest(order, events)
        return events

    def cancel(self, order_id: str) -> list[Event]:
        if order_id not in self.working:
            raise OrderNotWorking(order_id)
        del self.working[order_id]
        return [Cancelled(order_id, CancelReason.REQUESTED)]

    def on_trade(self, price: Decimal, quantity: Decimal, ts: datetime) -> list[Event]:
        events: list[Event] = []
        self.last_trade = price
        for is_buy in (True, False):
            left = quantity  # each side meets the whole trade: a print says a buyer and a seller met
            for order in self.queue(is_buy):
                if not left or (order.limit < price if is_buy else order.limit > price):
                    break
                take = min(order.remaining, left)
                left -= take
                self.fill_maker(order, take, ts, events)
        reached = [
            o for o in self.working.values() if o.is_waiting_stop and (price >= o.stop if o.is_buy else price <= o.stop)
        ]
        for order in sorted(reached, key=lambda o: o.priority):
            del self.working[order.request.order_id]
            events.append(Triggered(order.request.order_id, ts))
            if order.request.type == STOP:
                self.work_market(order, IOC, ts, events)
            else:
                order.triggered_at = ts
                self.work_limit(order, ts, events)
        return events

    def on_book(self, book: OrderBookL2) -> list[Event]:
        self.book = book
        self.left = {True: [level.quantity for level in book.asks], False: [level.quantity for level in book.bids]}
        events: list[Event] = []
        for is_buy in (True, False):
            # Resting orders best first meet the book's levels best first; one that cannot cross the next level stops
            # the side (no order behind it can cross it either).
            for order in self.queue(is_buy):
                for i in (i for _, i in self.available(is_buy, order.limit)):
                    take = min(order.remaining, self.left[is_buy][i])
                    self.left[is_buy][i] -= take
                    self.fill_maker(order, take, book.timestamp, events)
                    if not order.remaining:
                        break
                if order.remaining:
                    break
        return events

    def restore(self, stored: list[OpenOrder]) -> None:
        for item in sorted(stored, key=lambda o: o.priority_ts):
            request = item.request
            remaining = request.quantity - item.filled_quantity
            self.working[request.order_id] = Working(request, remaining, next(self.priorities), item.triggered_at)

    def open_orders(self) -> list[OpenOrder]:
        ordered = sorted(self.working.values(), key=lambda o: o.priority)
        return [OpenOrder(o.request, o.request.quantity - o.remaining, o.triggered_at) for o in ordered]

    # -- internals --------------------------------------------------------------------------------------------------

    def queue(self, is_buy: bool) -> list[Working]:
        """The resting limits of one side, best price first, then time priority."""
        side = [o for o in self.working.values() if not o.is_waiting_stop and o.is_buy == is_buy]
        return sorted(side, key=lambda o: (-o.limit if is_buy else o.limit, o.priority))

    def available(self, is_buy: bool, limit: Decimal | None) -> list[tuple[Decimal, int]]:
        """(price, index) of the book's levels a buy (sell) can still take from, best first, within `limit`."""
        if self.book is None:
            return []
        levels = self.book.asks if is_buy else self.book.bids
        return [
            (level.price, i)
            for i, level in enumerate(levels)
            if self.left[is_buy][i] and (limit is None or not through(level.price, limit, is_buy))
        ]

    def work_market(self, order: Working, tif: TimeInForce, ts: datetime, events: list[Event]) -> None:
        self.work(order, None, tif, ts, events)

    def work_limit(self, order: Working, ts: datetime, events: list[Event]) -> None:
        self.work(order, order.limit, order.request.time_in_force, ts, events)

    def work(self, order: Working, limit: Decimal | None, tif: TimeInForce, ts: datetime, events: list[Event]) -> None:
        levels = self.available(order.is_buy, limit)
        if tif == FOK and sum((self.left[order.is_buy][i] for _, i in levels), D(0)) < order.remaining:
            events.append(Cancelled(order.request.order_id, CancelReason.FOK_UNFILLED))
            return
        for price, i in levels:
            if not order.remaining:
                break
            take = min(order.remaining, self.left[order.is_buy][i])
            self.left[order.is_buy][i] -= take
            order.remaining -= take
            events.append(Filled(order.request.order_id, self.fill(take, price, TAKER_RATE, "taker", ts)))
        if not order.remaining:
            return
        if tif == GTC and limit is not None:
            self.rest(order, events)
        else:
            events.append(Cancelled(order.request.order_id, CancelReason.IOC_REMAINDER))

    def rest(self, order: Working, events: list[Event]) -> None:
        order.priority = next(self.priorities)
        self.working[order.request.order_id] = order
        events.append(Rested(order.request.order_id))

    def fill_maker(self, order: Working, take: Decimal, ts: datetime, events: list[Event]) -> None:
        order.remaining -= take
        events.append(Filled(order.request.order_id, self.fill(take, order.limit, MAKER_RATE, "maker", ts)))
        if not order.remaining:
            del self.working[order.request.order_id]

    def fill(self, quantity: Decimal, price: Decimal, rate: Decimal, liquidity: Liquidity, ts: datetime) -> Fill:
        return Fill(
            f"t{next(self.trade_ids)}", quantity, price, quantize_stored(quantity * price * rate), liquidity, ts
        )


# -- random operations ------------------------------------------------------------------------------------------

# Amounts as the engine may meet them: mostly on the grid, sometimes written differently (trailing zeros, an
# exponent), now and then off the grid, zero, negative, too large to store or not a number.
ODDITIES = st.sampled_from(["plain"] * 20 + ["zeros", "exponent"] * 2 + ["off", "zero", "negative", "huge", "nan"])


def amount(units: int, unit: Decimal, oddity: str) -> Decimal:
    value = units * unit
    if oddity == "zeros":
        return value.quantize(unit.scaleb(-3))
    if oddity == "exponent":
        return D(f"{value:E}")
    if oddity == "off":
        return value + unit / 4
    if oddity == "zero":
        return D(0)
    if oddity == "negative":
        return -value
    if oddity == "huge":
        return value + 10**12
    if oddity == "nan":
        return D("NaN")
    return value


SUBMIT = st.tuples(
    st.just("submit"),
    st.sampled_from(OrderSide),
    st.sampled_from([LIMIT, LIMIT, LIMIT, MARKET, STOP, STOP_LIMIT]),
    st.one_of(st.integers(1, 20), st.integers(1, 600)),  # quantity in steps
    ODDITIES,
    st.integers(-30, 30),  # limit price: 2,000 ticks + n
    ODDITIES,
    st.integers(-30, 30),  # stop price
    ODDITIES,
    st.integers(0, 19),  # time in force: mostly one the type accepts, sometimes any (see `time_in_force`)
    st.integers(0, 9),  # post-only when 0 (and mostly a limit: see below)
)
CANCEL = st.tuples(st.just("cancel"), st.integers(0, 10_000))
TRADE = st.tuples(st.just("trade"), st.integers(-35, 35), st.integers(1, 600))
LEVELS = st.lists(st.integers(1, 600), max_size=5)
BOOK = st.tuples(st.just("book"), st.integers(-30, 30), LEVELS, LEVELS)
RESTART = st.tuples(st.just("restart"))
OPERATIONS = st.lists(
    st.one_of(SUBMIT, SUBMIT, SUBMIT, SUBMIT, CANCEL, TRADE, TRADE, BOOK, RESTART), min_size=20, max_size=80
)


def time_in_force(order_type: OrderType, choice: int) -> TimeInForce:
    if choice < 2:
        return (GTC, IOC)[choice]
    if order_type is MARKET:
        return FOK if choice % 2 else IOC
    if order_type is STOP:
        return GTC
    return (GTC, GTC, GTC, IOC, FOK)[choice % 5]


def make_book(instrument: Instrument, mid: int, bids: list[int], asks: list[int], ts: datetime) -> OrderBookL2:
    tick, step = instrument.tick_size, instrument.step_size
    return OrderBookL2(
        "BTC/USDT",
        "paper",
        tuple(BookLevel((2000 + mid - 1 - 2 * i) * tick, q * step) for i, q in enumerate(bids)),
        tuple(BookLevel((2000 + mid + 1 + 2 * i) * tick, q * step) for i, q in enumerate(asks)),
        ts,
    )


def make_engine(instrument: Instrument, trade_ids: Iterator[int]) -> MatchingEngine:
    return MatchingEngine(
        instrument, maker_fee_rate=MAKER_RATE, taker_fee_rate=TAKER_RATE, id_source=lambda: f"t{next(trade_ids)}"
    )


def outcome(call: Callable[..., list[Event]], *args: Any) -> list[Event] | type[Exception]:
    """What a call gives: its events, or the type of the error it raises."""
    try:
        return call(*args)
    except (OrderNotWorking, DuplicateOrder) as exc:
        return type(exc)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([PLAIN, ODD]), OPERATIONS)
def test_the_engine_equals_the_reference(instrument: Instrument, operations: list[tuple[Any, ...]]) -> None:
    engine_ids, reference_ids = itertools.count(1), itertools.count(1)
    engine, reference = make_engine(instrument, engine_ids), Reference(instrument, reference_ids)
    tick, step = instrument.tick_size, instrument.step_size
    ids: list[str] = []
    for i, operation in enumerate(operations):
        ts = T0 + timedelta(seconds=i)
        kind = operation[0]
        if kind == "submit":
            _, side, order_type, steps, odd_quantity, limit, odd_limit, stop, odd_stop, tif_choice, post = operation
            request = OrderRequest(
                order_id=f"o{i % 7}" if i % 5 == 0 else f"o{i}",  # now and then an id that may still be working
                side=side,
                type=order_type,
                quantity=amount(steps, step, odd_quantity),
                time_in_force=time_in_force(order_type, tif_choice),
                ts=ts,
                price=amount(2000 + limit, tick, odd_limit) if order_type in (LIMIT, STOP_LIMIT) else None,
                stop_price=amount(2000 + stop, tick, odd_stop) if order_type in (STOP, STOP_LIMIT) else None,
                post_only=post == 0 and (order_type is LIMIT or tif_choice == 7),
            )
            ids.append(request.order_id)
            assert outcome(engine.submit, request) == outcome(reference.submit, request)
        elif kind == "cancel" and ids:
            order_id = ids[operation[1] % len(ids)]
            assert engine.is_working(order_id) == (order_id in reference.working)
            assert outcome(engine.cancel, order_id) == outcome(reference.cancel, order_id)
        elif kind == "trade":
            price, quantity = (2000 + operation[1]) * tick, operation[2] * step
            assert engine.on_trade(price, quantity, ts) == reference.on_trade(price, quantity, ts)
        elif kind == "book":
            book = make_book(instrument, *operation[1:], ts)
            assert engine.on_book(book) == reference.on_book(book)
        elif kind == "restart":
            # What is stored comes back into a new engine (no book, no last trade yet); trade ids go on.
            stored = engine.open_orders()
            engine, reference = make_engine(instrument, engine_ids), Reference(instrument, reference_ids)
            engine.restore(stored)
            reference.restore(stored)
        assert engine.open_orders() == reference.open_orders()
        for order_id, order in reference.working.items():
            assert engine.remaining(order_id) == order.remaining


def test_the_reference_itself_on_a_case_worked_by_hand() -> None:
    reference = Reference(PLAIN, itertools.count(1))
    assert reference.on_book(make_book(PLAIN, 0, [1000], [1000, 2000], T0)) == []  # asks 20.01 x 1, 20.03 x 2
    reference.submit(OrderRequest("b", BUY, LIMIT, D(1), GTC, T0, price=D("20.00")))
    # 1 x 20.01 x 0.0025 = 0.050025; 1.5 x 20.03 x 0.0025 = 0.0751125.
    assert reference.submit(OrderRequest("m", BUY, MARKET, D("2.5"), IOC, T0)) == [
        Filled("m", Fill("t1", D(1), D("20.01"), D("0.05002500"), "taker", T0)),
        Filled("m", Fill("t2", D("1.5"), D("20.03"), D("0.07511250"), "taker", T0)),
    ]
    # A trade at 19.99 reaches the buy at 20.00 and fills it at its own price, as maker: 20.00 x 0.001 = 0.02.
    assert reference.on_trade(D("19.99"), D(5), T0) == [
        Filled("b", Fill("t3", D(1), D("20.00"), D("0.02"), "maker", T0))
    ]
    with pytest.raises(OrderNotWorking):
        reference.cancel("b")
