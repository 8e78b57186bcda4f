"""Trading accounts (`trading_accounts`): one per (user, exchange, exchange-side account id).

A paper account is funded on creation with the configured starting balances, recorded in `balances`. An account on
a real exchange needs the user's active credentials for that exchange.
"""

from __future__ import annotations

import secrets
import uuid
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cival.core.db import Database
from cival.core.exceptions import Conflict, NotFound, ValidationFailed
from cival.database.models import Balance, TradingAccount
from cival.models.trading_models import AccountIn, AccountOut, AccountUpdateIn, BalanceOut
from cival.services import audit
from cival.services.auth_service import Principal
from cival.services.credential_service import CredentialService

PAPER = "paper"


class AccountExists(Conflict):
    code = "account_exists"


class CredentialsRequired(ValidationFailed):
    code = "credentials_required"


class AccountService:
    def __init__(self, database: Database, credentials: CredentialService, paper_balances: dict[str, Decimal]) -> None:
        self.database = database
        self.credentials = credentials
        self.paper_balances = paper_balances

    async def create(self, principal: Principal, body: AccountIn) -> AccountOut:
        if body.exchange != PAPER and not await self.credentials.has_active(principal.user_id, body.exchange):
            raise CredentialsRequired(
                f"add your {body.exchange} API credentials (POST /api/v1/credentials) before creating the account"
            )
        external_id = body.account_id or f"{body.exchange}-{secrets.token_hex(4)}"
        account = TradingAccount(
            id=uuid.uuid4(),
            user_id=principal.user_id,
            exchange=body.exchange,
            account_id=external_id,
            account_type=body.account_type,
        )
        balances = []
        try:
            async with self.database.session(principal.user_id) as session:
                session.add(account)
                await session.flush()
                if body.exchange == PAPER:
                    balances = [
                        Balance(
                            user_id=principal.user_id,
                            account_id=account.id,
                            asset=asset,
                            free=amount,
                            locked=Decimal(0),
                            total=amount,
                            exchange=PAPER,
                        )
                        for asset, amount in sorted(self.paper_balances.items())
                    ]
                    session.add_all(balances)
                audit.record(session, "account.created", principal.user_id, account_id=account.id)
        except IntegrityError as exc:
            raise AccountExists(f"you already have a {body.exchange} account with account_id {external_id!r}") from exc
        return self._out(account, balances)

    async def list_accounts(self, principal: Principal) -> list[AccountOut]:
        async with self.database.session(principal.user_id) as session:
            accounts = (
                await session.scalars(
                    select(TradingAccount)
                    .where(TradingAccount.user_id == principal.user_id)
                    .order_by(TradingAccount.created_at, TradingAccount.id)
                )
            ).all()
            balances = await self._balances(session, principal.user_id, [a.id for a in accounts])
        return [self._out(a, balances.get(a.id, [])) for a in accounts]

    async def get(self, principal: Principal, account_id: uuid.UUID) -> AccountOut:
        async with self.database.session(principal.user_id) as session:
            account = await self._own(session, principal, account_id)
            balances = await self._balances(session, principal.user_id, [account.id])
        return self._out(account, balances.get(account.id, []))

    async def update(self, principal: Principal, account_id: uuid.UUID, body: AccountUpdateIn) -> AccountOut:
        async with self.database.session(principal.user_id) as session:
            account = await self._own(session, principal, account_id)
            if body.account_type is not None:
                account.account_type = body.account_type
            if body.is_active is not None and body.is_active != account.is_active:
                account.is_active = body.is_active
                action = "account.activated" if body.is_active else "account.deactivated"
                audit.record(session, action, principal.user_id, account_id=account.id)
            balances = await self._balances(session, principal.user_id, [account.id])
        return self._out(account, balances.get(account.id, []))

    async def _own(self, session: AsyncSession, principal: Principal, account_id: uuid.UUID) -> TradingAccount:
        account = await session.scalar(
            select(TradingAccount).where(TradingAccount.id == account_id, TradingAccount.user_id == principal.user_id)
        )
        if account is None:
            raise NotFound(f"account {account_id} not found")
        return account

    @staticmethod
    async def _balances(
        session: AsyncSession, user_id: uuid.UUID, account_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, list[Balance]]:
        if not account_ids:
            return {}
        rows = (
            await session.scalars(
                select(Balance)
                .where(Balance.user_id == user_id, Balance.account_id.in_(account_ids))
                .order_by(Balance.asset)
            )
        ).all()
        out: dict[uuid.UUID, list[Balance]] = {}
        for row in rows:
            out.setdefault(row.account_id, []).append(row)
        return out

    @staticmethod
    def _out(account: TradingAccount, balances: list[Balance]) -> AccountOut:
        out = AccountOut.model_validate(account)
        out.balances = [BalanceOut.model_validate(b) for b in balances]
        return out
