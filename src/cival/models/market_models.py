"""Market data schemas (the spec's market_models.py): pairs, tickers, order books, candles, exchange status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

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


def _ts(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


@dataclass(frozen=True)
class CandleRows:
    """A page of candles straight from the database, rendered to the `CandlePage` JSON without building models.

    A page can hold 10,000 candles; pydantic models per candle cost more than the query itself. Values arrive from
    the database already typed and at the column's 8 decimals, so rendering is formatting only.
    """

    exchange: str
    symbol: str
    timeframe: str
    rows: Sequence[Sequence[Any]]  # open_time, close_time, open, high, low, close, volume, quote_volume, trades_count
    next_start: datetime | None
    prev_end: datetime | None

    def to_json(self) -> bytes:
        candles = [
            {
                "open_time": _ts(open_time),
                "close_time": _ts(close_time),
                "open": _amount(o),
                "high": _amount(h),
                "low": _amount(low),
                "close": _amount(c),
                "volume": _amount(v),
                "quote_volume": _amount(qv),
                "trades_count": n,
            }
            for open_time, close_time, o, h, low, c, v, qv, n in self.rows
        ]
        page = {
            "exchange": self.exchange,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "candles": candles,
            "next_start": None if self.next_start is None else _ts(self.next_start),
            "prev_end": None if self.prev_end is None else _ts(self.prev_end),
        }
        return json.dumps(page, separators=(",", ":")).encode()
