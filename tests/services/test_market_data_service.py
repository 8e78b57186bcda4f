"""The market-data service at service level: the leader's step driven by hand, on the run's database.

Nothing runs in the background (`market_data_enabled=False`): each test builds its own services (a fresh
`MemoryCache` unless it needs the shared one), leads them from a chosen start time and calls `run_step()`. Trades are
observed by wrapping the simulated source's `poll`, frames by replacing `publish` with a recorder.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from cival.config import PaperPair, Settings
from cival.core.cache import Cache, MemoryCache, RedisCache
from cival.core.exceptions import ValidationFailed
from cival.core.service_registry import ServiceRegistry
from cival.database.models import ExchangeStatus, MarketDataOHLCV, OrderBookSnapshot, PriceTicker
from cival.domain.candles import TIMEFRAMES, Candle, TradeTick, aggregate_candles, aggregate_trades
from cival.domain.instruments import DEFAULT_START_PRICES, InstrumentError
from cival.domain.simulated_market import BookEvent, TradeEvent
from cival.models.market_models import CandleOut, OrderBookOut, TickerOut
from cival.services.market_data_service import LEADER_KEY, MarketDataService, paper_instruments
from cival.services.market_feed import HIGHER_TIMEFRAMES
from tests.conftest import TEST_REDIS_URL

START = datetime(2024, 1, 1, tzinfo=UTC)  # aligned to every timeframe, so each roll-up bucket opens at START
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
EIGHT = Decimal("0.00000001")
DEADLINE = 5.0

MakeService = Callable[..., MarketDataService]


# --- helpers ------------------------------------------------------------------------------------------------------


class Recorder:
    """Records what a led service publishes and the trades its (first) source produces."""

    def __init__(self, service: MarketDataService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames: list[tuple[str, dict[str, Any]]] = []
        self.trades: list[TradeEvent] = []
        self.books: list[BookEvent] = []
        self.step_frames: list[list[tuple[str, dict[str, Any]]]] = []
        self._service = service
        service.feed.publish = self._publish
        source = service.feed.sources[0]
        original = source.poll

        async def poll() -> list[Any]:
            events = await original()
            self.trades += [e for e in events if isinstance(e, TradeEvent)]
            self.books += [e for e in events if isinstance(e, BookEvent)]
            return events

        monkeypatch.setattr(source, "poll", poll)

    async def _publish(self, channel: str, data: dict[str, Any]) -> None:
        self.frames.append((channel, data))
        self.step_frames[-1].append((channel, data))

    async def step(self, times: int = 1) -> None:
        for _ in range(times):
            self.step_frames.append([])
            await self._service.run_step()

    def ticks(self, symbol: str) -> list[TradeTick]:
        return [t.tick for t in self.trades if t.symbol == symbol]


def candle_from_row(row: MarketDataOHLCV) -> Candle:
    return Candle(
        symbol=row.symbol,
        exchange=row.exchange,
        timeframe=row.timeframe,
        open_time=row.open_time,
        open=row.open_price,
        high=row.high_price,
        low=row.low_price,
        close=row.close_price,
        volume=row.volume,
        quote_volume=row.quote_volume if row.quote_volume is not None else Decimal(0),
        trades_count=row.trades_count or 0,
    )


def _candle_fields(candle: Candle) -> dict[str, Any]:
    return {
        "open_time": candle.open_time,
        "close_time": candle.close_time,
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "volume": candle.volume,
        "quote_volume": candle.quote_volume,
        "trades_count": candle.trades_count,
    }


def assert_row_is(row: MarketDataOHLCV, candle: Candle) -> None:
    """A stored row holds the candle (quote volume rounded half-even to the column's 8 decimals)."""
    assert (row.symbol, row.exchange, row.timeframe) == (candle.symbol, candle.exchange, candle.timeframe)
    assert row.open_time == candle.open_time
    assert row.close_time == candle.close_time
    assert (row.open_price, row.high_price, row.low_price, row.close_price) == (
        candle.open,
        candle.high,
        candle.low,
        candle.close,
    )
    assert row.volume == candle.volume
    assert row.quote_volume == candle.quote_volume.quantize(EIGHT, ROUND_HALF_EVEN)
    assert row.trades_count == candle.trades_count


async def candle_rows(service: MarketDataService, timeframe: str, symbol: str | None = None) -> list[MarketDataOHLCV]:
    query = select(MarketDataOHLCV).where(MarketDataOHLCV.timeframe == timeframe)
    if symbol is not None:
        query = query.where(MarketDataOHLCV.symbol == symbol)
    async with service.database.system_session(read_only=True) as session:
        return list((await session.scalars(query.order_by(MarketDataOHLCV.symbol, MarketDataOHLCV.open_time))).all())


async def status_row(service: MarketDataService, exchange: str = "paper") -> ExchangeStatus | None:
    async with service.database.system_session(read_only=True) as session:
        return await session.scalar(select(ExchangeStatus).where(ExchangeStatus.exchange == exchange))


async def snapshot_rows(service: MarketDataService) -> list[OrderBookSnapshot]:
    async with service.database.system_session(read_only=True) as session:
        query = select(OrderBookSnapshot).order_by(OrderBookSnapshot.timestamp, OrderBookSnapshot.symbol)
        return list((await session.scalars(query)).all())


async def ticker_rows(service: MarketDataService) -> list[PriceTicker]:
    async with service.database.system_session(read_only=True) as session:
        return list((await session.scalars(select(PriceTicker).order_by(PriceTicker.symbol))).all())


async def cached_ticker(service: MarketDataService, symbol: str) -> TickerOut:
    raw = await service.cache.get(f"md:latest:ticker:paper:{symbol}")
    assert raw is not None, f"no cached ticker for {symbol}"
    return TickerOut.model_validate_json(raw)


async def cached_book(service: MarketDataService, symbol: str) -> OrderBookOut:
    raw = await service.cache.get(f"md:latest:book:paper:{symbol}")
    assert raw is not None, f"no cached book for {symbol}"
    return OrderBookOut.model_validate_json(raw)


def now_second() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def make_service(registry: ServiceRegistry, clean_db: Any) -> AsyncIterator[MakeService]:
    """Builds services on the run's database with their own MemoryCache (or a given cache); stops them after."""
    made: list[MarketDataService] = []

    def make(settings: Settings | None = None, cache: Cache | None = None) -> MarketDataService:
        service = MarketDataService(registry.database, cache or MemoryCache(), settings or registry.settings)
        made.append(service)
        return service

    yield make
    for service in made:
        await service.stop()


@pytest.fixture
async def shared_cache() -> AsyncIterator[Cache]:
    """A cache two services share: Redis under a prefix of this test's own when configured, else memory."""
    if TEST_REDIS_URL:
        cache: Cache = RedisCache(TEST_REDIS_URL, prefix=f"cival-test-{uuid.uuid4().hex[:12]}:")
    else:
        cache = MemoryCache()
    yield cache
    await cache.delete(LEADER_KEY)
    await cache.close()


# --- determinism --------------------------------------------------------------------------------------------------


async def test_same_seed_and_start_give_the_same_market_and_another_seed_does_not(
    make_service: MakeService, registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = make_service(), make_service()
    other = make_service(registry.settings.model_copy(update={"market_seed": 7}))
    # All lead before any steps: a later leader would continue from the tickers the first one persisted.
    for service in (first, second, other):
        await service.become_leader(start_time=START)
    recorders = [Recorder(s, monkeypatch) for s in (first, second, other)]
    for recorder in recorders:
        await recorder.step(65)  # crosses a minute, so closed candles and roll-ups are compared too
    a, b, c = recorders

    assert a.frames == b.frames
    assert [t.tick for t in a.trades] == [t.tick for t in b.trades]
    assert any(ch.endswith(":1m") and data["closed"] for ch, data in a.frames)
    for symbol in SYMBOLS:
        for kind in ("ticker", "book"):
            key = f"md:latest:{kind}:paper:{symbol}"
            assert await first.cache.get(key) == await second.cache.get(key)

    assert a.frames != c.frames
    for symbol in SYMBOLS:
        assert (await cached_ticker(first, symbol)).price != (await cached_ticker(other, symbol)).price
        assert (await cached_book(first, symbol)).bids != (await cached_book(other, symbol)).bids


# --- candles ------------------------------------------------------------------------------------------------------


async def test_closed_minutes_are_stored_as_the_aggregation_of_their_trades(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    await service.become_leader(start_time=START)
    recorder = Recorder(service, monkeypatch)
    await recorder.step(125)  # 00:02:05: 00:00 and 00:01 closed, 00:02 still forming

    rows = await candle_rows(service, "1m")
    assert len(rows) == 2 * len(SYMBOLS)
    for symbol in SYMBOLS:
        stored = [r for r in rows if r.symbol == symbol]
        assert [r.open_time for r in stored] == [START, START + timedelta(minutes=1)]
        expected = aggregate_trades(recorder.ticks(symbol), symbol, "paper")
        assert [c.open_time for c in expected] == [START + timedelta(minutes=m) for m in range(3)]
        for row, candle in zip(stored, expected[:2], strict=True):
            assert_row_is(row, candle)
            assert row.high_price >= max(row.open_price, row.close_price)
            assert row.low_price <= min(row.open_price, row.close_price)
            assert row.volume > 0
            assert row.close_time == row.open_time + timedelta(seconds=59, microseconds=999_999)

        # The forming minute is published live (not closed), with the same values the trades give.
        forming = [d for ch, d in recorder.step_frames[-1] if ch == f"candles:paper:{symbol}:1m"]
        assert forming == [{**CandleOut(**_candle_fields(expected[2])).model_dump(mode="json"), "closed": False}]


async def test_higher_timeframes_are_rolled_up_from_the_stored_minutes_once_per_bucket(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    await service.become_leader(start_time=START)
    recorder = Recorder(service, monkeypatch)
    await recorder.step(125)

    for symbol in SYMBOLS:
        minutes = [candle_from_row(r) for r in await candle_rows(service, "1m", symbol)]
        assert len(minutes) == 2
        for timeframe in HIGHER_TIMEFRAMES:
            stored = await candle_rows(service, timeframe, symbol)
            assert len(stored) == 1, f"{symbol} {timeframe}"
            (expected,) = aggregate_candles(minutes, timeframe)
            assert_row_is(stored[0], expected)
            assert stored[0].close_time == START + TIMEFRAMES[timeframe] - timedelta(microseconds=1)

    # The next minute close re-runs every roll-up of the same buckets: updated in place, never duplicated.
    await recorder.step(60)  # 00:03:05
    async with service.database.system_session(read_only=True) as session:
        table = MarketDataOHLCV
        per_key = (
            await session.execute(
                select(func.count())
                .select_from(table)
                .group_by(table.symbol, table.exchange, table.timeframe, table.open_time)
            )
        ).all()
        total = await session.scalar(select(func.count()).select_from(table))
    assert per_key
    assert all(count == 1 for (count,) in per_key)
    assert total == len(SYMBOLS) * (3 + len(HIGHER_TIMEFRAMES))
    for symbol in SYMBOLS:
        minutes = [candle_from_row(r) for r in await candle_rows(service, "1m", symbol)]
        assert len(minutes) == 3
        for timeframe in HIGHER_TIMEFRAMES:
            (row,) = await candle_rows(service, timeframe, symbol)
            assert_row_is(row, aggregate_candles(minutes, timeframe)[0])


async def test_a_minute_close_publishes_the_closed_candle_and_the_growing_higher_timeframes(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    await service.become_leader(start_time=START)
    recorder = Recorder(service, monkeypatch)
    await recorder.step(60)  # the 60th step reaches 00:01:00 and closes the 00:00 minute

    closing = recorder.step_frames[-1]
    (row,) = await candle_rows(service, "1m", "BTC/USDT")
    closed = [d for ch, d in closing if ch == "candles:paper:BTC/USDT:1m" and d["closed"]]
    assert len(closed) == 1
    assert closed[0]["open_time"] == "2024-01-01T00:00:00Z"
    assert Decimal(closed[0]["close"]) == row.close_price
    assert Decimal(closed[0]["volume"]) == row.volume
    for timeframe in HIGHER_TIMEFRAMES:
        rolled = [d for ch, d in closing if ch == f"candles:paper:BTC/USDT:{timeframe}"]
        assert len(rolled) == 1
        assert Decimal(rolled[0]["volume"]) == row.volume
        assert rolled[0]["closed"] is False
    # No step before the close published a closed candle.
    assert not any(d.get("closed") for frames in recorder.step_frames[:-1] for _, d in frames)


# --- tickers ------------------------------------------------------------------------------------------------------


async def test_latest_ticker_follows_the_last_trade_and_the_day_of_candles(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    await service.become_leader(start_time=START)
    recorder = Recorder(service, monkeypatch)
    await recorder.step(90)  # one closed minute in the history, one forming

    for symbol in SYMBOLS:
        ticker = await cached_ticker(service, symbol)
        ticks = recorder.ticks(symbol)
        book = [b.book for b in recorder.books if b.book.symbol == symbol][-1]
        assert ticker.price == ticks[-1].price
        assert ticker.bid_price is not None
        assert ticker.ask_price is not None
        assert ticker.bid_price < ticker.ask_price
        assert book.best_bid is not None
        assert book.best_ask is not None
        assert (ticker.bid_price, ticker.ask_price) == (book.best_bid.price, book.best_ask.price)
        assert ticker.updated_at == START + timedelta(seconds=90)
        # 24 h volume: the stored 1m candle plus the forming one, i.e. every trade so far.
        (minute,) = await candle_rows(service, "1m", symbol)
        forming = aggregate_trades(ticks, symbol, "paper")[-1]
        assert ticker.volume_24h == minute.volume + forming.volume == sum((t.quantity for t in ticks), Decimal(0))
        assert ticker.change_24h is not None
        assert re.fullmatch(r"-?\d+\.\d{4}", ticker.change_24h), ticker.change_24h
        first_open = ticks[0].price
        expected = ((ticker.price - first_open) / first_open * 100).quantize(Decimal("0.0001"), ROUND_HALF_EVEN)
        assert Decimal(ticker.change_24h) == expected


async def test_price_tickers_are_upserted_one_row_per_pair(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    await service.become_leader(start_time=START)
    recorder = Recorder(service, monkeypatch)
    await recorder.step()
    first = {r.symbol: r for r in await ticker_rows(service)}
    assert set(first) == set(SYMBOLS)

    for _ in range(10):
        service.feed._last_ticker_write = 0.0  # a ticker write is due on every one of these steps
        await recorder.step()

    rows = await ticker_rows(service)
    assert [r.symbol for r in rows] == sorted(SYMBOLS)
    for row in rows:
        ticker = await cached_ticker(service, row.symbol)
        assert row.exchange == "paper"
        assert row.id == first[row.symbol].id  # updated in place
        assert (row.price, row.bid_price, row.ask_price, row.volume_24h) == (
            ticker.price,
            ticker.bid_price,
            ticker.ask_price,
            ticker.volume_24h,
        )
        assert row.change_24h is not None
        assert ticker.change_24h is not None
        assert row.change_24h == Decimal(ticker.change_24h)
        assert row.updated_at == START + timedelta(seconds=11)


# --- order book snapshots -----------------------------------------------------------------------------------------


async def test_book_snapshots_are_written_when_due_and_old_ones_purged(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = now_second()
    service = make_service()
    await service.become_leader(start_time=start)
    recorder = Recorder(service, monkeypatch)

    await recorder.step()  # nothing written yet, so a snapshot is due at once
    snapshots = await snapshot_rows(service)
    assert sorted(s.symbol for s in snapshots) == sorted(SYMBOLS)
    for snapshot in snapshots:
        book = await cached_book(service, snapshot.symbol)
        assert snapshot.exchange == "paper"
        assert snapshot.timestamp == start + timedelta(seconds=1) == book.timestamp
        assert (snapshot.bids, snapshot.asks) == (book.bids, book.asks)
        assert len(snapshot.bids) == len(snapshot.asks) == 20

    old_time = datetime.now(UTC) - timedelta(days=2)
    async with service.database.system_session() as session:
        session.add(OrderBookSnapshot(symbol="BTC/USDT", exchange="paper", bids=[], asks=[], timestamp=old_time))

    await recorder.step()  # the next snapshot is not due for book_snapshot_seconds
    assert len(await snapshot_rows(service)) == len(SYMBOLS) + 1

    service.feed._last_snapshot_write = 0.0  # make the next one due
    await recorder.step()
    remaining = await snapshot_rows(service)
    assert all(s.timestamp > old_time for s in remaining)
    assert [s.timestamp for s in remaining] == [start + timedelta(seconds=1)] * 3 + [start + timedelta(seconds=3)] * 3


async def test_snapshot_interval_follows_the_setting(
    make_service: MakeService, registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service(registry.settings.model_copy(update={"book_snapshot_seconds": 1e-9}))
    await service.become_leader(start_time=now_second())
    recorder = Recorder(service, monkeypatch)
    await recorder.step(3)
    assert len(await snapshot_rows(service)) == 3 * len(SYMBOLS)


# --- exchange status ----------------------------------------------------------------------------------------------


async def test_exchange_status_follows_the_source(make_service: MakeService) -> None:
    service = make_service()
    await service.become_leader(start_time=START)
    source = service.feed.sources[0]
    assert await status_row(service) is None

    await service.run_step()
    online = await status_row(service)
    assert online is not None
    assert (online.status, online.error_message) == ("online", None)
    assert online.last_ping is not None
    assert online.response_time_ms is not None
    assert online.response_time_ms >= 0
    last_ping = online.last_ping

    source.fail("boom")  # type: ignore[attr-defined]
    await service.run_step()
    offline = await status_row(service)
    assert offline is not None
    assert (offline.status, offline.error_message) == ("offline", "boom")
    assert offline.last_ping == last_ping  # a failed poll is not a ping
    assert offline.updated_at >= last_ping

    source.recover()  # type: ignore[attr-defined]
    await service.run_step()
    back = await status_row(service)
    assert back is not None
    assert (back.status, back.error_message) == ("online", None)
    assert back.last_ping is not None
    assert back.last_ping >= last_ping

    source.fail("scheduled upgrade", maintenance=True)  # type: ignore[attr-defined]
    await service.run_step()
    maintenance = await status_row(service)
    assert maintenance is not None
    assert (maintenance.status, maintenance.error_message) == ("maintenance", "scheduled upgrade")


async def test_an_outage_keeps_the_last_prices_and_publishes_nothing(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    await service.become_leader(start_time=START)
    recorder = Recorder(service, monkeypatch)
    await recorder.step()
    before = await service.cache.get("md:latest:ticker:paper:BTC/USDT")
    service.feed.sources[0].fail("boom")  # type: ignore[attr-defined]
    await recorder.step()
    assert recorder.step_frames[-1] == []
    assert await service.cache.get("md:latest:ticker:paper:BTC/USDT") == before


async def test_a_returning_leader_rewrites_a_status_another_leader_left_offline(
    make_service: MakeService, registry: ServiceRegistry
) -> None:
    settings = registry.settings.model_copy(update={"ticker_persist_seconds": 3600.0})
    first, second = make_service(settings), make_service(settings)
    await first.become_leader(start_time=START)
    await first.run_step()
    row = await status_row(first)
    assert row is not None
    assert row.status == "online"

    # `first` loses the lease; `second` leads and its source is down.
    await second.become_leader(start_time=START + timedelta(seconds=1))
    second.feed.sources[0].fail("down")  # type: ignore[attr-defined]
    await second.run_step()
    row = await status_row(first)
    assert row is not None
    assert row.status == "offline"

    # `first` regains the lease (as `_run` does: become_leader, then steps); its source answers.
    await first.become_leader(start_time=START + timedelta(seconds=2))
    await first.run_step()
    row = await status_row(first)
    assert row is not None
    assert row.status == "online", "the exchange answered, but exchange_status still says offline"


# --- leadership ---------------------------------------------------------------------------------------------------


async def test_only_one_service_holds_the_lease_until_the_leader_stops(
    make_service: MakeService, shared_cache: Cache
) -> None:
    await shared_cache.delete(LEADER_KEY)
    first, second = make_service(cache=shared_cache), make_service(cache=shared_cache)
    assert await first._hold_lease(30)
    assert not await second._hold_lease(30)
    assert await first._hold_lease(30)  # the holder renews
    await first.become_leader(start_time=START)
    assert not await second._hold_lease(30)

    await second.stop()  # a follower stopping leaves the leader's lease alone
    assert await shared_cache.get(LEADER_KEY) == first.instance_id.encode()

    await first.stop()
    assert not first.is_leader
    assert await shared_cache.get(LEADER_KEY) is None
    assert await second._hold_lease(30)
    assert not await first._hold_lease(30)
    assert await shared_cache.get(LEADER_KEY) == second.instance_id.encode()


async def test_the_leader_reads_its_own_latest_book_from_memory_and_a_follower_the_same_book_from_the_cache(
    make_service: MakeService, shared_cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    await shared_cache.delete(LEADER_KEY)
    leader, follower = make_service(cache=shared_cache), make_service(cache=shared_cache)
    await leader.become_leader(start_time=START)
    await Recorder(leader, monkeypatch).step(3)
    key = "md:latest:book:paper:BTC/USDT"
    assert await follower.latest_book("paper", "BTC/USDT") == await leader.latest_book("paper", "BTC/USDT")

    await shared_cache.delete(key)  # the leader does not read the cache for it (on Redis: a round trip saved)...
    book = await leader.latest_book("paper", "BTC/USDT")
    assert book is not None
    assert book.bids
    assert book.asks
    assert await follower.latest_book("paper", "BTC/USDT") is None  # ...where a follower has nothing but the cache

    await leader.stop()  # no longer leading: its memory is no source
    assert await leader.latest_book("paper", "BTC/USDT") is None


async def test_a_crashed_leaders_lease_expires(make_service: MakeService) -> None:
    clock = [1000.0]
    cache = MemoryCache(clock=lambda: clock[0])
    first, second = make_service(cache=cache), make_service(cache=cache)
    assert await first._hold_lease(5)
    clock[0] += 4.9
    assert not await second._hold_lease(5)
    clock[0] += 0.2  # past the TTL: the leader never renewed
    assert await second._hold_lease(5)
    assert not await first._hold_lease(5)


# --- restart ------------------------------------------------------------------------------------------------------


async def test_a_new_leader_continues_from_the_stored_prices_and_candles(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_service()
    await old.become_leader(start_time=START)
    old_recorder = Recorder(old, monkeypatch)
    await old_recorder.step(125)
    old_minutes = {s: [candle_from_row(r) for r in await candle_rows(old, "1m", s)] for s in SYMBOLS}
    assert all(len(m) == 2 for m in old_minutes.values())

    # The stored tickers are what a new leader starts from; move them far from the default start prices.
    stored = {r.symbol: r.price for r in await ticker_rows(old)}
    assert set(stored) == set(SYMBOLS)
    moved = {symbol: (price / 2).quantize(Decimal("0.01")) for symbol, price in stored.items()}
    async with old.database.system_session() as session:
        for row in (await session.scalars(select(PriceTicker))).all():
            row.price = moved[row.symbol]
    await old.stop()

    restart = START + timedelta(minutes=2, seconds=5)
    new = make_service()
    await new.become_leader(start_time=restart)
    recorder = Recorder(new, monkeypatch)
    await recorder.step()
    for symbol in SYMBOLS:
        price = (await cached_ticker(new, symbol)).price
        assert abs(price - moved[symbol]) / moved[symbol] < Decimal("0.001"), (symbol, price, moved[symbol])
        assert abs(price - DEFAULT_START_PRICES[symbol]) / DEFAULT_START_PRICES[symbol] > Decimal("0.4")

    await recorder.step(55)  # 00:03:01: the new leader has closed its first minute, 00:02
    for symbol in SYMBOLS:
        minutes = [candle_from_row(r) for r in await candle_rows(new, "1m", symbol)]
        assert [m.open_time for m in minutes] == [START + timedelta(minutes=m) for m in range(3)]
        assert minutes[:2] == old_minutes[symbol]
        # The roll-up includes the minutes the previous leader stored.
        (five,) = await candle_rows(new, "5m", symbol)
        assert five.trades_count == sum(m.trades_count for m in minutes)
        assert_row_is(five, aggregate_candles(minutes, "5m")[0])
        assert five.open_price == old_minutes[symbol][0].open
        # And so does the 24 h volume of the ticker.
        ticker = await cached_ticker(new, symbol)
        forming = aggregate_trades(recorder.ticks(symbol), symbol, "paper")[-1]
        assert forming.open_time == START + timedelta(minutes=3)
        assert ticker.volume_24h == sum((m.volume for m in minutes), forming.volume)


async def test_a_new_leader_starting_inside_an_already_stored_minute_keeps_working(
    make_service: MakeService,
) -> None:
    old = make_service()
    await old.become_leader(start_time=START)
    for _ in range(185):  # 00:03:05: 00:00, 00:01 and 00:02 are stored
        await old.run_step()
    assert len(await candle_rows(old, "1m", "BTC/USDT")) == 3
    await old.stop()

    new = make_service()
    await new.become_leader(start_time=START + timedelta(minutes=2, seconds=30))  # its clock is 35 s behind
    for _ in range(31):  # 00:03:01: the new leader closes its 00:02 minute
        await new.run_step()
    for symbol in SYMBOLS:
        minutes = await candle_rows(new, "1m", symbol)
        assert [m.open_time for m in minutes] == [START + timedelta(minutes=m) for m in range(3)]
        (five,) = await candle_rows(new, "5m", symbol)
        assert five.trades_count == sum(m.trades_count or 0 for m in minutes)


# --- publishing ---------------------------------------------------------------------------------------------------


async def test_every_step_publishes_ticker_book_and_forming_candle_frames(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service()
    await service.become_leader(start_time=START)
    recorder = Recorder(service, monkeypatch)
    await recorder.step(3)

    for frames in recorder.step_frames:
        channels = [channel for channel, _ in frames]
        for symbol in SYMBOLS:
            for channel in (f"ticker:paper:{symbol}", f"book:paper:{symbol}", f"candles:paper:{symbol}:1m"):
                assert channels.count(channel) == 1, channel

    frames = dict(recorder.step_frames[-1])
    ticker = frames["ticker:paper:BTC/USDT"]
    assert set(ticker) == set(TickerOut.model_fields)
    assert ticker == (await cached_ticker(service, "BTC/USDT")).model_dump(mode="json")
    assert ticker["exchange"] == "paper"
    assert ticker["symbol"] == "BTC/USDT"
    assert re.fullmatch(r"\d+\.\d{8}", ticker["price"])
    assert ticker["updated_at"] == "2024-01-01T00:00:03Z"

    book = frames["book:paper:BTC/USDT"]
    assert set(book) == set(OrderBookOut.model_fields)
    assert book == (await cached_book(service, "BTC/USDT")).model_dump(mode="json")
    assert len(book["bids"]) == len(book["asks"]) == 20
    assert all(len(level) == 2 and all(isinstance(v, str) for v in level) for level in book["bids"] + book["asks"])
    assert Decimal(book["bids"][0][0]) < Decimal(book["asks"][0][0])

    candle = frames["candles:paper:BTC/USDT:1m"]
    assert set(candle) == set(CandleOut.model_fields) | {"closed"}
    assert candle["closed"] is False
    assert candle["open_time"] == "2024-01-01T00:00:00Z"
    assert candle["close_time"] == "2024-01-01T00:00:59.999999Z"
    assert candle["trades_count"] == len(recorder.ticks("BTC/USDT"))
    json.dumps(recorder.frames)  # every frame is plain JSON


@pytest.fixture
async def app_market(registry: ServiceRegistry, clean_db: Any) -> AsyncIterator[MarketDataService]:
    """The app's own service (publishing through the registry); its latest tickers and books are dropped after."""
    yield registry.market_data
    for exchange, symbol in registry.market_data.instruments:
        for kind in ("ticker", "book"):
            await registry.cache.delete(f"md:latest:{kind}:{exchange}:{symbol}")


async def test_the_registry_publishes_updates_to_cache_subscribers(
    registry: ServiceRegistry, app_market: MarketDataService
) -> None:
    service = app_market
    await service.become_leader(start_time=START)
    async with registry.cache.subscribe("md:ticker:paper:BTC/USDT") as subscription:
        await service.run_step()
        expected = (await cached_ticker(service, "BTC/USDT")).model_dump(mode="json")
        received = None
        async with asyncio.timeout(DEADLINE):
            while received is None:
                message = await subscription.get_message(timeout=DEADLINE)
                assert message is not None, "no update published"
                channel, payload = message
                assert channel == "md:ticker:paper:BTC/USDT"
                body = json.loads(payload)
                if body.get("data") == expected:  # (another run sharing this Redis may publish too)
                    received = body
    assert received == {"type": "update", "channel": "ticker:paper:BTC/USDT", "data": expected}


# --- instruments --------------------------------------------------------------------------------------------------


def _pair(symbol: str = "DOGE/USDT", tick: str = "0.00001", **extra: Any) -> PaperPair:
    return PaperPair(
        symbol=symbol,
        tick_size=Decimal(tick),
        step_size=Decimal("1"),
        min_order_size=Decimal("1"),
        max_order_size=Decimal("1000000"),
        start_price=Decimal("0.12"),
        **extra,
    )


async def test_custom_paper_pairs_are_loaded_and_simulated(
    make_service: MakeService, registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = registry.settings.model_copy(update={"paper_pairs": [_pair(volatility=1.5)]})
    instruments, prices, volatilities = paper_instruments(settings)
    assert len(instruments) == 1
    (doge,) = instruments
    assert (doge.exchange, doge.symbol, doge.base_asset, doge.quote_asset) == ("paper", "DOGE/USDT", "DOGE", "USDT")
    assert (doge.tick_size, doge.step_size, doge.min_notional) == (Decimal("0.00001"), Decimal(1), Decimal(5))
    assert prices == {"DOGE/USDT": Decimal("0.12")}
    assert volatilities == {"DOGE/USDT": 1.5}

    service = make_service(settings)
    assert list(service.instruments) == [("paper", "DOGE/USDT")]
    await service.become_leader(start_time=START)
    recorder = Recorder(service, monkeypatch)
    await recorder.step()
    ticker = await cached_ticker(service, "DOGE/USDT")
    assert abs(ticker.price - Decimal("0.12")) < Decimal("0.001")
    assert await service.cache.get("md:latest:ticker:paper:BTC/USDT") is None


def test_default_paper_pairs_without_a_setting(registry: ServiceRegistry) -> None:
    instruments, prices, _ = paper_instruments(registry.settings.model_copy(update={"paper_pairs": None}))
    assert [i.symbol for i in instruments] == list(SYMBOLS)
    assert prices == dict(DEFAULT_START_PRICES)


def test_a_pair_finer_than_the_schema_is_refused(registry: ServiceRegistry) -> None:
    def finer() -> Settings:
        # Refused here (settings validation) or when the instruments are loaded: either way, naming the 8 decimals.
        return registry.settings.model_copy(update={"paper_pairs": [_pair(tick="0.000000001")]})

    def load() -> None:
        paper_instruments(finer())

    def build() -> None:
        MarketDataService(registry.database, MemoryCache(), finer())

    with pytest.raises((InstrumentError, ValidationError), match=r"\b8\b"):
        load()
    with pytest.raises((InstrumentError, ValidationError), match=r"\b8\b"):
        build()
    # Eight decimals are fine.
    assert paper_instruments(registry.settings.model_copy(update={"paper_pairs": [_pair(tick="0.00000001")]}))


async def test_an_empty_pair_list_is_refused_or_harmless(make_service: MakeService, registry: ServiceRegistry) -> None:
    try:
        settings = Settings(**{**registry.settings.model_dump(), "paper_pairs": []})
        service = make_service(settings)
    except (ValidationError, InstrumentError):
        return  # refused when the configuration is loaded: fine
    await service.become_leader(start_time=START)
    await service.run_step()
    assert await service.tickers() == []


# --- reads --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel",
    ["ticker:paper:BTC/USDT", "book:paper:SOL/USDT", *(f"candles:paper:ETH/USDT:{tf}" for tf in TIMEFRAMES)],
)
def test_public_channels_of_known_pairs_are_valid(registry: ServiceRegistry, channel: str) -> None:
    registry.market_data.validate_public_channel(channel)


@pytest.mark.parametrize(
    ("channel", "code"),
    [
        ("ticker:nope:BTC/USDT", "unknown_exchange"),
        ("book:paper:DOGE/USDT", "unknown_symbol"),
        ("ticker:paper:BTC/USDT:1m", "unknown_symbol"),
        ("candles:paper:BTC/USDT:7m", "unknown_timeframe"),
        ("candles:paper:BTC/USDT", "unknown_symbol"),
        ("trades:paper:BTC/USDT", "unknown_symbol"),
    ],
)
def test_public_channels_are_refused_precisely(registry: ServiceRegistry, channel: str, code: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        registry.market_data.validate_public_channel(channel)
    assert raised.value.code == code
