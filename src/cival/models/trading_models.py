"""Trading accounts (and, with the orders capability, orders and trades): the spec's trading_models.py."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, StringConstraints

from cival.models.common import Amount, DecimalIn, Output, StrictInput
from cival.models.user_models import Exchange

AccountType = Literal["spot", "margin", "futures"]
ExternalAccountId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


class AccountIn(StrictInput):
    exchange: Exchange
    account_id: ExternalAccountId | None = None
    account_type: AccountType = "spot"


class AccountUpdateIn(StrictInput):
    account_type: AccountType | None = None
    is_active: bool | None = None


class BalanceOut(Output):
    asset: str
    free: Amount
    locked: Amount
    total: Amount


class AccountOut(Output):
    id: uuid.UUID
    exchange: Exchange
    account_id: str
    account_type: AccountType
    is_active: bool
    created_at: datetime
    balances: list[BalanceOut] = []


# --- orders and trades -----------------------------------------------------------------------------------------

Side = Literal["buy", "sell"]
OrderTypeName = Literal["market", "limit", "stop", "stop_limit"]
TimeInForceName = Literal["GTC", "IOC", "FOK"]
ClientOrderId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Symbol = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]


class OrderIn(StrictInput):
    """A new order. `time_in_force` defaults to IOC for market orders and GTC otherwise."""

    account_id: uuid.UUID
    symbol: Symbol
    side: Side
    type: OrderTypeName
    quantity: DecimalIn
    price: DecimalIn | None = None
    stop_price: DecimalIn | None = None
    time_in_force: TimeInForceName | None = None
    post_only: bool = False
    client_order_id: ClientOrderId | None = None


class OrderOut(Output):
    id: uuid.UUID
    account_id: uuid.UUID | None
    client_order_id: str | None
    exchange: str
    symbol: str
    side: Side
    type: OrderTypeName
    quantity: Amount
    price: Amount | None
    stop_price: Amount | None
    time_in_force: TimeInForceName
    post_only: bool
    status: str
    filled_quantity: Amount
    average_price: Amount | None
    fees: Amount
    reserved: Amount
    reject_reason: str | None
    triggered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TradeOut(Output):
    id: uuid.UUID
    order_id: uuid.UUID | None
    external_trade_id: str | None
    exchange: str
    symbol: str
    side: Side
    quantity: Amount
    price: Amount
    fees: Amount
    executed_at: datetime


class OrderPage(BaseModel):
    items: list[OrderOut]
    total: int
    limit: int
    offset: int


class TradePage(BaseModel):
    items: list[TradeOut]
    total: int
    limit: int
    offset: int


# --- portfolio ---------------------------------------------------------------------------------------------------


class PositionOut(BaseModel):
    account_id: uuid.UUID
    exchange: str
    symbol: str
    size: Amount
    average_price: Amount
    mark_price: Amount | None
    market_value: Amount | None
    unrealized_pnl: Amount | None
    realized_pnl: Amount
    fees_paid: Amount


class PortfolioBalanceOut(BaseModel):
    account_id: uuid.UUID
    exchange: str
    asset: str
    free: Amount
    locked: Amount
    total: Amount
    usd_value: Amount | None


class SnapshotOut(Output):
    snapshot_date: date
    total_value: Amount
    total_pnl: Amount | None
    daily_pnl: Amount | None
    positions_count: int


class SummaryOut(BaseModel):
    total_value: Amount
    total_pnl: Amount
    realized_pnl: Amount
    unrealized_pnl: Amount
    fees_paid: Amount
    positions_count: int
    unpriced_assets: list[str]
