"""Replay: stored candles drive a paper pair's market, candle by candle."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cival.config import Settings
from cival.connectors.replay import RecordedCandle, ReplaySource
from cival.core.cache import MemoryCache
from cival.core.db import Database
from cival.database.models import MarketDataOHLCV
from cival.database.upsert import upsert
from cival.domain.instruments import DEFAULT_PAPER_PAIRS
from cival.domain.simulated_market import BookEvent, TradeEvent
from cival.services.market_data_service import MarketDataService, UnknownSymbol

BTC = DEFAULT_PAPER_PAIRS[0]
START = datetime(2025, 3, 1, tzinfo=UTC)
RECORDED = [  # open, high, low, close, volume
    ("100.00", "110.50", "95.25", "105.00", "8"),
    ("105.00", "106.00", "90.00", "91.10", "4.00004"),
    ("91.10", "91.10", "91.10", "91.10", "0.5"),
]


async def test_one_candle_per_poll_as_four_trades_and_a_book() -> None:
    candles = [RecordedCandle(*(Decimal(v) for v in row)) for row in RECORDED]
    source = ReplaySource(BTC, candles, start_time=START, step_seconds=1.0)
    rising = await source.poll()
    trades = [e.tick for e in rising if isinstance(e, TradeEvent)]
    # A rising candle goes open → low → high → close, the volume shared in four (on the step size).
    assert [t.price for t in trades] == [Decimal("100.00"), Decimal("95.25"), Decimal("110.50"), Decimal("105.00")]
    assert sum(t.quantity for t in trades) == Decimal(8)
    (book,) = [e.book for e in rising if isinstance(e, BookEvent)]
    assert book.best_bid is not None
    assert book.best_ask is not None
    assert (book.best_bid.price, book.best_ask.price) == (Decimal("104.99"), Decimal("105.01"))
    falling = [e.tick for e in await source.poll() if isinstance(e, TradeEvent)]
    assert [t.price for t in falling] == [Decimal("105.00"), Decimal("106.00"), Decimal("90.00"), Decimal("91.10")]
    assert sum(t.quantity for t in falling) == Decimal("4.00004")
    await source.poll()
    again = [e.tick for e in await source.poll() if isinstance(e, TradeEvent)]  # it loops
    assert again[0].price == Decimal("100.00")
    assert all(t.ts < START + timedelta(seconds=4) for t in again)


async def test_the_service_replays_a_stored_series_onto_the_paper_pair(db: Database, settings: Settings) -> None:
    exchange = f"rec{uuid.uuid4().hex[:8]}"
    rows = [
        {
            "id": uuid.uuid4(),
            "symbol": "BTC/USDT",
            "exchange": exchange,
            "timeframe": "5m",
            "open_time": START + timedelta(minutes=5 * n),
            "close_time": START + timedelta(minutes=5 * n + 5) - timedelta(microseconds=1),
            "open_price": Decimal(o),
            "high_price": Decimal(h),
            "low_price": Decimal(low),
            "close_price": Decimal(c),
            "volume": Decimal(v),
        }
        for n, (o, h, low, c, v) in enumerate(RECORDED)
    ]
    async with db.system_session() as session:
        await upsert(session, MarketDataOHLCV.__table__, rows, keys=("id",), update=("volume",))  # type: ignore[arg-type]
    replaying = settings.model_copy(update={"replay_source": f"{exchange}:BTC/USDT:5m"})
    service = MarketDataService(db, MemoryCache(), replaying)
    await service.become_leader(start_time=START)
    assert {tuple(s.instruments) == (BTC,) for s in service.feed.sources} == {True, False}  # replay + the other pairs
    closes = []
    for _ in RECORDED:
        await service.run_step()
        (ticker,) = await service.tickers("paper", "BTC/USDT")
        closes.append(ticker.price)
    assert closes == [Decimal("105.00"), Decimal("91.10"), Decimal("91.10")]


async def test_replaying_onto_a_pair_that_is_not_a_paper_pair_is_refused(db: Database, settings: Settings) -> None:
    service = MarketDataService(db, MemoryCache(), settings.model_copy(update={"replay_source": "x:ETH/BTC:5m"}))
    with pytest.raises(UnknownSymbol, match="CIVAL_PAPER_PAIRS"):
        await service.become_leader(start_time=START)
