"""Trading limits, the kill switch and risk alerts (the spec's risk models)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from cival.domain.risk import LimitType
from cival.models.common import Amount, DecimalIn, Output, StrictInput
from cival.models.trading_models import Symbol

Severity = Literal["low", "medium", "high", "critical"]
LimitTypeName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=50,
        description="one of: " + ", ".join(t.value for t in LimitType),
        examples=[LimitType.ORDER_NOTIONAL.value],
    ),
]


class LimitIn(StrictInput):
    """A new limit: global (no symbol) or for one symbol. `limit_value` is a positive decimal string."""

    limit_type: LimitTypeName
    symbol: Symbol | None = None
    limit_value: DecimalIn
    is_active: bool = True


class LimitUpdateIn(StrictInput):
    limit_value: DecimalIn | None = None
    is_active: bool | None = None


class LimitOut(BaseModel):
    id: uuid.UUID
    limit_type: str
    symbol: str | None
    limit_value: Amount
    unit: str = Field(description="quote (the pair's quote asset), usd, ratio, percent, orders_per_minute or orders")
    current_value: Amount | None = Field(
        description="where you stand now (null for per-order limits, or when a price is missing)"
    )
    applies_to_reduce_only: bool = Field(description="false: orders that only reduce a position are not held to it")
    is_active: bool
    created_at: datetime
    updated_at: datetime


class KillSwitchIn(StrictInput):
    """Engage (`active: true`) or release the kill switch, and/or set whether a daily loss breach engages it."""

    active: bool | None = None
    trip_on_daily_loss: bool | None = None
    all_users: bool = Field(default=False, description="admins only: apply to every user")


class KillSwitchOut(BaseModel):
    active: bool
    trip_on_daily_loss: bool
    updated_at: datetime | None
    users: int = Field(default=1, description="how many users the request changed (all_users)")
    cancelled_orders: int = Field(default=0, description="working orders this request cancelled")


class AlertOut(Output):
    id: uuid.UUID
    alert_type: str
    severity: Severity
    message: str
    data: dict[str, Any] | None
    acknowledged: bool
    created_at: datetime


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int
    limit: int
    offset: int
