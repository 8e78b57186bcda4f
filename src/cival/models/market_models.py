"""Market data schemas (the spec's market_models.py): pairs, tickers, order books, candles, exchange status."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from cival.models.common import Amount, Output


class PairOut(Output):
    symbol: str
    base_asset: str
    quote_asset: str
    exchange: str
    min_order_size: Amount | None
    max_order_size: Amount | None
    tick_size: Amount | None
    step_size: Amount | None
    is_active: bool


class TickerOut(BaseModel):
    exchange: str
    symbol: str
    price: Amount
    bid_price: Amount | None
    ask_price: Amount | None
    volume_24h: Amount | None
    change_24h: str | None  # percent, 4 decimals
    updated_at: datetime


class OrderBookOut(BaseModel):
    exchange: str
    symbol: str
    bids: list[list[str]]  # [[price, quantity], ...] best first
    asks: list[list[str]]
    timestamp: datetime


class CandleOut(BaseModel):
    open_time: datetime
    close_time: datetime
    open: Amount
    high: Amount
    low: Amount
    close: Amount
    volume: Amount
    quote_volume: Amount | None
    trades_count: int | None


class CandlePage(BaseModel):
    exchange: str
    symbol: str
    timeframe: str
    candles: list[CandleOut]  # oldest first, newest last
    next_start: datetime | None  # more candles after the last one: pass this as `start` for the next page
    prev_end: datetime | None  # older candles exist: pass this as `end` for the previous page


class ExchangeStatusOut(Output):
    exchange: str
    status: Literal["online", "offline", "maintenance"]
    last_ping: datetime | None
    response_time_ms: int | None
    error_message: str | None
    updated_at: datetime
