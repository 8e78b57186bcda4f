"""The simulated market: determinism, precision of everything it emits, book shape and random-walk scaling."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cival.domain.candles import aggregate_trades
from cival.domain.instruments import DEFAULT_PAPER_PAIRS, Instrument
from cival.domain.order_book import OrderBookL2
from cival.domain.simulated_market import BookEvent, MarketEvent, SimulatedMarket, TradeEvent

START = datetime(2024, 3, 10, tzinfo=UTC)
BTC, ETH, SOL = DEFAULT_PAPER_PAIRS
PENNY = Instrument(
    exchange="paper",
    symbol="PEN/USDT",
    base_asset="PEN",
    quote_asset="USDT",
    tick_size=Decimal("0.01"),
    step_size=Decimal(1),
    min_order_size=Decimal(1),
    max_order_size=Decimal(1000000),
)


def market(seed: int = 7, pairs: tuple[Instrument, ...] = DEFAULT_PAPER_PAIRS, **kwargs: object) -> SimulatedMarket:
    return SimulatedMarket(pairs, seed=seed, start_time=START, **kwargs)  # type: ignore[arg-type]


def run(sim: SimulatedMarket, steps: int) -> list[list[MarketEvent]]:
    return [sim.step() for _ in range(steps)]


def events_of(steps: list[list[MarketEvent]], symbol: str) -> list[MarketEvent]:
    return [e for step in steps for e in step if (e.symbol if isinstance(e, TradeEvent) else e.book.symbol) == symbol]


def test_same_seed_same_events() -> None:
    assert run(market(seed=42), 50) == run(market(seed=42), 50)


def test_different_seed_different_events() -> None:
    assert run(market(seed=42), 5) != run(market(seed=43), 5)


def test_adding_a_pair_does_not_change_the_others() -> None:
    alone = run(market(pairs=(BTC,)), 30)
    together = run(market(pairs=(ETH, BTC, SOL)), 30)
    assert events_of(together, "BTC/USDT") == events_of(alone, "BTC/USDT")
    assert events_of(together, "BTC/USDT") != []


def test_pairs_have_their_own_random_paths() -> None:
    twin = replace(BTC, symbol="BTC/USDC", quote_asset="USDC")
    sim = market(
        pairs=(BTC, twin),
        start_prices={"BTC/USDT": Decimal(60000), "BTC/USDC": Decimal(60000)},
        volatilities={"BTC/USDT": 0.6, "BTC/USDC": 0.6},
    )
    run(sim, 10)
    # Same start, same volatility: only the per-pair seed can tell them apart.
    assert sim.book("BTC/USDT").mid != sim.book("BTC/USDC").mid


def test_each_step_emits_trades_then_a_book_per_pair() -> None:
    sim = market(max_trades_per_step=4)
    for _ in range(20):
        events = sim.step()
        for pair in DEFAULT_PAPER_PAIRS:
            mine = events_of([events], pair.symbol)
            assert isinstance(mine[-1], BookEvent)
            assert 1 <= len(mine) - 1 <= 4
            assert all(isinstance(e, TradeEvent) for e in mine[:-1])


def test_clock_advances_by_the_step_and_trades_happen_inside_it() -> None:
    sim = market(step_seconds=2.5)
    previous = sim.now
    assert previous == START
    last_trade = START
    for _ in range(40):
        events = sim.step()
        assert sim.now == previous + timedelta(seconds=2.5)
        for event in events:
            if isinstance(event, TradeEvent):
                assert previous < event.tick.ts <= sim.now
                if event.symbol == "BTC/USDT":
                    assert event.tick.ts >= last_trade
                    last_trade = event.tick.ts
            else:
                assert event.book.timestamp == sim.now
        previous = sim.now


def test_trade_ids_are_sequential_per_pair() -> None:
    trades = [e for e in events_of(run(market(), 20), "ETH/USDT") if isinstance(e, TradeEvent)]
    assert [e.tick.trade_id for e in trades] == [str(i) for i in range(1, len(trades) + 1)]


def _check_book(book: OrderBookL2, pair: Instrument, levels: int) -> None:
    assert len(book.asks) == levels
    assert 1 <= len(book.bids) <= levels
    assert book.spread is not None
    assert book.spread >= pair.tick_size
    for side in (book.bids, book.asks):
        for lvl in side:
            assert lvl.price > 0
            assert pair.is_on_tick(lvl.price)
            assert pair.is_on_step(lvl.quantity)
            assert lvl.quantity >= pair.min_order_size


def _check_trade(event: TradeEvent, pair: Instrument) -> None:
    assert event.side in ("buy", "sell")
    assert event.tick.price > 0
    assert pair.is_on_tick(event.tick.price)
    assert pair.is_on_step(event.tick.quantity)
    assert pair.min_order_size <= event.tick.quantity <= pair.max_order_size
    assert event.tick.price * event.tick.quantity >= pair.min_notional


def test_everything_emitted_respects_tick_and_step() -> None:
    pairs = {p.symbol: p for p in DEFAULT_PAPER_PAIRS}
    sim = market()
    sides = set()
    for event in (e for step in run(sim, 100) for e in step):
        if isinstance(event, TradeEvent):
            _check_trade(event, pairs[event.symbol])
            sides.add(event.side)
        else:
            _check_book(event.book, pairs[event.book.symbol], 20)
    assert sides == {"buy", "sell"}


def test_book_shape() -> None:
    sim = market(book_levels=20)
    for _ in range(30):
        sim.step()
        for pair in DEFAULT_PAPER_PAIRS:
            book = sim.book(pair.symbol)
            mid = book.mid
            spread = book.spread
            assert mid is not None
            assert spread is not None
            # Spread: max(1 tick, ~1bp of the price), about 6 USDT on BTC at 60000; off by at most a tick's rounding.
            assert abs(spread - max(pair.tick_size, mid / 10000)) <= pair.tick_size
            # Depth grows away from the mid: the 20th level always outweighs the first.
            assert book.bids[-1].quantity > book.bids[0].quantity
            assert book.asks[-1].quantity > book.asks[0].quantity


def test_ticker_reports_last_trade_and_best_quotes() -> None:
    sim = market()
    before = sim.ticker("BTC/USDT")
    assert before.last_price == Decimal("60000.00")
    assert before.best_bid < Decimal(60000) < before.best_ask
    assert before.timestamp == START
    events = sim.step()
    last_trade = [e for e in events if isinstance(e, TradeEvent) and e.symbol == "BTC/USDT"][-1]
    ticker = sim.ticker("BTC/USDT")
    book = sim.book("BTC/USDT")
    assert ticker.last_price == last_trade.tick.price
    assert book.best_bid is not None
    assert book.best_ask is not None
    assert (ticker.best_bid, ticker.best_ask) == (book.best_bid.price, book.best_ask.price)
    assert (ticker.symbol, ticker.exchange, ticker.timestamp) == ("BTC/USDT", "paper", sim.now)
    with pytest.raises(KeyError, match="DOGE/USDT is not simulated"):
        sim.ticker("DOGE/USDT")


def test_trades_buy_at_or_above_the_mid_and_sell_at_or_below() -> None:
    sim = market(pairs=(BTC,), volatilities={"BTC/USDT": 0.0})
    for event in (e for step in run(sim, 50) for e in step):
        if isinstance(event, TradeEvent):
            if event.side == "buy":
                assert event.tick.price > Decimal(60000)
            else:
                assert event.tick.price < Decimal(60000)


def test_zero_volatility_keeps_the_price_still() -> None:
    sim = market(pairs=(BTC,), volatilities={"BTC/USDT": 0.0})
    first = sim.book("BTC/USDT")
    run(sim, 50)
    later = sim.book("BTC/USDT")
    assert later.best_bid is not None
    assert first.best_bid is not None
    assert later.best_bid.price == first.best_bid.price


def test_random_walk_volatility_is_scaled_to_the_step() -> None:
    steps, step_seconds, vol = 3000, 60.0, 0.6
    # One level and one trade a step keep it fast; the mid path does not depend on them.
    sim = market(
        pairs=(BTC,), volatilities={"BTC/USDT": vol}, step_seconds=step_seconds, book_levels=1, max_trades_per_step=1
    )
    mids = [sim.book("BTC/USDT").mid]
    for _ in range(steps):
        sim.step()
        mids.append(sim.book("BTC/USDT").mid)
    returns = [math.log(float(b) / float(a)) for a, b in zip(mids, mids[1:], strict=False)]  # type: ignore[arg-type]
    expected = vol * math.sqrt(step_seconds / (365 * 24 * 3600))
    # The estimate's relative standard error is about 1/sqrt(2 * 3000) ~ 1.3%: 10% is far outside chance.
    assert statistics.pstdev(returns) == pytest.approx(expected, rel=0.1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**64), start=st.sampled_from(["0.01", "0.05", "1", "3.17"]))
def test_prices_never_reach_zero(seed: int, start: str) -> None:
    # Extreme volatility over hour-long steps drives a penny stock towards zero fast.
    sim = market(
        seed=seed,
        pairs=(PENNY,),
        start_prices={"PEN/USDT": Decimal(start)},
        volatilities={"PEN/USDT": 40.0},
        step_seconds=3600,
        book_levels=5,
    )
    for event in (e for step in run(sim, 60) for e in step):
        if isinstance(event, TradeEvent):
            _check_trade(event, PENNY)
        else:
            _check_book(event.book, PENNY, 5)


def test_simulated_trades_aggregate_into_valid_candles() -> None:
    trades = [e.tick for e in events_of(run(market(pairs=(SOL,)), 300), "SOL/USDT") if isinstance(e, TradeEvent)]
    candles = aggregate_trades(trades, "SOL/USDT", "paper")
    assert len(candles) == 5  # 300 one-second steps from a whole minute
    assert sum(c.trades_count for c in candles) == len(trades)


def test_inactive_pairs_are_not_simulated() -> None:
    sim = market(pairs=(BTC, replace(ETH, is_active=False)))
    assert [p.symbol for p in sim.instruments] == ["BTC/USDT"]
    assert events_of([sim.step()], "ETH/USDT") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_prices": {"BTC/USDT": Decimal(1)}}, "no start price for ETH/USDT"),
        ({"volatilities": {"BTC/USDT": 0.5}}, "no volatility for ETH/USDT"),
        (
            {"start_prices": {"BTC/USDT": Decimal(0), "ETH/USDT": Decimal(1), "SOL/USDT": Decimal(1)}},
            "start price 0 of BTC/USDT must be positive",
        ),
        ({"volatilities": {"BTC/USDT": -0.1, "ETH/USDT": 0.1, "SOL/USDT": 0.1}}, "non-negative"),
        ({"step_seconds": 0.0}, "step_seconds 0.0 must be a positive number"),
        ({"step_seconds": 1e-9}, "shorter than the clock's resolution"),
        ({"book_levels": 0}, "at least 1"),
        ({"pairs": (BTC, BTC)}, "BTC/USDT is listed twice"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        market(**kwargs)  # type: ignore[arg-type]


def test_start_time_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SimulatedMarket(DEFAULT_PAPER_PAIRS, seed=1, start_time=datetime(2024, 1, 1))  # noqa: DTZ001
