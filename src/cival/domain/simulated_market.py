"""A deterministic simulated market: random-walk prices, trades and L2 books for the embedded paper exchange.

Each instrument's mid follows geometric Brownian motion with zero drift,
`S(t+dt) = S(t) * exp(-sigma**2 * dt / 2 + sigma * sqrt(dt) * Z)`, with `sigma` the pair's annualised volatility and
`dt` the step in years (crypto trades all year round: 365 days). Floats are used only inside that arithmetic; every
price and quantity leaving the module is a Decimal on the pair's tick or step.

Per step and pair: 1..`max_trades_per_step` trades at random instants inside the step, priced at the quotes around
the mid interpolated between its old and new value (a taker buy lifts the ask, a sell hits the bid), then a fresh
book of `book_levels` per side around the new mid: spread max(1 tick, `spread_bps` of the price), levels
max(1 tick, `level_gap_bps`) apart, sizes growing away from the mid. Sizes respect the step, min/max order size and
min notional; the best bid is never below one tick, and bid levels that would not be positive are left out.

Each instrument has its own `random.Random`, seeded from the market seed, exchange and symbol, so adding or removing
a pair never changes the paths of the others, and the same seed, instruments and start time give the same events.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from cival.domain.candles import TradeTick
from cival.domain.instruments import DEFAULT_START_PRICES, DEFAULT_VOLATILITIES, Instrument
from cival.domain.order_book import BookLevel, OrderBookL2

TakerSide = Literal["buy", "sell"]
SECONDS_PER_YEAR = 365 * 24 * 60 * 60


@dataclass(frozen=True)
class TradeEvent:
    """A simulated public trade; `side` is the taker's (a buyer lifts the ask, a seller hits the bid)."""

    symbol: str
    tick: TradeTick
    side: TakerSide


@dataclass(frozen=True)
class BookEvent:
    """A fresh L2 snapshot of one pair."""

    book: OrderBookL2


MarketEvent = TradeEvent | BookEvent


@dataclass(frozen=True)
class Ticker:
    """Last trade price and best quotes of one pair."""

    symbol: str
    exchange: str
    last_price: Decimal
    best_bid: Decimal
    best_ask: Decimal
    timestamp: datetime


def _decimal(value: float) -> Decimal:
    # Through repr, once, at the float boundary: Decimal(float) would carry the binary expansion's noise digits.
    return Decimal(repr(value))


class _PairState:
    """One instrument's random source, float mid and last published values."""

    def __init__(self, instrument: Instrument, seed: int, start_price: Decimal, volatility: float) -> None:
        self.instrument = instrument
        # A str seed is hashed with SHA-512 by `random.Random`, so it is stable across processes and Python runs.
        self.rng = random.Random(f"{seed}:{instrument.exchange}:{instrument.symbol}")  # noqa: S311 - simulation
        self.mid = float(start_price)
        self.volatility = volatility
        self.last_price = max(instrument.round_price_down(start_price), instrument.tick_size)
        self.next_trade_id = 1
        # Size limits on the step, worked out once: rounding is exact but not free, and books have many levels.
        self.min_quantity = max(instrument.round_quantity_up(instrument.min_order_size), instrument.step_size)
        self.max_quantity = max(instrument.round_quantity_down(instrument.max_order_size), self.min_quantity)
        # Replaced by the market right after construction and on every step.
        self.book = OrderBookL2(instrument.symbol, instrument.exchange, (), (), datetime(1970, 1, 1, tzinfo=UTC))

    def quantity(self, notional: float, price: Decimal) -> Decimal:
        """A quantity worth about `notional` at `price`, on the step, within the size limits and the min notional."""
        instrument = self.instrument
        smallest = self.min_quantity
        if instrument.min_notional:
            at_min_notional = instrument.round_quantity_up(instrument.min_notional / price)
            # The division may round in its last digit; one more step keeps the notional honest.
            if at_min_notional * price < instrument.min_notional:
                at_min_notional += instrument.step_size
            smallest = max(smallest, at_min_notional)
        # Capped while still a float so an absurdly small price cannot produce an unroundable Decimal.
        wanted = min(notional / float(price), float(self.max_quantity))
        quantity = instrument.round_quantity_down(_decimal(wanted))
        return min(max(quantity, smallest), max(self.max_quantity, smallest))


class SimulatedMarket:
    """Random-walk market for a set of instruments, advanced by `step()`; no wall clock, no I/O."""

    def __init__(
        self,
        instruments: Iterable[Instrument],
        *,
        seed: int,
        start_prices: Mapping[str, Decimal] | None = None,
        volatilities: Mapping[str, float] | None = None,
        step_seconds: float = 1.0,
        start_time: datetime,
        book_levels: int = 20,
        max_trades_per_step: int = 5,
        spread_bps: float = 1.0,
        level_gap_bps: float = 0.5,
        level_notional: float = 5000.0,
        trade_notional: float = 500.0,
    ) -> None:
        if not math.isfinite(step_seconds) or step_seconds <= 0:
            raise ValueError(f"step_seconds {step_seconds} must be a positive number")
        if start_time.tzinfo is None or start_time.utcoffset() is None:
            raise ValueError("start_time must be timezone-aware (UTC)")
        if book_levels < 1 or max_trades_per_step < 1:
            raise ValueError("book_levels and max_trades_per_step must be at least 1")
        prices = DEFAULT_START_PRICES if start_prices is None else start_prices
        vols = DEFAULT_VOLATILITIES if volatilities is None else volatilities
        self._step = timedelta(seconds=step_seconds)
        if self._step < timedelta(microseconds=1):
            raise ValueError(f"step_seconds {step_seconds} is shorter than the clock's resolution (1 microsecond)")
        self._dt_years = step_seconds / SECONDS_PER_YEAR
        self._now = start_time.astimezone(UTC)
        self._book_levels = book_levels
        self._max_trades = max_trades_per_step
        self._spread = spread_bps / 10_000
        self._level_gap = level_gap_bps / 10_000
        self._level_notional = level_notional
        self._trade_notional = trade_notional
        self._pairs: dict[str, _PairState] = {}
        # Inactive pairs are not traded, so they are not simulated either.
        for instrument in (i for i in instruments if i.is_active):
            symbol = instrument.symbol
            if symbol in self._pairs:
                raise ValueError(f"instrument {symbol} is listed twice")
            if symbol not in prices:
                raise ValueError(f"no start price for {symbol}")
            if symbol not in vols:
                raise ValueError(f"no volatility for {symbol}")
            if prices[symbol] <= 0:
                raise ValueError(f"start price {prices[symbol]} of {symbol} must be positive")
            if not math.isfinite(vols[symbol]) or vols[symbol] < 0:
                raise ValueError(f"volatility {vols[symbol]} of {symbol} must be a non-negative number")
            state = _PairState(instrument, seed, prices[symbol], vols[symbol])
            state.book = self._make_book(state)
            self._pairs[symbol] = state

    @property
    def now(self) -> datetime:
        """The simulated clock: start time plus the steps taken."""
        return self._now

    @property
    def instruments(self) -> tuple[Instrument, ...]:
        """The simulated (active) instruments, in the order given."""
        return tuple(state.instrument for state in self._pairs.values())

    def step(self) -> list[MarketEvent]:
        """Advance the clock one step: per pair, move the mid, emit its trades, then its new book."""
        previous, self._now = self._now, self._now + self._step
        events: list[MarketEvent] = []
        for state in self._pairs.values():
            start_mid = state.mid
            sigma = state.volatility
            shock = state.rng.gauss(0.0, 1.0)
            state.mid *= math.exp(-0.5 * sigma * sigma * self._dt_years + sigma * math.sqrt(self._dt_years) * shock)
            events.extend(self._make_trades(state, start_mid, previous))
            state.book = self._make_book(state)
            events.append(BookEvent(state.book))
        return events

    def ticker(self, symbol: str) -> Ticker:
        """Last price and best bid/ask of `symbol`."""
        state = self._state(symbol)
        # A simulated book always has both sides: the best bid is at least one tick and asks are never cut.
        return Ticker(
            symbol=symbol,
            exchange=state.instrument.exchange,
            last_price=state.last_price,
            best_bid=state.book.bids[0].price,
            best_ask=state.book.asks[0].price,
            timestamp=state.book.timestamp,
        )

    def book(self, symbol: str) -> OrderBookL2:
        """The latest L2 book of `symbol`."""
        return self._state(symbol).book

    def _state(self, symbol: str) -> _PairState:
        try:
            return self._pairs[symbol]
        except KeyError:
            raise KeyError(f"{symbol} is not simulated here; known: {', '.join(self._pairs)}") from None

    def _quotes(self, instrument: Instrument, mid: float) -> tuple[Decimal, Decimal]:
        """Best bid and ask around `mid`: a spread of max(1 tick, spread_bps of the price), bid at least 1 tick."""
        tick = instrument.tick_size
        spread = max(tick, instrument.round_price_up(_decimal(mid * self._spread)))
        bid = instrument.round_price_down(_decimal(mid) - spread / 2)
        bid = max(bid, tick)
        return bid, bid + spread

    def _make_trades(self, state: _PairState, start_mid: float, previous: datetime) -> list[TradeEvent]:
        instrument, rng = state.instrument, state.rng
        count = rng.randint(1, self._max_trades)
        step_us = self._step // timedelta(microseconds=1)
        # Trades happen during the step, in time order, along a straight line from the old mid to the new one.
        offsets = sorted(rng.randint(1, step_us) for _ in range(count))
        trades: list[TradeEvent] = []
        for offset in offsets:
            mid = start_mid + (state.mid - start_mid) * offset / step_us
            bid, ask = self._quotes(instrument, mid)
            side: TakerSide = "buy" if rng.random() < 0.5 else "sell"
            price = ask if side == "buy" else bid
            notional = rng.expovariate(1.0 / self._trade_notional)
            tick = TradeTick(
                ts=previous + timedelta(microseconds=offset),
                price=price,
                quantity=state.quantity(notional, price),
                trade_id=str(state.next_trade_id),
            )
            state.next_trade_id += 1
            state.last_price = price
            trades.append(TradeEvent(instrument.symbol, tick, side))
        return trades

    def _make_book(self, state: _PairState) -> OrderBookL2:
        instrument, rng, mid = state.instrument, state.rng, state.mid
        tick = instrument.tick_size
        best_bid, best_ask = self._quotes(instrument, mid)
        gap = max(tick, instrument.round_price_down(_decimal(mid * self._level_gap)))
        bids: list[BookLevel] = []
        asks: list[BookLevel] = []
        for level in range(self._book_levels):
            # Depth grows away from the mid, with noise so the book does not look machine-made.
            size = self._level_notional * (1 + 0.25 * level) * rng.uniform(0.6, 1.4)
            ask_price = best_ask + gap * level
            asks.append(BookLevel(ask_price, state.quantity(size, ask_price)))
            size = self._level_notional * (1 + 0.25 * level) * rng.uniform(0.6, 1.4)
            bid_price = best_bid - gap * level
            # Near zero the bid side runs out of positive prices; it is cut short rather than going negative.
            if bid_price > 0:
                bids.append(BookLevel(bid_price, state.quantity(size, bid_price)))
        return OrderBookL2(instrument.symbol, instrument.exchange, tuple(bids), tuple(asks), self._now)
