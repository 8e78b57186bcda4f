"""Plain rows of the order path's tables: orders, trades, positions, balances (D52).

The order path reads, changes and writes these four tables on the driver (D42), in no ORM session. An instance of a
mapped class pays for instrumentation it does not use there: every attribute read goes through a Python descriptor
and every write fires the ORM's change events. These are the same rows as plain slotted dataclasses, one field per
column in the table's column order (so a driver row builds one positionally; `tests/database/test_rows.py` holds
them to the models), with the columns' Python types. `row_of` copies an ORM instance into its plain row.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from cival.database.models import Balance, Base, Order, Position, Trade


@dataclass(slots=True, eq=False)
class OrderRow:
    id: uuid.UUID
    user_id: uuid.UUID
    account_id: uuid.UUID | None
    external_order_id: str | None
    symbol: str
    side: str
    type: str
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    time_in_force: str
    status: str
    filled_quantity: Decimal
    average_price: Decimal | None
    fees: Decimal
    exchange: str
    created_at: datetime
    updated_at: datetime
    client_order_id: str | None
    post_only: bool
    triggered_at: datetime | None
    reject_reason: str | None
    reserved: Decimal


@dataclass(slots=True, eq=False)
class TradeRow:
    id: uuid.UUID
    order_id: uuid.UUID | None
    user_id: uuid.UUID
    external_trade_id: str | None
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    fees: Decimal
    exchange: str
    executed_at: datetime
    created_at: datetime


@dataclass(slots=True, eq=False)
class PositionRow:
    id: uuid.UUID
    user_id: uuid.UUID
    account_id: uuid.UUID
    symbol: str
    size: Decimal
    average_price: Decimal
    market_value: Decimal | None
    unrealized_pnl: Decimal | None
    exchange: str
    updated_at: datetime


@dataclass(slots=True, eq=False)
class BalanceRow:
    id: uuid.UUID
    user_id: uuid.UUID
    account_id: uuid.UUID
    asset: str
    free: Decimal
    locked: Decimal
    total: Decimal
    usd_value: Decimal | None
    exchange: str
    updated_at: datetime


MODELS: dict[type[Any], type[Base]] = {OrderRow: Order, TradeRow: Trade, PositionRow: Position, BalanceRow: Balance}
"""Each plain row's mapped class."""

RowT = TypeVar("RowT", OrderRow, TradeRow, PositionRow, BalanceRow)


_VALUES: dict[type[Any], Callable[[Any], tuple[Any, ...]]] = {
    cls: operator.attrgetter(*(f.name for f in fields(cls))) for cls in MODELS
}
"""Each plain row's columns, read off an object in one call."""


def row_of(cls: type[RowT], instance: Any) -> RowT:
    """`instance` (of `cls`'s mapped class, from an ORM session, or a plain row itself) as a new plain row."""
    return cls(*_VALUES[cls](instance))
