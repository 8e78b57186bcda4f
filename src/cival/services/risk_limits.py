"""Managing risk: a user's trading limits (with where they stand), the kill switch, and risk alerts.

The gate that enforces all this on every order is `services/risk_manager.py`; this is the API's side of it. A user's
default limits are created on first use (the first order, or the first risk request), see `seed_defaults`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cival.core.exceptions import Conflict, NotFound, PermissionDenied, ServiceUnavailable, ValidationFailed
from cival.core.logging import get_logger
from cival.database.models import RiskAlert, TradingLimit, User
from cival.domain import risk
from cival.domain.risk import KILL_SWITCH, KILL_SWITCH_ON_DAILY_LOSS, RESERVED_TYPES, InvalidLimit, Limit, LimitType
from cival.models.risk_models import AlertOut, AlertPage, KillSwitchIn, KillSwitchOut, LimitIn, LimitOut, LimitUpdateIn
from cival.services.auth_service import Principal
from cival.services.market_data_service import UnknownSymbol
from cival.services.risk_manager import RiskGate, lock_user_limits, platform_principal, seed_defaults

log = get_logger(__name__)


class LimitRefused(ValidationFailed):
    """A limit that cannot be stored; `code` is set per instance (`unknown_limit_type`, `invalid_limit_value` ...)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code  # type: ignore[misc]


class LimitExists(Conflict):
    code = "limit_exists"


class NothingToChange(ValidationFailed):
    code = "nothing_to_change"


class RiskLimitService:
    def __init__(self, gate: RiskGate) -> None:
        self.gate = gate
        self.database = gate.database

    # --- limits ----------------------------------------------------------------------------------------------

    async def list_limits(self, principal: Principal) -> list[LimitOut]:
        await self._ensure_defaults(principal.user_id)
        return await self._outputs(principal.user_id, None)

    async def get_limit(self, principal: Principal, limit_id: uuid.UUID) -> LimitOut:
        await self._own(principal.user_id, limit_id)
        return (await self._outputs(principal.user_id, limit_id))[0]

    async def create_limit(self, principal: Principal, body: LimitIn) -> LimitOut:
        user_id = principal.user_id
        try:
            limit_type = risk.parse_limit_type(body.limit_type)
            risk.validate_scope(limit_type, body.symbol)
            value = risk.validate_limit_value(limit_type, body.limit_value)
        except InvalidLimit as exc:
            raise LimitRefused(exc.code, exc.detail) from exc
        if body.symbol is not None and body.symbol not in self.gate.symbols:
            known = ", ".join(sorted(self.gate.symbols))
            raise UnknownSymbol(f"unknown symbol {body.symbol!r}; symbols are BASE/QUOTE, one of: {known}")
        async with self.database.session(user_id) as session:
            await lock_user_limits(session, user_id)
            # A new user's first limit takes the place of the default of its type (no conflict with an unseen row).
            await seed_defaults(session, user_id, skip=limit_type if body.symbol is None else None)
            existing = await session.scalar(
                select(TradingLimit.id).where(
                    TradingLimit.user_id == user_id,
                    TradingLimit.limit_type == limit_type.value,
                    TradingLimit.symbol.is_(None) if body.symbol is None else TradingLimit.symbol == body.symbol,
                )
            )
            if existing is not None:
                scope = body.symbol or "all symbols"
                raise LimitExists(
                    f"a {limit_type} limit for {scope} exists already ({existing}): PATCH /api/v1/risk/limits/"
                    f"{existing} to change it"
                )
            row = TradingLimit(
                id=uuid.uuid4(), user_id=user_id, limit_type=limit_type.value, symbol=body.symbol, limit_value=value,
                is_active=body.is_active,
            )  # fmt: skip
            session.add(row)
        return (await self._outputs(user_id, row.id))[0]

    async def update_limit(self, principal: Principal, limit_id: uuid.UUID, body: LimitUpdateIn) -> LimitOut:
        user_id = principal.user_id
        async with self.database.session(user_id) as session:
            await lock_user_limits(session, user_id)
            row = await self._own_row(session, user_id, limit_id)
            if body.limit_value is None and body.is_active is None:
                raise NothingToChange("send limit_value and/or is_active")
            if body.limit_value is not None:
                try:
                    row.limit_value = risk.validate_limit_value(LimitType(row.limit_type), body.limit_value)
                except InvalidLimit as exc:
                    raise LimitRefused(exc.code, exc.detail) from exc
            if body.is_active is not None:
                row.is_active = body.is_active
            row.updated_at = datetime.now(UTC)
        return (await self._outputs(user_id, limit_id))[0]

    async def delete_limit(self, principal: Principal, limit_id: uuid.UUID) -> None:
        async with self.database.session(principal.user_id) as session:
            await lock_user_limits(session, principal.user_id)
            row = await self._own_row(session, principal.user_id, limit_id)
            await session.delete(row)

    async def _ensure_defaults(self, user_id: uuid.UUID) -> None:
        async with self.database.session(user_id, read_only=True) as session:
            seeded = await session.scalar(
                select(TradingLimit.id).where(TradingLimit.user_id == user_id, TradingLimit.limit_type == KILL_SWITCH)
            )
        if seeded is None:
            async with self.database.session(user_id) as session:
                await lock_user_limits(session, user_id)
                await seed_defaults(session, user_id)

    @staticmethod
    async def _own_row(session: AsyncSession, user_id: uuid.UUID, limit_id: uuid.UUID) -> TradingLimit:
        row = await session.scalar(
            select(TradingLimit).where(
                TradingLimit.id == limit_id,
                TradingLimit.user_id == user_id,
                TradingLimit.limit_type.not_in(RESERVED_TYPES),
            )
        )
        if row is None:
            raise NotFound(f"limit {limit_id} not found")
        return row

    async def _own(self, user_id: uuid.UUID, limit_id: uuid.UUID) -> None:
        async with self.database.session(user_id, read_only=True) as session:
            await self._own_row(session, user_id, limit_id)

    async def _outputs(self, user_id: uuid.UUID, only: uuid.UUID | None) -> list[LimitOut]:
        """The user's limits (or one), each with where the user stands against it now."""
        async with self.database.session(user_id, read_only=True) as session:
            query = select(TradingLimit).where(
                TradingLimit.user_id == user_id, TradingLimit.limit_type.not_in(RESERVED_TYPES)
            )
            if only is not None:
                query = query.where(TradingLimit.id == only)
            rows = (
                await session.scalars(query.order_by(TradingLimit.limit_type, TradingLimit.symbol, TradingLimit.id))
            ).all()
        loaded = await self.gate.load(user_id, None)
        prices = await self.gate.prices()
        standing = loaded.standing(self.gate.deposit_per_account(prices))
        try:
            counted = await self.gate.cache.get(self.gate.rate_key(user_id))
            rate: int | None = int(counted) if counted is not None else 0
        except ServiceUnavailable:
            rate = None
        out = []
        for row in rows:
            limit_type = LimitType(row.limit_type)
            limit = Limit(limit_type, row.limit_value, row.symbol, row.id)
            out.append(
                LimitOut(
                    id=row.id,
                    limit_type=row.limit_type,
                    symbol=row.symbol,
                    limit_value=row.limit_value,
                    unit=risk.UNITS[limit_type],
                    current_value=risk.current_value(limit, standing, prices, self.gate.quotes, rate),
                    applies_to_reduce_only=limit_type not in risk.CAPS_RISK,
                    is_active=row.is_active,
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                )
            )
        return out

    # --- the kill switch ---------------------------------------------------------------------------------------

    async def kill_switch(self, principal: Principal) -> KillSwitchOut:
        async with self.database.session(principal.user_id, read_only=True) as session:
            rows = {
                r.limit_type: r
                for r in (
                    await session.scalars(
                        select(TradingLimit).where(
                            TradingLimit.user_id == principal.user_id,
                            TradingLimit.limit_type.in_([KILL_SWITCH, KILL_SWITCH_ON_DAILY_LOSS]),
                        )
                    )
                ).all()
            }
        switch, auto = rows.get(KILL_SWITCH), rows.get(KILL_SWITCH_ON_DAILY_LOSS)
        return KillSwitchOut(
            active=bool(switch and switch.is_active),
            trip_on_daily_loss=bool(auto and auto.is_active),
            updated_at=switch.updated_at if switch else None,
        )

    async def set_kill_switch(self, principal: Principal, body: KillSwitchIn) -> KillSwitchOut:
        """Engage or release the switch (and/or its automatic trip); engaging cancels every working order."""
        if body.active is None and body.trip_on_daily_loss is None:
            raise NothingToChange("send active and/or trip_on_daily_loss")
        if body.all_users and not principal.is_admin:
            raise PermissionDenied("all_users needs the admin role: a trader's kill switch is their own")
        if not body.all_users:
            reason = "by the user"
            await self.gate.set_switch(
                principal.user_id, engaged=body.active, trip_on_daily_loss=body.trip_on_daily_loss, reason=reason
            )
            cancelled = await self.gate.cancel_working(principal) if body.active else 0
            out = await self.kill_switch(principal)
            return out.model_copy(update={"cancelled_orders": cancelled})
        async with self.database.system_session(read_only=True) as session:
            users = (await session.scalars(select(User).order_by(User.created_at, User.id))).all()
        cancelled = 0
        reason = f"by an administrator ({principal.email}), for every user"
        for user in users:
            await self.gate.set_switch(
                user.id, engaged=body.active, trip_on_daily_loss=body.trip_on_daily_loss, reason=reason
            )
            if body.active:
                acting = principal if user.id == principal.user_id else platform_principal(user)
                cancelled += await self.gate.cancel_working(acting)
        log.warning("kill switch set for every user", active=body.active, users=len(users), admin=principal.email)
        out = await self.kill_switch(principal)
        return out.model_copy(update={"users": len(users), "cancelled_orders": cancelled})

    # --- alerts ------------------------------------------------------------------------------------------------

    async def list_alerts(
        self, principal: Principal, *, severity: str | None, acknowledged: bool | None, limit: int, offset: int
    ) -> AlertPage:
        user_id = principal.user_id
        where = [RiskAlert.user_id == user_id]
        if severity is not None:
            where.append(RiskAlert.severity == severity)
        if acknowledged is not None:
            where.append(RiskAlert.acknowledged.is_(acknowledged))
        async with self.database.session(user_id, read_only=True) as session:
            total = await session.scalar(select(func.count()).select_from(RiskAlert).where(*where)) or 0
            rows = (
                await session.scalars(
                    select(RiskAlert)
                    .where(*where)
                    .order_by(RiskAlert.created_at.desc(), RiskAlert.id)
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
        return AlertPage(items=[AlertOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)

    async def acknowledge(self, principal: Principal, alert_id: uuid.UUID) -> AlertOut:
        user_id = principal.user_id
        async with self.database.session(user_id) as session:
            row = await session.scalar(select(RiskAlert).where(RiskAlert.id == alert_id, RiskAlert.user_id == user_id))
            if row is None:
                raise NotFound(f"alert {alert_id} not found")
            row.acknowledged = True
        return AlertOut.model_validate(row)
