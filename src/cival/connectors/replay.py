"""Replay of recorded candles: drives one paper pair's market along an imported OHLCV series.

Each poll replays one candle as four trades — open, then the extreme nearer the open's direction (low first for a
rising candle, high first for a falling one), the other extreme, then close — sharing its volume, and a book one tick
either side of the close. Candles come from `market_data_ohlcv` (import them with `cival data import`); the
replay loops when it reaches the end. Timestamps follow the leader's clock, not the recording's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from cival.connectors.base import SourceUnavailable
from cival.domain.candles import TradeTick
from cival.domain.instruments import Instrument
from cival.domain.order_book import BookLevel, OrderBookL2
from cival.domain.simulated_market import BookEvent, MarketEvent, TradeEvent

BOOK_LEVELS = 20


@dataclass(frozen=True)
class RecordedCandle:
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


class ReplaySource:
    """A `MarketDataSource` replaying `candles` onto `instrument`, one candle per poll."""

    def __init__(
        self, instrument: Instrument, candles: Sequence[RecordedCandle], *, start_time: datetime, step_seconds: float
    ) -> None:
        if not candles:
            raise SourceUnavailable(f"no recorded candles to replay onto {instrument.symbol}")
        self.instrument = instrument
        self.candles = list(candles)
        self._now = start_time
        self._step = timedelta(seconds=step_seconds)
        self._index = 0
        self._trade_id = 0

    @property
    def exchange(self) -> str:
        return self.instrument.exchange

    @property
    def instruments(self) -> tuple[Instrument, ...]:
        return (self.instrument,)

    def _price(self, value: Decimal) -> Decimal:
        return max(self.instrument.round_price_down(value), self.instrument.tick_size)

    async def poll(self) -> list[MarketEvent]:
        candle = self.candles[self._index % len(self.candles)]
        self._index += 1
        start, self._now = self._now, self._now + self._step
        path = (
            (candle.open, candle.low, candle.high, candle.close)
            if candle.close >= candle.open
            else (candle.open, candle.high, candle.low, candle.close)
        )
        share = self.instrument.round_quantity_down(candle.volume / 4)
        events: list[MarketEvent] = []
        for n, price in enumerate(path):
            quantity = share if n < 3 else self.instrument.round_quantity_down(candle.volume - 3 * share)
            if quantity <= 0:
                continue
            self._trade_id += 1
            tick = TradeTick(
                ts=start + self._step * n / 4,
                price=self._price(price),
                quantity=quantity,
                trade_id=f"replay-{self._trade_id}",
            )
            previous = path[n - 1] if n else candle.open
            events.append(TradeEvent(self.instrument.symbol, tick, "buy" if price >= previous else "sell"))
        close = self._price(candle.close)
        tick_size = self.instrument.tick_size
        depth = max(self.instrument.min_order_size, self.instrument.round_quantity_down(candle.volume / BOOK_LEVELS))
        bids = tuple(
            BookLevel(close - tick_size * k, depth) for k in range(1, BOOK_LEVELS + 1) if close - tick_size * k > 0
        )
        asks = tuple(BookLevel(close + tick_size * k, depth) for k in range(1, BOOK_LEVELS + 1))
        events.append(BookEvent(OrderBookL2(self.instrument.symbol, self.exchange, bids, asks, self._now)))
        return events
