"""Market data for every signed-in user: pairs, tickers, order books, candles, exchange status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AwareDatetime

from cival.api.deps import CurrentUser, Registry
from cival.api.routing import CivalRoute
from cival.models.market_models import CandlePage, ExchangeStatusOut, OrderBookOut, PairOut, TickerOut
from cival.services.market_data_service import MAX_CANDLES, MarketDataService

router = APIRouter(tags=["market data"], route_class=CivalRoute)


async def _market(registry: Registry, _user: CurrentUser) -> MarketDataService:
    return registry.market_data


Market = Annotated[MarketDataService, Depends(_market)]
Exchange = Annotated[str, Query(min_length=1, max_length=50, examples=["paper"])]
Symbol = Annotated[str, Query(min_length=3, max_length=50, description="BASE/QUOTE", examples=["BTC/USDT"])]


@router.get("/api/v1/market-data/pairs")
async def list_pairs(market: Market, exchange: Annotated[str | None, Query(max_length=50)] = None) -> list[PairOut]:
    """Instruments with their tick size, step size and order size limits."""
    return [PairOut.model_validate(p) for p in await market.list_pairs(exchange)]


@router.get("/api/v1/market-data/tickers")
async def list_tickers(
    market: Market,
    exchange: Annotated[str | None, Query(max_length=50)] = None,
    symbol: Annotated[str | None, Query(max_length=50)] = None,
) -> list[TickerOut]:
    """Latest price, best bid/ask, 24 h volume and change (percent) per pair."""
    return await market.tickers(exchange, symbol)


@router.get("/api/v1/market-data/orderbook")
async def order_book(
    market: Market, exchange: Exchange, symbol: Symbol, depth: Annotated[int, Query(ge=1, le=100)] = 20
) -> OrderBookOut:
    """The latest L2 book, `depth` levels a side, best first."""
    return await market.order_book(exchange, symbol, depth)


@router.get("/api/v1/market-data/candles", response_model=CandlePage)
async def candles(
    market: Market,
    exchange: Exchange,
    symbol: Symbol,
    timeframe: Annotated[str, Query(examples=["1m"], description="1m, 5m, 15m, 1h, 4h or 1d")],
    start: Annotated[AwareDatetime | None, Query(description="From this open time on (ISO 8601, with zone)")] = None,
    end: Annotated[AwareDatetime | None, Query(description="Up to this open time (ISO 8601, with zone)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_CANDLES)] = 500,
) -> Response:
    """OHLCV candles, oldest first: from `start` on, or the newest `limit` up to `end`."""
    page = await market.candles(exchange, symbol, timeframe, start=start, end=end, limit=limit)
    # Rendered straight from the rows (the declared response_model documents the shape): a 10,000-candle page
    # through pydantic and FastAPI's own encoding costs several times the query.
    return Response(page.to_json(), media_type="application/json")


@router.get("/api/v1/exchanges/status")
async def exchanges_status(market: Market) -> list[ExchangeStatusOut]:
    """Each source's status (online, offline, maintenance), last successful ping and response time."""
    return [ExchangeStatusOut.model_validate(s) for s in await market.exchange_status()]
