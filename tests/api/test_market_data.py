"""Market data over HTTP: pairs, tickers, order books, candles and exchange status, for a signed-in user.

The session app's market-data service does not run in the background in tests; each test resets it (database
emptied, trading pairs re-seeded, latest tickers and books dropped from the cache) and leads it from a fixed start
time, stepping it by hand when it needs live data. Candle history is inserted directly where a test needs a known
series.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI

from cival.core.service_registry import ServiceRegistry
from cival.database.models import MarketDataOHLCV, TradingPair
from cival.database.upsert import upsert
from cival.services.market_data_service import MarketDataService
from tests.api._identity import Caller, Identities

PAIRS = "/api/v1/market-data/pairs"
TICKERS = "/api/v1/market-data/tickers"
ORDERBOOK = "/api/v1/market-data/orderbook"
CANDLES = "/api/v1/market-data/candles"
STATUS = "/api/v1/exchanges/status"

START = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
EIGHT_DECIMALS = re.compile(r"-?\d+\.\d{8}")
MINUTE = timedelta(minutes=1)


def iso(ts: datetime) -> str:
    return ts.isoformat()


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def drop_latest(registry: ServiceRegistry) -> None:
    for exchange, symbol in registry.market_data.instruments:
        for kind in ("ticker", "book"):
            await registry.cache.delete(f"md:latest:{kind}:{exchange}:{symbol}")


@pytest.fixture
async def market(registry: ServiceRegistry, clean_db: Any) -> AsyncIterator[MarketDataService]:
    """The app's market-data service, reset: pairs seeded, nothing cached, leading from START, not stepped."""
    service = registry.market_data
    await service.start(run=False)  # seeds the paper pairs the emptied database lost
    await drop_latest(registry)
    # State of an earlier test's leadership (see the service tests: become_leader does not reset it).
    service.feed._status.clear()
    service.feed._last_ticker_write = 0.0
    service.feed._last_snapshot_write = 0.0
    await service.become_leader(start_time=START)
    yield service
    await drop_latest(registry)  # later tests (and other apps on the same Redis) see no market of this test's


@pytest.fixture
async def identities(app: FastAPI) -> AsyncIterator[Identities]:
    async with Identities(app) as ids:
        yield ids


@pytest.fixture
async def user(identities: Identities, market: MarketDataService) -> Caller:
    return await identities.new_user()


async def steps(market: MarketDataService, count: int) -> None:
    for _ in range(count):
        await market.run_step()


async def insert_candles(
    registry: ServiceRegistry,
    open_times: list[datetime],
    *,
    symbol: str = "BTC/USDT",
    exchange: str = "paper",
    timeframe: str = "1m",
) -> None:
    """1m (or other) candles at `open_times`, in one transaction, with prices that identify each candle."""
    step = {"1m": MINUTE, "5m": 5 * MINUTE, "1h": 60 * MINUTE}[timeframe]
    rows = []
    for index, open_time in enumerate(open_times):
        price = Decimal(1000) + Decimal(index) / 100
        rows.append(
            {
                "id": uuid.uuid4(),
                "symbol": symbol,
                "exchange": exchange,
                "timeframe": timeframe,
                "open_time": open_time,
                "close_time": open_time + step - timedelta(microseconds=1),
                "open_price": price,
                "high_price": price + 1,
                "low_price": price - 1,
                "close_price": price + Decimal("0.5"),
                "volume": Decimal("1.5"),
                "quote_volume": Decimal("1500.75"),
                "trades_count": 3,
            }
        )
    async with registry.database.system_session() as session:
        for chunk in range(0, len(rows), 1000):  # bound parameters per statement stay under both drivers' limits
            await upsert(
                session,
                MarketDataOHLCV.__table__,  # type: ignore[arg-type]
                rows[chunk : chunk + 1000],
                keys=("symbol", "exchange", "timeframe", "open_time"),
                update=("close_price",),
            )


def open_times(page: dict[str, Any]) -> list[datetime]:
    return [parse_ts(c["open_time"]) for c in page["candles"]]


# --- authentication -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        PAIRS,
        TICKERS,
        f"{ORDERBOOK}?exchange=paper&symbol=BTC/USDT",
        f"{CANDLES}?exchange=paper&symbol=BTC/USDT&timeframe=1m",
        STATUS,
        # Bad input is not looked at before the caller is known.
        f"{ORDERBOOK}?exchange=paper&symbol=BTC/USDT&depth=0",
        f"{CANDLES}?exchange=nope&symbol=X/Y&timeframe=7m",
    ],
)
async def test_every_market_data_route_needs_a_session(
    identities: Identities, market: MarketDataService, url: str
) -> None:
    await steps(market, 1)
    client = identities.client()
    response = await client.get(url)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "not_authenticated"
    response = await client.get(url, headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401, response.text


# --- pairs --------------------------------------------------------------------------------------------------------


async def test_pairs_list_the_paper_pairs_with_their_precision(user: Caller) -> None:
    response = await user.get(PAIRS)
    assert response.status_code == 200, response.text
    pairs = response.json()
    assert [(p["exchange"], p["symbol"]) for p in pairs] == [("paper", s) for s in SYMBOLS]
    by_symbol = {p["symbol"]: p for p in pairs}
    assert by_symbol["BTC/USDT"] == {
        "symbol": "BTC/USDT",
        "base_asset": "BTC",
        "quote_asset": "USDT",
        "exchange": "paper",
        "min_order_size": "0.00001000",
        "max_order_size": "9000.00000000",
        "tick_size": "0.01000000",
        "step_size": "0.00001000",
        "is_active": True,
    }
    assert (by_symbol["ETH/USDT"]["tick_size"], by_symbol["ETH/USDT"]["step_size"]) == ("0.01000000", "0.00010000")
    assert (by_symbol["SOL/USDT"]["tick_size"], by_symbol["SOL/USDT"]["step_size"]) == ("0.01000000", "0.00100000")
    for pair in pairs:
        for field in ("min_order_size", "max_order_size", "tick_size", "step_size"):
            assert EIGHT_DECIMALS.fullmatch(pair[field]), (field, pair[field])

    assert (await user.get(PAIRS, params={"exchange": "paper"})).json() == pairs
    unknown = await user.get(PAIRS, params={"exchange": "nope"})
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_exchange"


# --- tickers ------------------------------------------------------------------------------------------------------


async def test_tickers_show_the_latest_prices_and_can_be_filtered(user: Caller, market: MarketDataService) -> None:
    await steps(market, 3)
    response = await user.get(TICKERS)
    assert response.status_code == 200, response.text
    tickers = response.json()
    assert [(t["exchange"], t["symbol"]) for t in tickers] == [("paper", s) for s in SYMBOLS]
    for ticker in tickers:
        assert set(ticker) == {
            "exchange",
            "symbol",
            "price",
            "bid_price",
            "ask_price",
            "volume_24h",
            "change_24h",
            "updated_at",
        }
        for field in ("price", "bid_price", "ask_price", "volume_24h"):
            assert EIGHT_DECIMALS.fullmatch(ticker[field]), (field, ticker[field])
        assert Decimal(ticker["bid_price"]) < Decimal(ticker["ask_price"])
        assert re.fullmatch(r"-?\d+\.\d{4}", ticker["change_24h"])
        assert parse_ts(ticker["updated_at"]) == START + timedelta(seconds=3)
        book = await market.order_book("paper", ticker["symbol"], 1)
        assert ticker["bid_price"] == f"{Decimal(book.bids[0][0]):.8f}"
    btc_price = Decimal(tickers[0]["price"])
    assert abs(btc_price - 60000) < 100  # the default start price, three seconds on

    assert (await user.get(TICKERS, params={"exchange": "paper"})).json() == tickers
    only = await user.get(TICKERS, params={"exchange": "paper", "symbol": "ETH/USDT"})
    assert only.status_code == 200
    assert only.json() == [tickers[1]]
    assert (await user.get(TICKERS, params={"symbol": "SOL/USDT"})).json() == [tickers[2]]

    unknown_exchange = await user.get(TICKERS, params={"exchange": "nope"})
    assert unknown_exchange.status_code == 422
    assert unknown_exchange.json()["error"] == "unknown_exchange"
    unknown_exchange = await user.get(TICKERS, params={"exchange": "nope", "symbol": "BTC/USDT"})
    assert unknown_exchange.status_code == 422
    assert unknown_exchange.json()["error"] == "unknown_exchange"
    unknown_symbol = await user.get(TICKERS, params={"exchange": "paper", "symbol": "DOGE/USDT"})
    assert unknown_symbol.status_code == 422
    assert unknown_symbol.json()["error"] == "unknown_symbol"
    assert "BTC/USDT" in unknown_symbol.json()["detail"]


async def test_an_unknown_symbol_without_an_exchange_is_refused(user: Caller, market: MarketDataService) -> None:
    await steps(market, 1)
    response = await user.get(TICKERS, params={"symbol": "DOGE/USDT"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "unknown_symbol"


async def test_tickers_fall_back_to_the_persisted_ones_on_a_cold_cache(
    user: Caller, market: MarketDataService, registry: ServiceRegistry
) -> None:
    await steps(market, 1)  # the first step persists the tickers
    persisted = (await user.get(TICKERS)).json()
    for symbol in SYMBOLS:
        await registry.cache.delete(f"md:latest:ticker:paper:{symbol}")
    response = await user.get(TICKERS)
    assert response.status_code == 200, response.text
    assert response.json() == persisted


# --- order book ---------------------------------------------------------------------------------------------------


async def test_order_book_levels_best_first_to_the_requested_depth(user: Caller, market: MarketDataService) -> None:
    await steps(market, 2)
    params = {"exchange": "paper", "symbol": "BTC/USDT"}
    response = await user.get(ORDERBOOK, params={**params, "depth": 5})
    assert response.status_code == 200, response.text
    book = response.json()
    assert (book["exchange"], book["symbol"]) == ("paper", "BTC/USDT")
    assert parse_ts(book["timestamp"]) == START + timedelta(seconds=2)
    assert len(book["bids"]) == len(book["asks"]) == 5
    bids = [Decimal(p) for p, _ in book["bids"]]
    asks = [Decimal(p) for p, _ in book["asks"]]
    assert bids == sorted(bids, reverse=True)
    assert len(set(bids)) == 5
    assert asks == sorted(asks)
    assert len(set(asks)) == 5
    assert bids[0] < asks[0]
    assert all(Decimal(q) > 0 for _, q in book["bids"] + book["asks"])

    default = (await user.get(ORDERBOOK, params=params)).json()
    assert len(default["bids"]) == len(default["asks"]) == 20
    assert default["bids"][:5] == book["bids"]
    assert default["asks"][:5] == book["asks"]
    deepest = (await user.get(ORDERBOOK, params={**params, "depth": 100})).json()
    assert deepest == default  # the simulated book has 20 levels a side

    for depth in (0, 101, -1):
        bad = await user.get(ORDERBOOK, params={**params, "depth": depth})
        assert bad.status_code == 422, depth
        assert bad.json()["error"] == "validation_error"

    unknown = await user.get(ORDERBOOK, params={"exchange": "paper", "symbol": "DOGE/USDT"})
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_symbol"
    unknown = await user.get(ORDERBOOK, params={"exchange": "nope", "symbol": "BTC/USDT"})
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_exchange"
    missing = await user.get(ORDERBOOK, params={"exchange": "paper"})
    assert missing.status_code == 422
    assert missing.json()["error"] == "validation_error"


async def test_order_book_before_any_market_data_is_404(user: Caller, market: MarketDataService) -> None:
    response = await user.get(ORDERBOOK, params={"exchange": "paper", "symbol": "BTC/USDT"})
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "no_market_data"
    await steps(market, 1)
    assert (await user.get(ORDERBOOK, params={"exchange": "paper", "symbol": "BTC/USDT"})).status_code == 200


# --- candles ------------------------------------------------------------------------------------------------------


async def test_candles_built_by_the_market_oldest_first(user: Caller, market: MarketDataService) -> None:
    await steps(market, 185)  # 00:03:05: three closed minutes
    params = {"exchange": "paper", "symbol": "BTC/USDT", "timeframe": "1m"}
    response = await user.get(CANDLES, params=params)
    assert response.status_code == 200, response.text
    page = response.json()
    assert (page["exchange"], page["symbol"], page["timeframe"]) == ("paper", "BTC/USDT", "1m")
    assert open_times(page) == [START, START + MINUTE, START + 2 * MINUTE]
    assert (page["next_start"], page["prev_end"]) == (None, None)
    for candle in page["candles"]:
        assert parse_ts(candle["close_time"]) == parse_ts(candle["open_time"]) + timedelta(
            seconds=59, microseconds=999999
        )
        for field in ("open", "high", "low", "close", "volume", "quote_volume"):
            assert EIGHT_DECIMALS.fullmatch(candle[field]), (field, candle[field])
        assert Decimal(candle["low"]) <= min(Decimal(candle["open"]), Decimal(candle["close"]))
        assert Decimal(candle["high"]) >= max(Decimal(candle["open"]), Decimal(candle["close"]))
        assert candle["trades_count"] > 0

    newest = (await user.get(CANDLES, params={**params, "limit": 2})).json()
    assert newest["candles"] == page["candles"][1:]
    assert newest["prev_end"] is not None
    assert parse_ts(newest["prev_end"]) < START + MINUTE
    assert newest["next_start"] is None

    five = (await user.get(CANDLES, params={**params, "timeframe": "5m"})).json()
    assert open_times(five) == [START]
    assert Decimal(five["candles"][0]["volume"]) == sum(Decimal(c["volume"]) for c in page["candles"])
    assert five["candles"][0]["open"] == page["candles"][0]["open"]
    assert five["candles"][0]["close"] == page["candles"][-1]["close"]
    for timeframe in ("15m", "1h", "4h", "1d"):
        rolled = (await user.get(CANDLES, params={**params, "timeframe": timeframe})).json()
        assert open_times(rolled) == [START], timeframe
        assert rolled["candles"][0]["volume"] == five["candles"][0]["volume"]


async def test_candles_page_forwards_and_backwards_over_every_stored_candle(
    user: Caller, market: MarketDataService, registry: ServiceRegistry
) -> None:
    # 23 minutes with a gap (no candle is invented for it) and a neighbour series that must not leak in.
    stored = [START + m * MINUTE for m in [*range(10), *range(15, 28)]]
    await insert_candles(registry, stored)
    await insert_candles(registry, stored, symbol="ETH/USDT")
    await insert_candles(registry, [START], timeframe="5m")
    params: dict[str, Any] = {"exchange": "paper", "symbol": "BTC/USDT", "timeframe": "1m", "limit": 5}

    seen: list[datetime] = []
    pages = 0
    cursor: dict[str, Any] = {"start": iso(START - timedelta(hours=1))}
    while True:
        response = await user.get(CANDLES, params={**params, **cursor})
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert 1 <= len(page["candles"]) <= 5
        assert (page["prev_end"] is None) == (pages == 1)
        seen += open_times(page)
        if page["next_start"] is None:
            break
        assert parse_ts(page["next_start"]) == open_times(page)[-1] + MINUTE
        cursor = {"start": page["next_start"]}
        assert pages < 10
    assert seen == stored  # each exactly once, oldest first, no overlap
    assert pages == 5

    seen = []
    pages = 0
    cursor = {}
    while True:
        page = (await user.get(CANDLES, params={**params, **cursor})).json()
        pages += 1
        # Paging back, each page also says where the newer candles continue (none after the newest page).
        if "end" in cursor:
            assert parse_ts(page["next_start"]) == open_times(page)[-1] + MINUTE
        else:
            assert page["next_start"] is None
        seen = open_times(page) + seen
        if page["prev_end"] is None:
            break
        assert parse_ts(page["prev_end"]) == open_times(page)[0] - timedelta(microseconds=1)
        cursor = {"end": page["prev_end"]}
        assert pages < 10
    assert seen == stored
    assert pages == 5

    # A window: from `start` up to `end` (open times, both inclusive).
    window = (
        await user.get(
            CANDLES, params={**params, "limit": 100, "start": iso(START + 8 * MINUTE), "end": iso(START + 16 * MINUTE)}
        )
    ).json()
    assert open_times(window) == [START + m * MINUTE for m in (8, 9, 15, 16)]
    assert window["next_start"] is None
    assert window["prev_end"] is not None
    # Another zone for the same instant is the same instant.
    shifted = (
        await user.get(CANDLES, params={**params, "start": "2024-01-01T02:17:00+02:00", "end": "2024-01-01T00:18:00Z"})
    ).json()
    assert open_times(shifted) == [START + m * MINUTE for m in (17, 18)]


async def test_candles_of_an_imported_pair_are_readable(
    user: Caller, market: MarketDataService, registry: ServiceRegistry
) -> None:
    """Any pair in `trading_pairs` has readable history, even one the leader does not simulate."""
    async with registry.database.system_session() as session:
        session.add(TradingPair(symbol="XRP/ETH", base_asset="XRP", quote_asset="ETH", exchange="archive"))
    stored = [START + m * MINUTE for m in range(3)]
    await insert_candles(registry, stored, symbol="XRP/ETH", exchange="archive")
    response = await user.get(CANDLES, params={"exchange": "archive", "symbol": "XRP/ETH", "timeframe": "1m"})
    assert response.status_code == 200, response.text
    assert open_times(response.json()) == stored

    unknown = await user.get(CANDLES, params={"exchange": "archive", "symbol": "XRP/BTC", "timeframe": "1m"})
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_symbol"
    assert "XRP/ETH" in unknown.json()["detail"]
    # It has no live data: the order book and tickers only know the simulated exchange.
    book = await user.get(ORDERBOOK, params={"exchange": "archive", "symbol": "XRP/ETH"})
    assert book.status_code == 422
    assert book.json()["error"] == "unknown_exchange"


async def test_a_full_page_of_ten_thousand_candles(
    user: Caller, market: MarketDataService, registry: ServiceRegistry
) -> None:
    stored = [START + m * MINUTE for m in range(10_000)]
    await insert_candles(registry, stored)
    params = {"exchange": "paper", "symbol": "BTC/USDT", "timeframe": "1m"}
    response = await user.get(CANDLES, params={**params, "limit": 10_000})
    assert response.status_code == 200, response.text
    page = response.json()
    assert len(page["candles"]) == 10_000
    assert open_times(page) == stored
    assert (page["next_start"], page["prev_end"]) == (None, None)
    assert page["candles"][-1]["open"] == "1099.99000000"

    forward = (await user.get(CANDLES, params={**params, "limit": 9_999, "start": iso(START)})).json()
    assert len(forward["candles"]) == 9_999
    assert parse_ts(forward["next_start"]) == stored[-1]
    assert forward["prev_end"] is None


async def test_candle_queries_are_validated(user: Caller, market: MarketDataService) -> None:
    params = {"exchange": "paper", "symbol": "BTC/USDT", "timeframe": "1m"}

    async def error(status: int, **extra: Any) -> str:
        response = await user.get(CANDLES, params={**params, **extra})
        assert response.status_code == status, (extra, response.text)
        code: str = response.json()["error"]
        return code

    ok = await user.get(CANDLES, params=params)
    assert ok.status_code == 200
    assert ok.json()["candles"] == []

    assert await error(422, timeframe="7m") == "unknown_timeframe"
    assert await error(422, timeframe="1M") == "unknown_timeframe"
    assert await error(422, start=iso(START + MINUTE), end=iso(START)) == "invalid_range"
    assert await error(422, start="2024-01-01T00:00:00") == "validation_error"
    assert await error(422, end="2024-01-01T00:00:00") == "validation_error"
    assert await error(422, start="yesterday") == "validation_error"
    assert await error(422, limit=10_001) == "validation_error"
    assert await error(422, limit=0) == "validation_error"
    assert await error(422, exchange="nope") == "unknown_exchange"
    assert await error(422, symbol="DOGE/USDT") == "unknown_symbol"
    missing = await user.get(CANDLES, params={"exchange": "paper", "symbol": "BTC/USDT"})
    assert missing.status_code == 422
    assert missing.json()["error"] == "validation_error"
    # The same instant for start and end is a (one-candle) range, not an error.
    same = await user.get(CANDLES, params={**params, "start": iso(START), "end": iso(START)})
    assert same.status_code == 200


# --- exchange status ----------------------------------------------------------------------------------------------


async def test_exchange_status_lists_the_paper_exchange(user: Caller, market: MarketDataService) -> None:
    assert (await user.get(STATUS)).json() == []
    await steps(market, 1)
    response = await user.get(STATUS)
    assert response.status_code == 200, response.text
    (paper,) = response.json()
    assert paper["exchange"] == "paper"
    assert paper["status"] == "online"
    assert paper["last_ping"] is not None
    assert isinstance(paper["response_time_ms"], int)
    assert paper["error_message"] is None

    market.feed.sources[0].fail("connection reset")  # type: ignore[attr-defined]
    await steps(market, 1)
    (paper,) = (await user.get(STATUS)).json()
    assert (paper["status"], paper["error_message"]) == ("offline", "connection reset")
    market.feed.sources[0].recover()  # type: ignore[attr-defined]
