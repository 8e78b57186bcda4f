"""Market data: instruments, the sources that feed prices, candles, tickers, order books and exchange status.

One worker leads (a lease in the cache): it polls the sources, builds candles, persists them and publishes live
updates. Every worker serves reads — latest tickers and books from the cache (Redis when configured), history from
the database — so several API workers behind a load balancer show the same market.

Candles: 1m candles are built from trades; 5m, 15m, 1h, 4h and 1d are rebuilt from the stored 1m candles each time
a minute closes. A candle's `close_time` is the last instant inside it (`open_time + timeframe - 1µs`); a bucket
without trades has no candle (gaps are never filled with synthetic candles). A candle enters the history when its
first minute closes; the minute still forming is published live on the `candles:` channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from cival.core.exceptions import NotFound, ValidationFailed
from cival.core.logging import get_logger
from cival.database.models import ExchangeStatus, MarketDataOHLCV, OrderBookSnapshot, PriceTicker, TradingPair
from cival.database.upsert import upsert
from cival.domain.candles import TIMEFRAMES, Candle, CandleBuilder, aggregate_candles, bucket_start
from cival.domain.instruments import DEFAULT_PAPER_PAIRS, DEFAULT_START_PRICES, DEFAULT_VOLATILITIES, Instrument
from cival.domain.order_book import OrderBookL2
from cival.domain.simulated_market import BookEvent, TradeEvent
from cival.models.market_models import CandleOut, CandleRows, OrderBookOut, TickerOut

log = get_logger(__name__)

HIGHER_TIMEFRAMES = ("5m", "15m", "1h", "4h", "1d")
MAX_CANDLES = 10_000
LEADER_KEY = "md:leader"
_EIGHT = Decimal("0.00000001")
_PERCENT = Decimal("0.0001")
_DAY = timedelta(days=1)


class UnknownExchange(ValidationFailed):
    code = "unknown_exchange"


class UnknownSymbol(ValidationFailed):
    code = "unknown_symbol"


class UnknownTimeframeError(ValidationFailed):
    code = "unknown_timeframe"


class InvalidRange(ValidationFailed):
    code = "invalid_range"


class NoMarketData(NotFound):
    code = "no_market_data"


def paper_instruments(settings: Settings) -> tuple[tuple[Instrument, ...], dict[str, Decimal], dict[str, float]]:
    """The paper exchange's instruments with their start prices and volatilities (validated at load time)."""
    if settings.paper_pairs is None:
        return DEFAULT_PAPER_PAIRS, dict(DEFAULT_START_PRICES), dict(DEFAULT_VOLATILITIES)
    instruments, prices, vols = [], {}, {}
    for pair in settings.paper_pairs:
        base, _, quote = pair.symbol.partition("/")
        instruments.append(
            Instrument(
                exchange="paper",
                symbol=pair.symbol,
                base_asset=base,
                quote_asset=quote,
                tick_size=pair.tick_size,
                step_size=pair.step_size,
                min_order_size=pair.min_order_size,
                max_order_size=pair.max_order_size,
                min_notional=pair.min_notional,
            )
        )
        prices[pair.symbol] = pair.start_price
        vols[pair.symbol] = pair.volatility
    return tuple(instruments), prices, vols


@dataclass
class _Feed:
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


class MarketDataService:
    def __init__(self, database: Database, cache: Cache, settings: Settings) -> None:
        self.database = database
        self.cache = cache
        self.settings = settings
        self.instance_id = uuid.uuid4().hex
        instruments, self._start_prices, self._volatilities = paper_instruments(settings)
        self.instruments: dict[tuple[str, str], Instrument] = {(i.exchange, i.symbol): i for i in instruments}
        self.sources: list[MarketDataSource] = []
        self._feeds: dict[tuple[str, str], _Feed] = {}
        self._known: set[tuple[str, str]] = set()
        self._status: dict[str, str] = {}
        self._last_ticker_write = 0.0
        self._parsed_books: dict[str, tuple[bytes, OrderBookL2]] = {}  # cache key -> (its value, parsed): latest_book
        self._last_snapshot_write = 0.0
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        # Latest books and tickers vanish if no leader refreshes them: stale prices are worse than none.
        self._latest_ttl = max(30.0, 10 * settings.market_step_seconds)
        self.publish: Any = None  # set by the registry: async (channel, data) -> None
        # Called on the leader after each source's step with (exchange, events): the paper exchange matches on them.
        self.listeners: list[Callable[[str, list[Any]], Awaitable[None]]] = []
        # Called with True when this instance starts leading and False when it stops (the paper exchange follows).
        self.leadership_listeners: list[Callable[[bool], Awaitable[None]]] = []

    # --- life cycle ------------------------------------------------------------------------------------

    async def start(self, *, run: bool = True) -> None:
        """Seed the paper pairs, then (when enabled) start leading or following in the background."""
        await self._seed_pairs()
        if run and self.settings.market_data_enabled:
            self._task = asyncio.create_task(self._run(), name="market-data")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.is_leader:
            with contextlib.suppress(Exception):
                if await self.cache.get(LEADER_KEY) == self.instance_id.encode():
                    await self.cache.delete(LEADER_KEY)
            self.is_leader = False
            await self._tell_leadership(False)

    async def _seed_pairs(self) -> None:
        rows = [
            {
                "id": uuid.uuid4(),
                "symbol": i.symbol,
                "base_asset": i.base_asset,
                "quote_asset": i.quote_asset,
                "exchange": i.exchange,
                "min_order_size": i.min_order_size,
                "max_order_size": i.max_order_size,
                "tick_size": i.tick_size,
                "step_size": i.step_size,
                "is_active": i.is_active,
            }
            for i in self.instruments.values()
        ]
        async with self.database.system_session() as session:
            await upsert(
                session,
                TradingPair.__table__,  # type: ignore[arg-type]
                rows,
                keys=("symbol", "exchange"),
                update=("min_order_size", "max_order_size", "tick_size", "step_size", "is_active"),
            )

    async def _run(self) -> None:
        interval = self.settings.market_step_seconds
        lease = max(3 * interval, 5.0)
        while True:
            started = time.monotonic()
            try:
                if await self._hold_lease(lease):
                    if not self.is_leader:
                        await self.become_leader()
                    await self.run_step()
                elif self.is_leader:
                    log.warning("lost market data leadership", instance=self.instance_id)
                    self.is_leader = False
                    await self._tell_leadership(False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("market data step failed")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _hold_lease(self, ttl: float) -> bool:
        """Take the leader lease if it is free, or renew it if this instance holds it (atomically: a lease that
        expired meanwhile and went to another instance is not taken back)."""
        me = self.instance_id.encode()
        return await self.cache.add(LEADER_KEY, me, ttl=ttl) or await self.cache.renew(LEADER_KEY, me, ttl=ttl)

    async def become_leader(self, *, start_time: datetime | None = None) -> None:
        """Build the sources, continuing from the last stored prices and the last day of 1m candles."""
        start = start_time or datetime.now(UTC).replace(microsecond=0)
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
        if self.settings.replay_source:
            replay = await self._replay_source(start)
            self.sources.append(replay)
            paper = tuple(i for i in paper if i.symbol != replay.instrument.symbol)
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
        self._feeds = {key: _Feed(i, CandleBuilder(i.symbol, i.exchange)) for key, i in self.instruments.items()}
        for row in history:
            feed = self._feeds.get((row.exchange, row.symbol))
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
        self.is_leader = True
        log.info("leading market data", instance=self.instance_id, pairs=len(self._feeds))
        await self._tell_leadership(True)

    async def _tell_leadership(self, leading: bool) -> None:
        for listener in self.leadership_listeners:
            try:
                await listener(leading)
            except Exception:
                log.exception("leadership listener failed", leading=leading)

    async def _replay_source(self, start: datetime) -> ReplaySource:
        """The replay of a stored candle series onto the paper pair of the same symbol."""
        exchange, symbol, timeframe = str(self.settings.replay_source).split(":")
        instrument = self.instruments.get(("paper", symbol))
        if instrument is None:
            raise UnknownSymbol(
                f"cannot replay {symbol}: it is not a paper pair; add it to CIVAL_PAPER_PAIRS with a fitting tick size"
            )
        table = MarketDataOHLCV
        async with self.database.system_session(read_only=True) as session:
            rows = (
                await session.execute(
                    select(table.open_price, table.high_price, table.low_price, table.close_price, table.volume)
                    .where(table.exchange == exchange, table.symbol == symbol, table.timeframe == timeframe)
                    .order_by(table.open_time)
                )
            ).all()
        return ReplaySource(
            instrument,
            [RecordedCandle(*row) for row in rows],
            start_time=start,
            step_seconds=self.settings.market_step_seconds,
        )

    # --- the leader's step ---------------------------------------------------------------------------------

    async def run_step(self) -> None:
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
                self._feeds[(exchange, event.book.symbol)].book = event.book
            elif isinstance(event, TradeEvent):
                trades.setdefault(event.symbol, []).append(event)
        to_store: list[Candle] = []
        frames: list[tuple[str, dict[str, Any]]] = []
        tickers: list[TickerOut] = []
        for instrument in source.instruments:
            feed = self._feeds[(exchange, instrument.symbol)]
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
    def _roll_up(feed: _Feed, candle: Candle, timeframe: str) -> Candle:
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
    def _ticker(feed: _Feed, now: datetime) -> TickerOut | None:
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
        for (feed_exchange, _), feed in self._feeds.items():
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

    def instrument(self, exchange: str, symbol: str) -> Instrument:
        """The instrument, or a precise 422 for an unknown exchange or symbol."""
        if not any(e == exchange for e, _ in self.instruments):
            known = ", ".join(sorted({e for e, _ in self.instruments}))
            raise UnknownExchange(f"unknown exchange {exchange!r}; known exchanges: {known}")
        instrument = self.instruments.get((exchange, symbol))
        if instrument is None:
            known = ", ".join(sorted(s for e, s in self.instruments if e == exchange))
            raise UnknownSymbol(f"unknown symbol {symbol!r} on {exchange}; symbols are BASE/QUOTE, one of: {known}")
        return instrument

    async def known_pair(self, exchange: str, symbol: str) -> None:
        """Market data exists for any pair in `trading_pairs` (the paper pairs, and imported history)."""
        if (exchange, symbol) in self._known or (exchange, symbol) in self.instruments:
            return
        async with self.database.system_session(read_only=True) as session:
            pairs = {(e, s) for e, s in (await session.execute(select(TradingPair.exchange, TradingPair.symbol))).all()}
        self._known |= pairs
        if (exchange, symbol) in self._known:
            return
        exchanges = sorted({e for e, _ in self._known})
        if exchange not in exchanges:
            raise UnknownExchange(f"unknown exchange {exchange!r}; known exchanges: {', '.join(exchanges)}")
        symbols = sorted(s for e, s in self._known if e == exchange)
        raise UnknownSymbol(
            f"unknown symbol {symbol!r} on {exchange}; symbols are BASE/QUOTE, one of: {', '.join(symbols)}"
        )

    def validate_public_channel(self, name: str) -> None:
        """Raise `UnknownChannel`-compatible 422s for a public channel name (`ticker:`/`book:`/`candles:`)."""
        kind, _, rest = name.partition(":")
        if kind in ("ticker", "book"):
            exchange, _, symbol = rest.partition(":")
            self.instrument(exchange, symbol)
            return
        if kind == "candles":
            exchange, _, rest = rest.partition(":")
            symbol, _, timeframe = rest.rpartition(":")
            self.instrument(exchange, symbol)
            if timeframe not in TIMEFRAMES:
                raise UnknownTimeframeError(f"unknown timeframe {timeframe!r}; one of: {', '.join(TIMEFRAMES)}")
            return
        raise UnknownSymbol(f"unknown channel {name!r}; public channels are ticker:, book: and candles:")

    async def list_pairs(self, exchange: str | None = None) -> list[TradingPair]:
        async with self.database.system_session(read_only=True) as session:
            query = select(TradingPair).order_by(TradingPair.exchange, TradingPair.symbol)
            if exchange is not None:
                query = query.where(TradingPair.exchange == exchange)
            pairs = list((await session.scalars(query)).all())
        if exchange is not None and not pairs:
            raise UnknownExchange(f"unknown exchange {exchange!r}")
        return pairs

    async def tickers(self, exchange: str | None = None, symbol: str | None = None) -> list[TickerOut]:
        keys = [
            k for k in self.instruments if (exchange is None or k[0] == exchange) and (symbol is None or k[1] == symbol)
        ]
        if exchange is not None:
            self.instrument(exchange, symbol if symbol is not None else keys[0][1] if keys else "")
        elif symbol is not None and not keys:
            known = ", ".join(sorted({s for _, s in self.instruments}))
            raise UnknownSymbol(f"unknown symbol {symbol!r}; symbols are BASE/QUOTE, one of: {known}")
        # One read for all of them (one MGET on Redis: valuations read every pair's ticker per fill batch).
        found = await self.cache.get_many([f"md:latest:{ticker_channel(*key)}" for key in sorted(keys)])
        out = [TickerOut.model_validate_json(cached) for cached in found if cached is not None]
        if not out and keys:  # a cold cache (restart, no leader yet): fall back to the last persisted tickers
            async with self.database.system_session(read_only=True) as session:
                rows = (await session.scalars(select(PriceTicker))).all()
            out = [
                TickerOut(
                    exchange=r.exchange,
                    symbol=r.symbol,
                    price=r.price,
                    bid_price=r.bid_price,
                    ask_price=r.ask_price,
                    volume_24h=r.volume_24h,
                    change_24h=None if r.change_24h is None else format(r.change_24h, "f"),
                    updated_at=r.updated_at,
                )
                for r in rows
                if (r.exchange, r.symbol) in keys
            ]
        return out

    async def order_book(self, exchange: str, symbol: str, depth: int) -> OrderBookOut:
        self.instrument(exchange, symbol)
        cached = await self.cache.get(f"md:latest:{book_channel(exchange, symbol)}")
        if cached is None:
            raise NoMarketData(f"no order book for {symbol} on {exchange} yet; the market data source is starting")
        book = OrderBookOut.model_validate_json(cached)
        return book.model_copy(update={"bids": book.bids[:depth], "asks": book.asks[:depth]})

    async def latest_book(self, exchange: str, symbol: str) -> OrderBookL2 | None:
        """The latest book as a domain object (for the paper exchange and valuations): the leader's own, the one it
        last published, from memory (the leader works every paper order, D22: on Redis that saves two round trips
        per order); elsewhere from the cache, parsed once per market step."""
        if self.is_leader:
            feed = self._feeds.get((exchange, symbol))
            if feed is not None and feed.book is not None:
                return feed.book
        key = f"md:latest:{book_channel(exchange, symbol)}"
        cached = await self.cache.get(key)
        if cached is None:
            return None
        parsed = self._parsed_books.get(key)
        if parsed is not None and parsed[0] == cached:  # the same book as last time: parsed once per market step
            return parsed[1]
        data = json.loads(cached)
        book = OrderBookL2.from_json_levels(
            symbol, exchange, data["bids"], data["asks"], datetime.fromisoformat(data["timestamp"])
        )
        self._parsed_books[key] = (cached, book)
        return book

    async def candles(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        *,
        start: datetime | None,
        end: datetime | None,
        limit: int,
    ) -> CandleRows:
        """Candles oldest first: from `start` forwards, or the newest `limit` up to `end` (default now)."""
        await self.known_pair(exchange, symbol)
        if timeframe not in TIMEFRAMES:
            raise UnknownTimeframeError(f"unknown timeframe {timeframe!r}; one of: {', '.join(TIMEFRAMES)}")
        if start is not None and end is not None and start > end:
            raise InvalidRange(f"start {start.isoformat()} is after end {end.isoformat()}")
        table = MarketDataOHLCV
        series = (table.exchange == exchange, table.symbol == symbol, table.timeframe == timeframe)
        # Columns, not ORM entities: a page can be 10,000 rows, and identity-mapped objects cost 4x as much.
        query = select(
            table.open_time,
            table.close_time,
            table.open_price,
            table.high_price,
            table.low_price,
            table.close_price,
            table.volume,
            table.quote_volume,
            table.trades_count,
        ).where(*series)
        if end is not None:
            query = query.where(table.open_time <= end)
        async with self.database.system_session(read_only=True) as session:
            if start is not None:
                rows = list(
                    (
                        await session.execute(
                            query.where(table.open_time >= start).order_by(table.open_time).limit(limit + 1)
                        )
                    ).all()
                )
                more_after = len(rows) > limit
                rows = rows[:limit]
                more_before = (
                    await session.scalar(select(table.id).where(*series, table.open_time < start).limit(1))
                ) is not None
            else:
                rows = list((await session.execute(query.order_by(table.open_time.desc()).limit(limit + 1))).all())
                more_before = len(rows) > limit
                rows = rows[:limit][::-1]
                more_after = (
                    end is not None
                    and (await session.scalar(select(table.id).where(*series, table.open_time > end).limit(1)))
                    is not None
                )
        step = timedelta(microseconds=1)
        return CandleRows(
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
            rows=rows,
            next_start=rows[-1].close_time + step if more_after and rows else None,
            prev_end=rows[0].open_time - step if more_before and rows else None,
        )

    async def exchange_status(self) -> list[ExchangeStatus]:
        async with self.database.system_session(read_only=True) as session:
            return list((await session.scalars(select(ExchangeStatus).order_by(ExchangeStatus.exchange))).all())
