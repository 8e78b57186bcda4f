"""Market data: instruments, the sources that feed prices, candles, tickers, order books and exchange status.

One worker leads (a lease in the cache): its `MarketFeed` (services/market_feed.py) polls the sources, builds
candles, persists them and publishes live updates. Every worker serves reads — latest tickers and books from the
cache (Redis when configured), history from the database — so several API workers behind a load balancer show the
same market.

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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from cival.config import Settings
from cival.core.cache import Cache
from cival.core.db import Database
from cival.core.exceptions import NotFound, ValidationFailed
from cival.core.logging import get_logger
from cival.database.models import ExchangeStatus, MarketDataOHLCV, PriceTicker, TradingPair
from cival.database.upsert import upsert
from cival.domain.candles import TIMEFRAMES
from cival.domain.instruments import DEFAULT_PAPER_PAIRS, DEFAULT_START_PRICES, DEFAULT_VOLATILITIES, Instrument
from cival.domain.order_book import OrderBookL2
from cival.models.market_models import CandleRows, OrderBookOut, TickerOut
from cival.services.market_feed import MarketFeed, book_channel, ticker_channel

log = get_logger(__name__)

MAX_CANDLES = 10_000
LEADER_KEY = "md:leader"


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


class MarketDataService:
    def __init__(self, database: Database, cache: Cache, settings: Settings) -> None:
        self.database = database
        self.cache = cache
        self.settings = settings
        self.instance_id = uuid.uuid4().hex
        instruments, start_prices, volatilities = paper_instruments(settings)
        self.instruments: dict[tuple[str, str], Instrument] = {(i.exchange, i.symbol): i for i in instruments}
        # Started when this instance becomes the leader (`become_leader`), stepped by it alone.
        self.feed = MarketFeed(database, cache, settings, self.instruments, start_prices, volatilities)
        self._known: set[tuple[str, str]] = set()
        self._parsed_books: dict[str, tuple[bytes, OrderBookL2]] = {}  # cache key -> (its value, parsed): latest_book
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        # Called with True when this instance starts leading and False when it stops (the paper exchange follows).
        self.leadership_listeners: list[Callable[[bool], Awaitable[None]]] = []
        # Called the moment this instance starts taking the lead, before its feed starts (the paper exchange's
        # placements then wait for the takeover rather than find no leader).
        self.takeover_listeners: list[Callable[[], None]] = []

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
        """Tell the takeover listeners, start the feed (its sources continue from the last stored prices and the last
        day of 1m candles), then tell the leadership listeners."""
        start = start_time or datetime.now(UTC).replace(microsecond=0)
        for listener in self.takeover_listeners:
            listener()
        await self.feed.start(start, replay=self._replay())
        self.is_leader = True
        log.info("leading market data", instance=self.instance_id, pairs=len(self.feed.pairs))
        await self._tell_leadership(True)

    def _replay(self) -> tuple[str, str, Instrument] | None:
        """The configured replay (`CIVAL_REPLAY_SOURCE`): its exchange, timeframe and the paper pair it drives."""
        if not self.settings.replay_source:
            return None
        exchange, symbol, timeframe = str(self.settings.replay_source).split(":")
        instrument = self.instruments.get(("paper", symbol))
        if instrument is None:
            raise UnknownSymbol(
                f"cannot replay {symbol}: it is not a paper pair; add it to CIVAL_PAPER_PAIRS with a fitting tick size"
            )
        return exchange, timeframe, instrument

    async def run_step(self) -> None:
        """The leader's step: poll every source once, then persist and publish what changed (`MarketFeed.step`)."""
        await self.feed.step()

    async def _tell_leadership(self, leading: bool) -> None:
        for listener in self.leadership_listeners:
            try:
                await listener(leading)
            except Exception:
                log.exception("leadership listener failed", leading=leading)

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
            feed = self.feed.pairs.get((exchange, symbol))
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
