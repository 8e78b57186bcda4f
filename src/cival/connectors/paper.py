"""The paper exchange: one `MatchingEngine` per paper pair, fed by the simulated market.

The engines live in the process that leads market data (the leader's step feeds them through
`MarketDataService.listeners`); orders are matched against the market only, never against each other (see
`domain/matching.py`). What leaves the connector is domain events with two things rewritten at the boundary:

- the trade id is `<order id>:<cumulative filled quantity after the fill>`: unique per order and fill, the same
  after a restart (the restored order carries its filled quantity), and deterministic for a given market;
- the fee is `portfolio.fill_fee` (rounded down), the one the reservation was sized to cover (D20).

Events are stored in the order the engines produced them without a lock: each engine call is synchronous, and
its events are handed on (the caller's `apply`, or `sink` for market steps) with no await in between, into the
order path's single, ordered writer (`services/order_applier.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from cival.domain.instruments import Instrument
from cival.domain.matching import (
    Cancelled,
    Event,
    Filled,
    MatchingEngine,
    OpenOrder,
    OrderRequest,
    Rejected,
)
from cival.domain.order_book import OrderBookL2
from cival.domain.orders import Fill
from cival.domain.portfolio import fill_fee
from cival.domain.simulated_market import BookEvent, TradeEvent

PAPER = "paper"
DEFAULT_MAKER_FEE_RATE = Decimal("0.001")
DEFAULT_TAKER_FEE_RATE = Decimal("0.001")

EventSink = Callable[[list[Event]], Awaitable[None]]
BookSource = Callable[[str], Awaitable[OrderBookL2 | None]]


class ConnectorTimeout(Exception):
    """The venue did not answer in time: the order's outcome is unknown until reconciliation asks again."""


def _unused_id() -> str:  # the connector rewrites every trade id (see the module docstring)
    return ""


class PaperExchange:
    """The simulated venue behind paper accounts."""

    exchange = PAPER

    def __init__(
        self,
        instruments: Iterable[Instrument],
        *,
        fee_rates: Mapping[str, tuple[Decimal, Decimal]] | None = None,
        book_source: BookSource | None = None,
    ) -> None:
        self.engines: dict[str, MatchingEngine] = {}
        self.fee_rates: dict[str, tuple[Decimal, Decimal]] = {}
        self._instruments: dict[str, Instrument] = {}
        for instrument in instruments:
            if instrument.exchange != PAPER:
                continue
            maker, taker = (fee_rates or {}).get(instrument.symbol, (DEFAULT_MAKER_FEE_RATE, DEFAULT_TAKER_FEE_RATE))
            self.fee_rates[instrument.symbol] = (maker, taker)
            self._instruments[instrument.symbol] = instrument
            self.engines[instrument.symbol] = MatchingEngine(
                instrument, maker_fee_rate=maker, taker_fee_rate=taker, id_source=_unused_id
            )
        self.book_source = book_source
        self.sink: EventSink | None = None
        self.active = False
        """True in the one process that works paper orders (the market-data leader); others route to it."""
        self._working: dict[str, tuple[str, Decimal, Decimal]] = {}  # order id -> (symbol, quantity, filled)

    def engine(self, symbol: str) -> MatchingEngine:
        return self.engines[symbol]

    # --- orders ---------------------------------------------------------------------

    async def submit(self, symbol: str, request: OrderRequest) -> list[Event]:
        """Work a new order; the events (fills of other orders the fresh book caused included) come back."""
        engine = self.engines[symbol]
        book = None
        if self.book_source is not None:
            latest = await self.book_source(symbol)
            if latest is not None and (engine.book is None or latest.timestamp > engine.book.timestamp):
                book = latest
        self._working[request.order_id] = (symbol, request.quantity, Decimal(0))
        return self._finish(engine.submit(request, book))

    async def cancel(self, symbol: str, order_id: str) -> list[Event]:
        return self._finish(self.engines[symbol].cancel(order_id))

    def is_working(self, symbol: str, order_id: str) -> bool:
        engine = self.engines.get(symbol)
        return engine is not None and engine.is_working(order_id)

    def reset(self) -> None:
        """Forget every working order (before the books are rebuilt from storage)."""
        for symbol, instrument in self._instruments.items():
            maker, taker = self.fee_rates[symbol]
            self.engines[symbol] = MatchingEngine(
                instrument, maker_fee_rate=maker, taker_fee_rate=taker, id_source=_unused_id
            )
        self._working.clear()

    def restore(self, symbol: str, orders: list[OpenOrder]) -> None:
        """Rebuild one pair's resting book from storage (start-up, before any market step)."""
        self.engines[symbol].restore(orders)
        for stored in orders:
            request = stored.request
            self._working[request.order_id] = (symbol, request.quantity, stored.filled_quantity)

    # --- the market -------------------------------------------------------------------------------------------

    async def on_market(self, exchange: str, events: list[Any]) -> None:
        """A market data step: new books and trades fill resting orders and trigger stops."""
        if exchange != PAPER:
            return
        out: list[Event] = []
        for event in events:
            if isinstance(event, BookEvent):
                engine = self.engines.get(event.book.symbol)
                if engine is not None:
                    out += engine.on_book(event.book)
            elif isinstance(event, TradeEvent):
                engine = self.engines.get(event.symbol)
                if engine is not None:
                    out += engine.on_trade_tick(event.tick)
        out = self._finish(out)
        if out and self.sink is not None:
            await self.sink(out)

    # --- internals --------------------------------------------------------------------------------------------

    def _finish(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if isinstance(event, Filled):
                symbol, quantity, filled = self._working[event.order_id]
                fill = event.fill
                filled += fill.quantity
                maker, taker = self.fee_rates[symbol]
                fee = fill_fee(fill.quantity, fill.price, maker if fill.liquidity == "maker" else taker)
                trade_id = f"{event.order_id}:{format(filled.normalize(), 'f')}"
                event = Filled(event.order_id, Fill(trade_id, fill.quantity, fill.price, fee, fill.liquidity, fill.ts))
                if filled >= quantity:
                    del self._working[event.order_id]
                else:
                    self._working[event.order_id] = (symbol, quantity, filled)
            elif isinstance(event, Cancelled | Rejected):
                self._working.pop(event.order_id, None)
            out.append(event)
        return out
