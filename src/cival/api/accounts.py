"""Trading accounts: paper (funded on creation) or on a real exchange."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from cival.api.deps import Accounts, CurrentUser
from cival.api.routing import CivalRoute
from cival.models.system_models import ErrorOut
from cival.models.trading_models import AccountIn, AccountOut, AccountUpdateIn

router = APIRouter(prefix="/api/v1/accounts", tags=["accounts"], route_class=CivalRoute)


@router.post("", status_code=201, responses={409: {"model": ErrorOut, "description": "Account exists"}})
async def create_account(body: AccountIn, principal: CurrentUser, accounts: Accounts) -> AccountOut:
    """Open a trading account. A paper account starts with the configured balances (default 10,000 USDT)."""
    return await accounts.create(principal, body)


@router.get("")
async def list_accounts(principal: CurrentUser, accounts: Accounts) -> list[AccountOut]:
    return await accounts.list_accounts(principal)


@router.get("/{account_id}")
async def get_account(account_id: uuid.UUID, principal: CurrentUser, accounts: Accounts) -> AccountOut:
    return await accounts.get(principal, account_id)


@router.patch("/{account_id}")
async def update_account(
    account_id: uuid.UUID, body: AccountUpdateIn, principal: CurrentUser, accounts: Accounts
) -> AccountOut:
    """Change the account type, or deactivate (`is_active: false`) / reactivate it."""
    return await accounts.update(principal, account_id, body)
