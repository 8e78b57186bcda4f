"""Trading accounts (and, with the orders capability, orders and trades): the spec's trading_models.py."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import StringConstraints

from cival.models.common import Amount, Output, StrictInput
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
