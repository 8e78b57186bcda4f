"""The leader's market feed: each step, every source polled and its events turned into books, 1m candles (rolled
up into the higher timeframes), tickers and exchange status, stored and published.

Only the worker holding the market-data lease runs it (`MarketDataService` holds the lease, starts the feed when it
becomes the leader and serves the reads every worker answers). `start` builds the sources, continuing from the last
stored prices and the last day of 1m candles; `step` polls them once.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import delete, select

from cival.config import Settings
from cival.connectors.base import MarketDataSource, SourceUnavailable
from cival.connectors.replay import RecordedCandle, ReplaySource
from cival.connectors.simulated import SimulatedSource
from cival.core.cache import Cache
from cival.core.db import Database
from cival.core.logging import get_logger
from cival.database.models import ExchangeStatus, MarketDataOHLCV, OrderBookSnapshot, PriceTicker
from cival.database.upsert import upsert
from cival.domain.candles import TIMEFRAMES, Candle, CandleBuilder, aggregate_candles, bucket_start
from cival.domain.instruments import Instrument
from cival.domain.order_book import OrderBookL2
from cival.domain.simulated_market import BookEvent, TradeEvent
from cival.models.market_models import CandleOut, OrderBookOut, TickerOut

log = get_logger(__name__)


HIGHER_TIMEFRAMES = ("5m", "15m", "1h", "4h", "1d")
_EIGHT = Decimal("0.00000001")
_PERCENT = Decimal("0.0001")
_DAY = timedelta(days=1)


@dataclass
class PairFeed:
    """The live state of one pair on the leader."""

    instrument: Instrument
    builder: CandleBuilder
    history: deque[Candle] = field(default_factory=lambda: deque(maxlen=24 * 60))
    last_price: Decimal | None = None
    book: OrderBookL2 | None = None


def ticker_channel(exchange: str, symbol: str) -> str:
    return f"ticker:{exchange}:{symbol}"


def book_channel(exchange: str, symbol: str) -> str:
    return f"book:{exchange}:{symbol}"


def candles_channel(exchange: str, symbol: str, timeframe: str) -> str:
    return f"candles:{exchange}:{symbol}:{timeframe}"


def _candle_row(candle: Candle) -> dict[str, Any]:
    quote_volume = candle.quote_volume
    return {
        "id": uuid.uuid4(),
        "symbol": candle.symbol,
        "exchange": candle.exchange,
        "timeframe": candle.timeframe,
        "open_time": candle.open_time,
        "close_time": candle.close_time,
        "open_price": candle.open,
        "high_price": candle.high,
        "low_price": candle.low,
        "close_price": candle.close,
        "volume": candle.volume,
        # Σ price × quantity can carry more decimals than the column; it is a statistic, so it is rounded.
        "quote_volume": None if quote_volume is None else quote_volume.quantize(_EIGHT, ROUND_HALF_EVEN),
        "trades_count": candle.trades_count,
    }


def _candle_out(candle: Candle, *, closed: bool) -> dict[str, Any]:
    data = CandleOut(
        open_time=candle.open_time,
        close_time=candle.close_time,
        open=candle.open,
        high=candle.high,
        low=candle.low,
        close=candle.close,
        volume=candle.volume,
        quote_volume=candle.quote_volume,
        trades_count=candle.trades_count,
    ).model_dump(mode="json")
    data["closed"] = closed
    return data


class MarketFeed:
    """The leader's sources and the live state of every pair: books, candles being built, the last day of 1m
    candles, what was last written. `publish` (set by the registry) sends a public channel's frame; `listeners` are
    called after each source's step with (exchange, events): the paper exchange matches on them."""

    def __init__(
        self,
        database: Database,
        cache: Cache,
        settings: Settings,
        instruments: dict[tuple[str, str], Instrument],
        start_prices: dict[str, Decimal],
        volatilities: dict[str, float],
    ) -> None:
        self.database = database
        self.cache = cache
        self.settings = settings
        self.instruments = instruments
        self._start_prices = start_prices
        self._volatilities = volatilities
        self.sources: list[MarketDataSource] = []
        self.pairs: dict[tuple[str, str], PairFeed] = {}
        self._status: dict[str, str] = {}
        self._last_ticker_write = 0.0
        self._last_snapshot_write = 0.0
        # Latest books and tickers vanish if no leader refreshes them: stale prices are worse than none.
        self._latest_ttl = max(30.0, 10 * settings.market_step_seconds)
        self.publish: Callable[[str, dict[str, Any]], Awaitable[object]] | None = None
        self.listeners: list[Callable[[str, list[Any]], Awaitable[None]]] = []

    async def start(self, start: datetime, *, replay: tuple[str, str, Instrument] | None) -> None:
        """Build the sources, continuing from the last stored prices and the last day of 1m candles; `replay`, the
        (exchange, timeframe) of a stored candle series replayed onto the paper pair `Instrument`."""
        prices = dict(self._start_prices)
        async with self.database.system_session(read_only=True) as session:
            for ticker in (await session.scalars(select(PriceTicker).where(PriceTicker.exchange == "paper"))).all():
                if ticker.symbol in prices:
                    prices[ticker.symbol] = ticker.price
            history = (
                await session.scalars(
                    select(MarketDataOHLCV)
                    .where(MarketDataOHLCV.timeframe == "1m", MarketDataOHLCV.open_time >= start - _DAY)
                    .order_by(MarketDataOHLCV.open_time)
                )
            ).all()
        paper = tuple(i for (exchange, _), i in self.instruments.items() if exchange == "paper")
        self.sources = []
        if replay is not None:
            source = await self._replay_source(*replay, start)
            self.sources.append(source)
            paper = tuple(i for i in paper if i.symbol != source.instrument.symbol)
        if paper:
            self.sources.append(
                SimulatedSource(
                    paper,
                    seed=self.settings.market_seed,
                    start_time=start,
                    step_seconds=self.settings.market_step_seconds,
                    start_prices=prices,
                    volatilities=self._volatilities,
                )
            )
        self.pairs = {key: PairFeed(i, CandleBuilder(i.symbol, i.exchange)) for key, i in self.instruments.items()}
        for row in history:
            feed = self.pairs.get((row.exchange, row.symbol))
            # The minute the new leader starts in is rebuilt from its own trades (and replaces the stored one).
            if feed is not None and row.open_time < bucket_start(start, "1m"):
                feed.history.append(
                    Candle(
                        symbol=row.symbol,
                        exchange=row.exchange,
                        timeframe="1m",
                        open_time=row.open_time,
                        open=row.open_price,
                        high=row.high_price,
                        low=row.low_price,
                        close=row.close_price,
                        volume=row.volume,
                        quote_volume=row.quote_volume if row.quote_volume is not None else Decimal(0),
                        trades_count=row.trades_count or 0,
                    )
                )
        # What a previous leadership of this instance remembered may be stale: write everything afresh.
        self._status.clear()
        self._last_ticker_write = self._last_snapshot_write = 0.0

    async def _replay_source(
        self, exchange: str, timeframe: str, instrument: Instrument, start: datetime
    ) -> ReplaySource:
        """The replay of a stored candle series onto the paper pair of the same symbol."""
        table = MarketDataOHLCV
        async with self.database.system_session(read_only=True) as session:
            rows = (
                await session.execute(
                    select(table.open_price, table.high_price, table.low_price, table.close_price, table.volume)
                    .where(table.exchange == exchange, table.symbol == instrument.symbol, table.timeframe == timeframe)
                    .order_by(table.open_time)
                )
            ).all()
        return ReplaySource(
            instrument,
            [RecordedCandle(*row) for row in rows],
            start_time=start,
            step_seconds=self.settings.market_step_seconds,
        )

    async def step(self) -> None:
        """Poll every source once, then persist and publish what changed."""
        for source in self.sources:
            started = time.perf_counter()
            try:
                events = await source.poll()
            except SourceUnavailable as exc:
                await self._record_status(source.exchange, "maintenance" if exc.maintenance else "offline", None, exc)
                continue
            elapsed_ms = int((time.perf_counter() - started) * 1000)
            await self._process(source, events, elapsed_ms)
            for listener in self.listeners:
                try:
                    await listener(source.exchange, events)
                except Exception:
                    log.exception("market data listener failed", exchange=source.exchange)

    async def _process(self, source: MarketDataSource, events: list[Any], elapsed_ms: int) -> None:
        exchange = source.exchange
        now = max((e.book.timestamp for e in events if isinstance(e, BookEvent)), default=datetime.now(UTC))
        trades: dict[str, list[TradeEvent]] = {}
        for event in events:
            if isinstance(event, BookEvent):
                self.pairs[(exchange, event.book.symbol)].book = event.book
            elif isinstance(event, TradeEvent):
                trades.setdefault(event.symbol, []).append(event)
        to_store: list[Candle] = []
        frames: list[tuple[str, dict[str, Any]]] = []
        tickers: list[TickerOut] = []
        for instrument in source.instruments:
            feed = self.pairs[(exchange, instrument.symbol)]
            closed: list[Candle] = []
            for trade in trades.get(instrument.symbol, []):
                closed += feed.builder.add_trade(trade.tick)
                feed.last_price = trade.tick.price
            closed += feed.builder.advance(now)
            for candle in closed:
                if feed.history and feed.history[-1].open_time == candle.open_time:
                    feed.history.pop()
                feed.history.append(candle)
                to_store.append(candle)
                frames.append((candles_channel(exchange, candle.symbol, "1m"), _candle_out(candle, closed=True)))
                for tf in HIGHER_TIMEFRAMES:
                    rolled = self._roll_up(feed, candle, tf)
                    to_store.append(rolled)
                    is_final = candle.close_time == rolled.close_time  # its last minute just closed
                    frames.append((candles_channel(exchange, candle.symbol, tf), _candle_out(rolled, closed=is_final)))
            forming = feed.builder.current()
            if forming is not None:
                frames.append((candles_channel(exchange, instrument.symbol, "1m"), _candle_out(forming, closed=False)))
            if feed.book is not None:
                book = self._book_out(feed.book)
                await self.cache.set(
                    f"md:latest:{book_channel(exchange, instrument.symbol)}", book.model_dump_json().encode()
                )
                frames.append((book_channel(exchange, instrument.symbol), book.model_dump(mode="json")))
                ticker = self._ticker(feed, now)
                if ticker is not None:
                    tickers.append(ticker)
                    await self.cache.set(
                        f"md:latest:{ticker_channel(exchange, instrument.symbol)}",
                        ticker.model_dump_json().encode(),
                        ttl=self._latest_ttl,
                    )
                    frames.append((ticker_channel(exchange, instrument.symbol), ticker.model_dump(mode="json")))
        await self._persist(exchange, to_store, tickers, elapsed_ms)
        if self.publish is not None:
            for channel, data in frames:
                await self.publish(channel, data)

    @staticmethod
    def _roll_up(feed: PairFeed, candle: Candle, timeframe: str) -> Candle:
        start = bucket_start(candle.open_time, timeframe)
        end = start + TIMEFRAMES[timeframe]
        members = [c for c in feed.history if start <= c.open_time < end]
        return aggregate_candles(members, timeframe)[0]

    @staticmethod
    def _book_out(book: OrderBookL2) -> OrderBookOut:
        levels = book.to_json_levels()
        return OrderBookOut(
            exchange=book.exchange,
            symbol=book.symbol,
            bids=levels["bids"],
            asks=levels["asks"],
            timestamp=book.timestamp,
        )

    @staticmethod
    def _ticker(feed: PairFeed, now: datetime) -> TickerOut | None:
        """Last price and quotes, with 24 h volume and change computed from the candles of the last day."""
        book = feed.book
        price = feed.last_price or (book.mid if book is not None else None)
        if price is None or book is None:
            return None
        since = now - _DAY
        window = [c for c in feed.history if c.open_time >= since]
        forming = feed.builder.current()
        if forming is not None:
            window.append(forming)
        volume = sum((c.volume for c in window), Decimal(0))
        change = None
        if window and window[0].open > 0:
            change = ((price - window[0].open) / window[0].open * 100).quantize(_PERCENT, ROUND_HALF_EVEN)
        best_bid, best_ask = book.best_bid, book.best_ask
        return TickerOut(
            exchange=feed.instrument.exchange,
            symbol=feed.instrument.symbol,
            price=price.quantize(_EIGHT, ROUND_HALF_EVEN),
            bid_price=best_bid.price if best_bid else None,
            ask_price=best_ask.price if best_ask else None,
            volume_24h=volume,
            change_24h=None if change is None else format(change, "f"),
            updated_at=now,
        )

    async def _persist(self, exchange: str, candles: list[Candle], tickers: list[TickerOut], elapsed_ms: int) -> None:
        clock = time.monotonic()
        ticker_due = clock - self._last_ticker_write >= self.settings.ticker_persist_seconds
        snapshot_due = clock - self._last_snapshot_write >= self.settings.book_snapshot_seconds
        status_changed = self._status.get(exchange) != "online"
        if not (candles or ticker_due or snapshot_due or status_changed):
            return
        async with self.database.system_session() as session:
            await upsert(
                session,
                MarketDataOHLCV.__table__,  # type: ignore[arg-type]
                [_candle_row(c) for c in candles],
                keys=("symbol", "exchange", "timeframe", "open_time"),
                update=(
                    "close_time",
                    "open_price",
                    "high_price",
                    "low_price",
                    "close_price",
                    "volume",
                    "quote_volume",
                    "trades_count",
                ),
            )
            if ticker_due or status_changed:
                await upsert(
                    session,
                    PriceTicker.__table__,  # type: ignore[arg-type]
                    [
                        {
                            "id": uuid.uuid4(),
                            "symbol": t.symbol,
                            "exchange": t.exchange,
                            "price": t.price,
                            "bid_price": t.bid_price,
                            "ask_price": t.ask_price,
                            "volume_24h": t.volume_24h,
                            "change_24h": None if t.change_24h is None else Decimal(t.change_24h),
                            "updated_at": t.updated_at,
                        }
                        for t in tickers
                    ],
                    keys=("symbol", "exchange"),
                    update=("price", "bid_price", "ask_price", "volume_24h", "change_24h", "updated_at"),
                )
                await self._status_row(session, exchange, "online", elapsed_ms, None)
                self._last_ticker_write = clock
            if snapshot_due:
                await self._snapshot_books(session, exchange)
                self._last_snapshot_write = clock
        self._status[exchange] = "online"

    async def _snapshot_books(self, session: Any, exchange: str) -> None:
        for (feed_exchange, _), feed in self.pairs.items():
            if feed_exchange != exchange or feed.book is None:
                continue
            levels = feed.book.to_json_levels()
            session.add(
                OrderBookSnapshot(
                    symbol=feed.book.symbol,
                    exchange=exchange,
                    bids=levels["bids"],
                    asks=levels["asks"],
                    timestamp=feed.book.timestamp,
                )
            )
        cutoff = datetime.now(UTC) - timedelta(hours=self.settings.book_retention_hours)
        await session.execute(
            delete(OrderBookSnapshot).where(
                OrderBookSnapshot.exchange == exchange, OrderBookSnapshot.timestamp < cutoff
            )
        )

    async def _record_status(self, exchange: str, status: str, elapsed_ms: int | None, error: Exception | None) -> None:
        if self._status.get(exchange) != status:
            log.warning(
                "exchange status changed", exchange=exchange, status=status, error=str(error) if error else None
            )
        async with self.database.system_session() as session:
            await self._status_row(session, exchange, status, elapsed_ms, error)
        self._status[exchange] = status

    @staticmethod
    async def _status_row(
        session: Any, exchange: str, status: str, elapsed_ms: int | None, error: Exception | None
    ) -> None:
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "exchange": exchange,
            "status": status,
            "error_message": str(error)[:1000] if error else None,
            "updated_at": now,
        }
        update = ["status", "error_message", "updated_at"]
        if error is None:  # a ping is a successful answer
            values |= {"last_ping": now, "response_time_ms": elapsed_ms}
            update += ["last_ping", "response_time_ms"]
        await upsert(session, ExchangeStatus.__table__, [values], keys=("exchange",), update=update)  # type: ignore[arg-type]

    # --- reads (any worker) --------------------------------------------------------------------------------
