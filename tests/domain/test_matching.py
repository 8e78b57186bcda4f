"""The paper exchange's matching engine: hand-computed fills, and invariants over random sequences of inputs."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
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
from cival.domain.orders import (
    TERMINAL_STATUSES,
    CancelReason,
    Fill,
    FillLedger,
    OrderSide,
    OrderState,
    OrderStatus,
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
MAKER_RATE, TAKER_RATE = D("0.001"), D("0.002")
INSTRUMENT = Instrument(
    exchange="paper",
    symbol="BTC/USDT",
    base_asset="BTC",
    quote_asset="USDT",
    tick_size=D("0.01"),
    step_size=D("0.001"),
    min_order_size=D("0.001"),
    max_order_size=D(1000),
)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def book(bids: list[tuple[str, str]], asks: list[tuple[str, str]], ts: datetime = T0) -> OrderBookL2:
    return OrderBookL2(
        "BTC/USDT",
        "paper",
        tuple(BookLevel(D(p), D(q)) for p, q in bids),
        tuple(BookLevel(D(p), D(q)) for p, q in asks),
        ts,
    )


# Bids 99.50 x 1, 99.00 x 2, 98.50 x 5; asks 100.00 x 1, 100.50 x 2, 101.00 x 3.
BOOK = book([("99.50", "1"), ("99.00", "2"), ("98.50", "5")], [("100.00", "1"), ("100.50", "2"), ("101.00", "3")])


def make_engine(first_trade: int = 1, *, taker: Decimal = TAKER_RATE, with_book: bool = True) -> MatchingEngine:
    counter = itertools.count(first_trade)
    engine = MatchingEngine(
        INSTRUMENT, maker_fee_rate=MAKER_RATE, taker_fee_rate=taker, id_source=lambda: f"t{next(counter)}"
    )
    if with_book:
        assert engine.on_book(BOOK) == []
    return engine


def order(
    order_id: str,
    side: OrderSide,
    order_type: OrderType,
    quantity: str,
    price: str | None = None,
    stop: str | None = None,
    *,
    tif: TimeInForce = GTC,
    post_only: bool = False,
    ts: datetime = T0,
) -> OrderRequest:
    return OrderRequest(
        order_id=order_id,
        side=side,
        type=order_type,
        quantity=D(quantity),
        time_in_force=tif,
        ts=ts,
        price=None if price is None else D(price),
        stop_price=None if stop is None else D(stop),
        post_only=post_only,
    )


def taker(order_id: str, trade: str, quantity: str, price: str, fee: str, ts: datetime = T0) -> Filled:
    return Filled(order_id, Fill(trade, D(quantity), D(price), D(fee), "taker", ts))


def maker(order_id: str, trade: str, quantity: str, price: str, fee: str, ts: datetime = T0) -> Filled:
    return Filled(order_id, Fill(trade, D(quantity), D(price), D(fee), "maker", ts))


def fold(quantity: str, events: list[Event]) -> OrderState:
    state = OrderState(D(quantity))
    for event in events:
        if isinstance(event, Filled):
            state.apply(event.fill)
    return state


# -- taking liquidity -------------------------------------------------------------------------------------------


def test_market_buy_walks_three_levels_filling_the_last_partially() -> None:
    engine = make_engine()
    events = engine.submit(order("m1", BUY, MARKET, "4", tif=IOC, ts=at(1)))
    assert events == [
        taker("m1", "t1", "1", "100.00", "0.2", at(1)),  # 1 x 100.00 x 0.002
        taker("m1", "t2", "2", "100.50", "0.402", at(1)),  # 2 x 100.50 x 0.002
        taker("m1", "t3", "1", "101.00", "0.202", at(1)),  # 1 x 101.00 x 0.002
    ]
    state = fold("4", events)
    # (100.00 + 201.00 + 101.00) / 4 = 402 / 4
    assert (state.status, state.average_price, state.fees) == (OrderStatus.FILLED, D("100.5"), D("0.804"))
    assert not engine.is_working("m1")
    # What was taken stays taken until the next book: 2 left at 101.00, then nothing.
    assert engine.submit(order("m2", BUY, MARKET, "3", tif=IOC)) == [
        taker("m2", "t4", "2", "101.00", "0.404"),
        Cancelled("m2", CancelReason.IOC_REMAINDER),
    ]


def test_market_sell_walks_the_bids() -> None:
    engine = make_engine()
    assert engine.submit(order("m1", SELL, MARKET, "2.5", tif=IOC)) == [
        taker("m1", "t1", "1", "99.50", "0.199"),
        taker("m1", "t2", "1.5", "99.00", "0.297"),
    ]


def test_fees_round_half_even_to_8_decimals() -> None:
    engine = make_engine(taker=D("0.0005"))
    engine.on_book(book([], [("100.01", "1"), ("100.03", "1")]))
    # 0.001 x 100.01 x 0.0005 = 0.000050005 -> 0.00005000; 0.001 x 100.03 x 0.0005 = 0.000050015 -> 0.00005002.
    assert engine.submit(order("a", BUY, LIMIT, "0.001", "100.01", tif=IOC)) == [
        taker("a", "t1", "0.001", "100.01", "0.00005000")
    ]
    engine.on_book(book([], [("100.03", "1")]))
    assert engine.submit(order("b", BUY, LIMIT, "0.001", "100.03", tif=IOC)) == [
        taker("b", "t2", "0.001", "100.03", "0.00005002")
    ]
    assert quantize_stored(D("0.000050005")) == D("0.00005000")


def test_market_order_on_an_empty_side_is_cancelled() -> None:
    engine = make_engine(with_book=False)
    assert engine.submit(order("m", BUY, MARKET, "1", tif=IOC)) == [Cancelled("m", CancelReason.IOC_REMAINDER)]


def test_ioc_limit_fills_what_it_can_and_cancels_the_rest() -> None:
    engine = make_engine()
    assert engine.submit(order("i", BUY, LIMIT, "5", "100.50", tif=IOC)) == [
        taker("i", "t1", "1", "100.00", "0.2"),
        taker("i", "t2", "2", "100.50", "0.402"),
        Cancelled("i", CancelReason.IOC_REMAINDER),
    ]
    assert not engine.is_working("i")


def test_fok_fills_nothing_when_the_book_cannot_fill_it_all() -> None:
    engine = make_engine()
    assert engine.submit(order("f1", BUY, MARKET, "7", tif=FOK)) == [Cancelled("f1", CancelReason.FOK_UNFILLED)]
    # Only 3 are offered at or below 100.50.
    assert engine.submit(order("f2", BUY, LIMIT, "4", "100.50", tif=FOK)) == [
        Cancelled("f2", CancelReason.FOK_UNFILLED)
    ]
    # Nothing was consumed: all 6 are still there.
    events = engine.submit(order("m", BUY, MARKET, "6", tif=IOC))
    assert [e.fill.quantity for e in events if isinstance(e, Filled)] == [D(1), D(2), D(3)]


def test_fok_fills_entirely_when_it_can() -> None:
    engine = make_engine()
    assert engine.submit(order("f", BUY, LIMIT, "3", "100.50", tif=FOK)) == [
        taker("f", "t1", "1", "100.00", "0.2"),
        taker("f", "t2", "2", "100.50", "0.402"),
    ]
    assert engine.submit(order("g", SELL, MARKET, "8", tif=FOK))[-1] == taker("g", "t5", "5", "98.50", "0.985")


def test_limit_crossing_fills_as_taker_then_rests_the_remainder() -> None:
    engine = make_engine()
    assert engine.submit(order("l", BUY, LIMIT, "4", "100.50")) == [
        taker("l", "t1", "1", "100.00", "0.2"),
        taker("l", "t2", "2", "100.50", "0.402"),
        Rested("l"),
    ]
    assert engine.remaining("l") == D(1)
    [open_order] = engine.open_orders()
    assert (open_order.request.order_id, open_order.filled_quantity, open_order.triggered_at) == ("l", D(3), None)


def test_limit_that_does_not_cross_rests_whole() -> None:
    engine = make_engine()
    assert engine.submit(order("l", SELL, LIMIT, "2", "100.00")) == [Rested("l")]
    assert engine.remaining("l") == D(2)


# -- resting orders ---------------------------------------------------------------------------------------------


def test_resting_buy_filled_by_trades_through_its_price_partially_then_fully() -> None:
    engine = make_engine()
    engine.submit(order("b", BUY, LIMIT, "2", "99.00"))
    assert engine.on_trade(D("99.01"), D(5), at(1)) == []  # above the buy: not reached
    assert engine.on_trade(D("99.00"), D("0.5"), at(2)) == [maker("b", "t1", "0.5", "99.00", "0.0495", at(2))]
    assert engine.remaining("b") == D("1.5")
    # A trade through the price fills at the order's own price, as much as the trade has.
    assert engine.on_trade(D("98.00"), D(5), at(3)) == [maker("b", "t2", "1.5", "99.00", "0.1485", at(3))]
    assert not engine.is_working("b")
    assert engine.on_trade(D("97.00"), D(5), at(4)) == []


def test_resting_sell_filled_by_a_trade_at_its_price() -> None:
    engine = make_engine()
    engine.submit(order("s", SELL, LIMIT, "1", "100.20"))
    assert engine.on_trade(D("100.19"), D(1), at(1)) == []
    assert engine.on_trade(D("100.20"), D(3), at(2)) == [maker("s", "t1", "1", "100.20", "0.1002", at(2))]


def test_price_time_priority() -> None:
    engine = make_engine()
    engine.submit(order("a", BUY, LIMIT, "1", "99.00", ts=at(1)))
    engine.submit(order("b", BUY, LIMIT, "1", "99.00", ts=at(2)))
    engine.submit(order("c", BUY, LIMIT, "1", "99.10", ts=at(3)))
    # The better price first, then the earlier order at the same price; the trade's quantity runs out within `a`.
    assert engine.on_trade(D("99.00"), D("1.5"), at(4)) == [
        maker("c", "t1", "1", "99.10", "0.0991", at(4)),
        maker("a", "t2", "0.5", "99.00", "0.0495", at(4)),
    ]
    assert engine.on_trade(D("98.00"), D(1), at(5)) == [
        maker("a", "t3", "0.5", "99.00", "0.0495", at(5)),
        maker("b", "t4", "0.5", "99.00", "0.0495", at(5)),
    ]
    assert [o.request.order_id for o in engine.open_orders()] == ["b"]


def test_a_new_book_through_a_resting_order_fills_it_at_its_own_price() -> None:
    engine = make_engine()
    engine.submit(order("b", BUY, LIMIT, "2", "99.80"))
    moved = book([("99.30", "1")], [("99.70", "1"), ("99.80", "0.5"), ("99.90", "5")], at(1))
    assert engine.on_book(moved) == [
        maker("b", "t1", "1", "99.80", "0.0998", at(1)),
        maker("b", "t2", "0.5", "99.80", "0.0499", at(1)),
    ]
    assert engine.remaining("b") == D("0.5")
    # The crossed quantity is used up: a market buy now starts at 99.90.
    assert engine.submit(order("m", BUY, MARKET, "1", tif=IOC, ts=at(2))) == [
        taker("m", "t3", "1", "99.90", "0.1998", at(2))
    ]


def test_submit_with_a_book_applies_the_book_first() -> None:
    engine = make_engine()
    engine.submit(order("s", SELL, LIMIT, "1", "100.20"))
    moved = book([("100.30", "2")], [("100.40", "1")], at(1))
    assert engine.submit(order("m", BUY, MARKET, "1", tif=IOC, ts=at(1)), moved) == [
        maker("s", "t1", "1", "100.20", "0.1002", at(1)),
        taker("m", "t2", "1", "100.40", "0.2008", at(1)),
    ]


def test_post_only_that_would_cross_is_rejected() -> None:
    engine = make_engine()
    [rejected] = engine.submit(order("p", BUY, LIMIT, "1", "100.00", post_only=True))
    assert isinstance(rejected, Rejected)
    assert (rejected.order_id, rejected.reason) == ("p", RejectCode.POST_ONLY_WOULD_CROSS)
    assert engine.submit(order("q", SELL, LIMIT, "1", "99.50", post_only=True))[0] == Rejected(
        "q", RejectCode.POST_ONLY_WOULD_CROSS, "post-only sell at 99.50 would take liquidity from the book"
    )
    assert engine.submit(order("r", BUY, LIMIT, "1", "99.99", post_only=True)) == [Rested("r")]
    assert not engine.is_working("p")


def test_post_only_sees_the_liquidity_left_in_the_book() -> None:
    engine = make_engine()
    engine.submit(order("m", BUY, MARKET, "1", tif=IOC))  # takes the whole 100.00 level
    assert engine.submit(order("p", BUY, LIMIT, "1", "100.00", post_only=True)) == [Rested("p")]


# -- stops ------------------------------------------------------------------------------------------------------


def test_stop_triggers_into_a_market_order() -> None:
    engine = make_engine()
    assert engine.submit(order("s", BUY, STOP, "1", stop="100.20")) == [Rested("s")]
    assert engine.on_trade(D("100.10"), D(1), at(1)) == []
    assert engine.on_trade(D("100.20"), D(1), at(2)) == [
        Triggered("s", at(2)),
        taker("s", "t1", "1", "100.00", "0.2", at(2)),
    ]
    assert not engine.is_working("s")


def test_sell_stop_triggers_at_or_below_its_price_and_cancels_what_the_book_cannot_fill() -> None:
    engine = make_engine()
    engine.submit(order("s", SELL, STOP, "9", stop="99.00"))
    assert engine.on_trade(D("99.01"), D(1), at(1)) == []
    assert engine.on_trade(D("98.90"), D(1), at(2)) == [
        Triggered("s", at(2)),
        taker("s", "t1", "1", "99.50", "0.199", at(2)),
        taker("s", "t2", "2", "99.00", "0.396", at(2)),
        taker("s", "t3", "5", "98.50", "0.985", at(2)),
        Cancelled("s", CancelReason.IOC_REMAINDER),
    ]


def test_stop_limit_triggers_into_a_resting_limit() -> None:
    engine = make_engine()
    engine.submit(order("sl", BUY, STOP_LIMIT, "1", price="99.90", stop="100.20"))
    assert engine.on_trade(D("100.30"), D(1), at(1)) == [Triggered("sl", at(1)), Rested("sl")]
    [open_order] = engine.open_orders()
    assert open_order.triggered_at == at(1)
    # The trade that triggered it did not fill it; a later one through its limit does.
    assert engine.on_trade(D("99.90"), D(1), at(2)) == [maker("sl", "t1", "1", "99.90", "0.0999", at(2))]


def test_stop_limit_that_crosses_when_triggered_takes_up_to_its_limit() -> None:
    engine = make_engine()
    engine.submit(order("sl", SELL, STOP_LIMIT, "4", price="99.00", stop="99.50", tif=IOC))
    assert engine.on_trade(D("99.40"), D(1), at(1)) == [
        Triggered("sl", at(1)),
        taker("sl", "t1", "1", "99.50", "0.199", at(1)),
        taker("sl", "t2", "2", "99.00", "0.396", at(1)),
        Cancelled("sl", CancelReason.IOC_REMAINDER),
    ]


def test_stops_reached_by_one_trade_trigger_in_submission_order() -> None:
    engine = make_engine()
    engine.submit(order("late-stop-first", SELL, STOP, "1", stop="99.00", ts=at(1)))
    engine.submit(order("early-stop-second", SELL, STOP, "1", stop="99.40", ts=at(2)))
    events = engine.on_trade(D("98.90"), D(1), at(3))
    assert [type(e).__name__ + ":" + e.order_id for e in events] == [
        "Triggered:late-stop-first",
        "Filled:late-stop-first",
        "Triggered:early-stop-second",
        "Filled:early-stop-second",
    ]


def test_stop_the_last_trade_already_reached_is_rejected() -> None:
    engine = make_engine()
    engine.on_trade(D("100.00"), D(1), at(1))
    [rejected] = engine.submit(order("s", BUY, STOP, "1", stop="100.00"))
    assert isinstance(rejected, Rejected)
    assert rejected.reason is RejectCode.STOP_WOULD_TRIGGER_IMMEDIATELY
    assert engine.submit(order("t", BUY, STOP, "1", stop="100.01")) == [Rested("t")]
    assert engine.submit(order("u", SELL, STOP_LIMIT, "1", "99", stop="100.00"))[0].order_id == "u"
    assert not engine.is_working("u")


# -- cancel, validation, inputs ---------------------------------------------------------------------------------


def test_cancel_a_resting_order_and_then_it_is_not_working() -> None:
    engine = make_engine()
    engine.submit(order("l", BUY, LIMIT, "1", "99.00"))
    engine.submit(order("s", SELL, STOP, "1", stop="98.00"))
    assert engine.cancel("l") == [Cancelled("l", CancelReason.REQUESTED)]
    assert engine.cancel("s") == [Cancelled("s", CancelReason.REQUESTED)]
    assert engine.open_orders() == []
    assert engine.on_trade(D("97.00"), D(10), at(1)) == []
    with pytest.raises(OrderNotWorking, match="order l is not working"):
        engine.cancel("l")


def test_cancel_of_a_filled_or_unknown_order_is_an_error() -> None:
    engine = make_engine()
    engine.submit(order("m", BUY, MARKET, "1", tif=IOC))
    with pytest.raises(OrderNotWorking):
        engine.cancel("m")
    with pytest.raises(OrderNotWorking):
        engine.cancel("nope")
    with pytest.raises(OrderNotWorking):
        engine.remaining("m")


def test_cancel_in_the_middle_of_a_level_keeps_the_others_in_order() -> None:
    engine = make_engine()
    for i in range(40):
        engine.submit(order(f"o{i}", BUY, LIMIT, "1", "99.00", ts=at(i)))
    for i in range(1, 39):
        engine.cancel(f"o{i}")  # compacts the level along the way
    events = engine.on_trade(D("99.00"), D(5), at(50))
    assert [e.order_id for e in events] == ["o0", "o39"]


def test_invalid_orders_are_rejected_with_the_validation_code() -> None:
    engine = make_engine()
    assert engine.submit(order("x", BUY, LIMIT, "1", "100.005")) == [
        Rejected(
            "x",
            RejectCode.PRICE_NOT_ON_TICK,
            "price 100.005 is not a multiple of the tick 0.01; nearest valid prices 100.00 and 100.01",
        )
    ]
    [rejected] = engine.submit(order("y", BUY, MARKET, "1"))  # GTC market
    assert isinstance(rejected, Rejected)
    assert rejected.reason is RejectCode.INVALID_TIME_IN_FORCE
    assert engine.open_orders() == []


def test_inputs_the_engine_refuses() -> None:
    engine = make_engine()
    engine.submit(order("a", BUY, LIMIT, "1", "99.00"))
    with pytest.raises(DuplicateOrder):
        engine.submit(order("a", BUY, LIMIT, "1", "99.00"))
    with pytest.raises(ValueError, match="naive"):
        engine.submit(order("b", BUY, LIMIT, "1", "99.00", ts=datetime(2024, 1, 1)))  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive"):
        engine.on_trade(D(1), D(1), datetime(2024, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="trade quantity"):
        engine.on_trade(D(1), D("0.000000001"), T0)
    with pytest.raises(ValueError, match="trade price"):
        engine.on_trade(D(0), D(1), T0)
    with pytest.raises(ValueError, match="ETH/USDT"):
        engine.on_book(OrderBookL2("ETH/USDT", "paper", (), (), T0))
    with pytest.raises(ValueError, match="not storable"):
        engine.on_book(book([], [("100.000000001", "1")]))
    with pytest.raises(ValueError, match="taker_fee_rate"):
        MatchingEngine(INSTRUMENT, maker_fee_rate=D(0), taker_fee_rate=D(-1), id_source=lambda: "t")
    with localcontext() as context:
        context.prec = 12
        with pytest.raises(RuntimeError, match="decimal context keeps 12 digits"):
            engine.on_trade(D(1), D(1), T0)


def test_on_trade_tick_is_on_trade() -> None:
    from cival.domain.candles import TradeTick

    engine = make_engine()
    engine.submit(order("b", BUY, LIMIT, "1", "99.00"))
    assert engine.on_trade_tick(TradeTick(at(1), D("98"), D(1))) == [maker("b", "t1", "1", "99.00", "0.099", at(1))]


# -- restart ----------------------------------------------------------------------------------------------------


def test_restore_after_restart_gives_the_same_subsequent_fills() -> None:
    before = make_engine()
    before.submit(order("l1", BUY, LIMIT, "1", "99.00", ts=at(1)))
    before.submit(order("l2", BUY, LIMIT, "2", "99.00", ts=at(2)))
    before.submit(order("l3", SELL, LIMIT, "1", "101.50", ts=at(3)))
    before.submit(order("s1", SELL, STOP, "1", stop="98.00", ts=at(4)))
    before.submit(order("sl", BUY, STOP_LIMIT, "1", "99.20", stop="100.80", ts=at(5)))
    before.on_trade(D("99.00"), D("0.5"), at(6))  # l1 half filled
    before.submit(order("l4", BUY, LIMIT, "1", "99.20", ts=at(7)))
    assert before.on_trade(D("100.90"), D(1), at(8)) == [Triggered("sl", at(8)), Rested("sl")]  # behind l4 at 99.20
    stored = before.open_orders()
    assert [(o.request.order_id, o.filled_quantity) for o in stored] == [
        ("l1", D("0.5")),
        ("l2", D(0)),
        ("l3", D(0)),
        ("s1", D(0)),
        ("l4", D(0)),
        ("sl", D(0)),
    ]

    after = make_engine(first_trade=2, with_book=False)  # t1 was used before the restart
    shuffled = list(stored)
    random.Random(7).shuffle(shuffled)
    after.restore(shuffled)
    assert after.open_orders() == stored

    moved = book([("97.00", "3")], [("99.10", "0.7"), ("99.30", "1")], at(9))
    expected = before.on_book(moved)
    assert expected  # l4 and sl fill against the 99.10 ask
    assert after.on_book(moved) == expected
    for price, quantity in [("99.00", "2"), ("97.90", "5"), ("101.60", "1")]:
        expected = before.on_trade(D(price), D(quantity), at(10))
        assert expected
        assert after.on_trade(D(price), D(quantity), at(10)) == expected
    assert after.open_orders() == before.open_orders()


def test_restore_refuses_what_cannot_be_working() -> None:
    engine = make_engine()
    engine.submit(order("a", BUY, LIMIT, "1", "99.00"))
    with pytest.raises(ValueError, match="empty engine"):
        engine.restore([])
    fresh = make_engine(with_book=False)
    cases: list[tuple[OpenOrder, str]] = [
        (OpenOrder(order("m", BUY, MARKET, "1", tif=IOC)), "never rests"),
        (OpenOrder(order("i", BUY, LIMIT, "1", "99", tif=IOC)), "only GTC"),
        (OpenOrder(order("f", BUY, LIMIT, "1", "99"), D(1)), "cannot be working"),
        (OpenOrder(order("s", BUY, STOP, "1", stop="99"), D("0.5")), "cannot be working"),
        (OpenOrder(order("t", BUY, LIMIT, "1", "99.001")), "not on the tick"),
        (OpenOrder(order("u", BUY, STOP, "1", stop="99"), triggered_at=T0), "never rests"),
    ]
    for stored, message in cases:
        with pytest.raises(ValueError, match=message):
            fresh.restore([stored])
    with pytest.raises(DuplicateOrder):
        make_engine(with_book=False).restore([OpenOrder(order("d", BUY, LIMIT, "1", "99"))] * 2)


# -- invariants over random sequences ---------------------------------------------------------------------------

SUBMIT = st.tuples(
    st.just("submit"),
    st.sampled_from(OrderSide),
    st.sampled_from(OrderType),
    st.integers(1, 3000),  # quantity in steps of 0.001
    st.integers(-40, 40),  # limit price: 100.00 + n x 0.05
    st.integers(-40, 40),  # stop price
    st.integers(0, 19),  # time in force: mostly one the type accepts, sometimes any (to exercise rejections)
    st.booleans(),
)
CANCEL = st.tuples(st.just("cancel"), st.integers(0, 1000))
TRADE = st.tuples(st.just("trade"), st.integers(-50, 50), st.integers(1, 3000))
LEVELS = st.lists(st.integers(1, 3000), max_size=4)
BOOK_UPDATE = st.tuples(st.just("book"), st.integers(-40, 40), LEVELS, LEVELS)
OPERATIONS = st.lists(st.one_of(SUBMIT, SUBMIT, CANCEL, TRADE, TRADE, BOOK_UPDATE), min_size=5, max_size=80)


def time_in_force(order_type: OrderType, choice: int) -> TimeInForce:
    if choice == 0:
        return GTC
    if choice == 1:
        return IOC
    if order_type is MARKET:
        return FOK if choice % 2 else IOC
    if order_type is STOP:
        return GTC
    return (GTC, GTC, GTC, IOC, FOK)[choice % 5]


def price_at(offset: int) -> Decimal:
    return D(100) + D(offset) * D("0.05")


def random_book(mid: int, bids: list[int], asks: list[int], ts: datetime) -> OrderBookL2:
    return OrderBookL2(
        "BTC/USDT",
        "paper",
        tuple(BookLevel(price_at(mid - 1 - i), D(q) / 1000) for i, q in enumerate(bids)),
        tuple(BookLevel(price_at(mid + 1 + i), D(q) / 1000) for i, q in enumerate(asks)),
        ts,
    )


def replay(operations: list[tuple[Any, ...]]) -> tuple[MatchingEngine, list[OrderRequest], list[list[Event]]]:
    engine = make_engine()
    requests: list[OrderRequest] = []
    outputs: list[list[Event]] = []
    for i, operation in enumerate(operations):
        ts = at(i)
        kind = operation[0]
        if kind == "submit":
            _, side, order_type, steps, limit, stop, tif_choice, post_only = operation
            tif = time_in_force(order_type, tif_choice)
            request = OrderRequest(
                order_id=f"o{i}",
                side=side,
                type=order_type,
                quantity=D(steps) / 1000,
                time_in_force=tif,
                ts=ts,
                price=price_at(limit) if order_type in (LIMIT, STOP_LIMIT) else None,
                stop_price=price_at(stop) if order_type in (STOP, STOP_LIMIT) else None,
                post_only=post_only and order_type is LIMIT and tif_choice % 4 == 0,
            )
            requests.append(request)
            outputs.append(engine.submit(request))
        elif kind == "cancel":
            if not requests:
                continue
            order_id = requests[operation[1] % len(requests)].order_id
            if engine.is_working(order_id):
                outputs.append(engine.cancel(order_id))
            else:
                with pytest.raises(OrderNotWorking):
                    engine.cancel(order_id)
        elif kind == "trade":
            outputs.append(engine.on_trade(price_at(operation[1]), D(operation[2]) / 1000, ts))
        else:
            outputs.append(engine.on_book(random_book(operation[1], operation[2], operation[3], ts)))
    return engine, requests, outputs


def check_fill(request: OrderRequest, fill: Fill) -> None:
    rate = MAKER_RATE if fill.liquidity == "maker" else TAKER_RATE
    assert fill.fee == quantize_stored(fill.quantity * fill.price * rate)
    assert INSTRUMENT.is_on_tick(fill.price)
    assert INSTRUMENT.is_on_step(fill.quantity)
    if request.price is not None and request.type in (LIMIT, STOP_LIMIT):
        assert fill.price <= request.price if request.side is BUY else fill.price >= request.price


@settings(max_examples=300, deadline=None)
@given(OPERATIONS)
def test_random_sequences_keep_the_invariants(operations: list[tuple[Any, ...]]) -> None:
    engine, requests, outputs = replay(operations)
    by_id = {r.order_id: r for r in requests}
    ledgers = {r.order_id: FillLedger(OrderState(r.quantity)) for r in requests}
    trade_ids: set[str] = set()
    for events in outputs:
        for event in events:
            ledger = ledgers[event.order_id]
            state = ledger.state
            if isinstance(event, Filled):
                assert event.fill.trade_id not in trade_ids
                trade_ids.add(event.fill.trade_id)
                check_fill(by_id[event.order_id], event.fill)
                assert ledger.apply(event.fill)  # raises on overfill or on a fill after a terminal status
            elif isinstance(event, Cancelled):
                state.set_status(OrderStatus.CANCELLED)
            elif isinstance(event, Rejected):
                assert state.filled_quantity == 0
                state.set_status(OrderStatus.REJECTED)
            else:
                assert state.status not in TERMINAL_STATUSES
    working = {o.request.order_id: o for o in engine.open_orders()}
    for request in requests:
        state = ledgers[request.order_id].state
        is_terminal = state.status in TERMINAL_STATUSES
        assert (request.order_id in working) != is_terminal, (request, state)
        assert state.filled_quantity <= request.quantity
        assert state.filled_quantity == sum((f.quantity for f in ledgers[request.order_id].fills), D(0))
        assert state.fees == sum((f.fee for f in ledgers[request.order_id].fills), D(0))
        if request.order_id in working:
            assert working[request.order_id].filled_quantity == state.filled_quantity
            assert (
                request.type in (LIMIT, STOP, STOP_LIMIT)
                and request.time_in_force is GTC
                or (request.type in (STOP, STOP_LIMIT) and working[request.order_id].triggered_at is None)
            )
        if request.time_in_force is FOK and state.status is OrderStatus.CANCELLED:
            assert state.filled_quantity == 0
    # Determinism: the same inputs give the same events, trade ids included.
    assert replay(operations)[2] == outputs
    # What is stored can be restored.
    restored = make_engine(with_book=False)
    restored.restore(engine.open_orders())
    assert restored.open_orders() == engine.open_orders()
