"""The pre-trade risk gate: limits, the kill switch and risk alerts (the spec's risk_manager).

Contract with the order path (`services/order_management.py`):

- Every order from every source is judged after it is validated against its pair and before anything is sent,
  inside the transaction that stores it (a driver transaction, D42): the order intake (`services/order_intake.py`)
  reads each user's standing once per batch of new orders (`RiskGate.load`) and judges the batch's orders one after
  another on it (`RiskGate.judge`, `Loaded.accept`, D43); `RiskGate.check` is both for one order. The gate raises
  `RiskRefused` to refuse the order. When the kill switch must first be engaged (automatic trip on a daily loss
  breach) it raises `TripFirst`: the order path ends its transaction, calls `RiskGate.trip` (which cancels the
  user's working orders through `cancel_all`, so no write transaction may be held around it) and asks again with
  `tripped=True`. A user's first order finds no limits yet: the gate raises `DefaultsFirst`, and the order path ends
  its transaction, calls `RiskGate.seed` and asks again (`RiskGate.judged` runs both).
- On a refusal the order path stores the order as `rejected` (reason `risk:<limit_type>: <detail>`) with its alert
  (`refusal_alert`, `write_alerts`) in the SAME transaction, publishes the order and the alert, and answers 422 with
  the refusal (503 when a check could not run).

Everything the configured limits need (the limits, the kill switch, positions, working orders, balances, the start
of day) is read in ONE query (`services/risk_standing.py`); prices come from the tickers in the cache, and the order
rate is a cache counter.
The arithmetic is `domain.risk`'s. Limits management, the kill switch endpoints and alerts are in
`services/risk_limits.py`.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cival.core.cache import Cache
from cival.core.db import READ_ONLY, Database
from cival.core.exceptions import ServiceUnavailable, ValidationFailed
from cival.core.logging import get_logger
from cival.database.driver_sql import DriverInsert, DriverTx, Target
from cival.database.models import (
    RiskAlert,
    TradingLimit,
    User,
)
from cival.database.rows import OrderRow
from cival.domain import risk
from cival.domain.instruments import Instrument
from cival.domain.risk import DEFAULT_LIMITS, KILL_SWITCH, KILL_SWITCH_ON_DAILY_LOSS, Breach, Limit, LimitType
from cival.services import audit
from cival.services.auth_service import Principal
from cival.services.channels import UserPublisher
from cival.services.portfolio_tracker import Prices
from cival.services.risk_standing import STANDING, Loaded, parse_standing

log = get_logger(__name__)

CancelAll = Callable[[Principal, str | None], Awaitable[Sequence[Any]]]
T = TypeVar("T")

ALERT_TYPES = {
    LimitType.DAILY_LOSS.value: "drawdown_limit",
    LimitType.POSITION_SIZE.value: "position_risk",
    LimitType.LEVERAGE.value: "position_risk",
    KILL_SWITCH: "kill_switch",
}
"""The alert type of a refusal by each limit (the spec's types, extended); any other limit: `order_limit`."""
RATE_WINDOW_SECONDS = 60
PRICES_REUSE_SECONDS = 0.25
_LOCK_NAMESPACE = 0x5249534B  # "RISK": the first key of the two-key advisory lock that serialises one user's limits


class RiskRefused(ValidationFailed):
    """A limit refused an order (422 `risk_limit_exceeded`); nothing is sent anywhere."""

    code = "risk_limit_exceeded"

    def __init__(
        self,
        limit_type: str,
        detail: str,
        *,
        limit_value: Decimal | None = None,
        attempted_value: Decimal | None = None,
        severity: str = "medium",
        limit_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(
            detail,
            limit_type=limit_type,
            limit_value=None if limit_value is None else format(limit_value, "f"),
            attempted_value=None if attempted_value is None else format(attempted_value, "f"),
        )
        self.limit_type = limit_type
        self.limit_value = limit_value
        self.attempted_value = attempted_value
        self.severity = severity
        self.limit_id = limit_id

    @classmethod
    def of(cls, breach: Breach) -> RiskRefused:
        return cls(
            breach.limit_type,
            breach.detail,
            limit_value=breach.limit_value,
            attempted_value=breach.attempted_value,
            severity=breach.severity,
            limit_id=breach.limit_id,
        )


class TripFirst(Exception):
    """Today's loss reached the daily_loss limit and the user's automatic trip is on: the kill switch is engaged
    (`RiskGate.trip`) outside the caller's transaction before the order is judged."""

    def __init__(self, loss: Decimal, limit: Decimal) -> None:
        super().__init__(f"today's loss {loss} reached the daily_loss limit {limit}")
        self.loss = loss
        self.limit = limit


class DefaultsFirst(Exception):
    """The user has no risk rows yet (a first order): the caller ends its transaction, `RiskGate.seed`s the default
    limits (under the user's limits lock, in a transaction of its own) and asks again."""


class RiskCheckUnavailable(RiskRefused):
    """A configured check needs a service that is down (the cache): the gate fails closed and says so (503)."""

    status_code = 503
    code = "risk_check_unavailable"


@dataclass
class RateCounts:
    """Order-rate counts taken in one cache step for a batch's orders of one user (`RiskGate.take_counts`)."""

    key: str
    next: int
    left: int
    taken: int = 0
    unavailable: tuple[Limit, ServiceUnavailable] | None = None
    """The limit, and why the cache could not count: every order that reaches the check is refused (fail closed)."""

    def take(self) -> int:
        """The next order's count in the minute; raises `RiskCheckUnavailable` when the cache could not count."""
        if self.unavailable is not None:
            limit, cause = self.unavailable
            raise _rate_unavailable(limit, cause) from cause
        if self.left <= 0:
            raise RuntimeError("more orders reached the rate check than counts were taken")
        count, self.next, self.left = self.next, self.next + 1, self.left - 1
        return count


def _rate_unavailable(limit: Limit, exc: ServiceUnavailable) -> RiskCheckUnavailable:
    return RiskCheckUnavailable(
        LimitType.ORDER_RATE.value,
        f"the cache that counts orders per minute is unreachable, so order_rate cannot be checked and the "
        f"order is refused (fail closed): {exc.detail}",
        limit_value=limit.value,
        severity="high",
        limit_id=limit.id,
    )


async def lock_user_limits(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Serialise changes to one user's limits (SQLite: its write transactions are serial already)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(user_id.bytes[:4], "big", signed=True)
        await session.execute(select(func.pg_advisory_xact_lock(_LOCK_NAMESPACE, key)))


async def seed_defaults(session: AsyncSession, user_id: uuid.UUID, *, skip: LimitType | None = None) -> bool:
    """Give a user who has no risk rows the default limits and a kill switch that is off; True if it did.

    The kill switch row marks a user as set up, so limits the user deleted never come back. Call under
    `lock_user_limits`.
    """
    exists = await session.scalar(
        select(TradingLimit.id).where(TradingLimit.user_id == user_id, TradingLimit.limit_type == KILL_SWITCH).limit(1)
    )
    if exists is not None:
        return False
    for limit_type, value in DEFAULT_LIMITS.items():
        if limit_type is not skip:
            session.add(TradingLimit(user_id=user_id, limit_type=limit_type.value, limit_value=value))
    session.add(TradingLimit(user_id=user_id, limit_type=KILL_SWITCH, limit_value=Decimal(1), is_active=False))
    session.add(
        TradingLimit(user_id=user_id, limit_type=KILL_SWITCH_ON_DAILY_LOSS, limit_value=Decimal(1), is_active=False)
    )
    await session.flush()
    return True


def alert_data(alert: RiskAlert) -> dict[str, Any]:
    """An alert as published on the user's `alerts` channel (the shape `GET /risk/alerts` lists)."""
    return {
        "id": str(alert.id),
        "alert_type": alert.alert_type,
        "severity": alert.severity,
        "message": alert.message,
        "data": alert.data,
        "acknowledged": bool(alert.acknowledged),
        "created_at": alert.created_at.isoformat() if alert.created_at else None,
    }


def platform_principal(user: User) -> Principal:
    # The platform acting for a user (automatic trip, an admin's switch for everyone): no session of theirs.
    return Principal(user_id=user.id, email=user.email, role=user.role, session_id=uuid.UUID(int=0))


def refusal_alert(order: OrderRow, refusal: RiskRefused) -> RiskAlert:
    """The alert for a refused order, to be written in the transaction that stores the order (`write_alerts`)."""
    return RiskAlert(
        id=uuid.uuid4(),
        user_id=order.user_id,
        alert_type=ALERT_TYPES.get(refusal.limit_type, "order_limit"),
        severity=refusal.severity,
        message=f"{order.side} {format(order.quantity, 'f')} {order.symbol} refused by {refusal.limit_type}: "
        f"{refusal.detail}",
        data={
            "order_id": str(order.id),
            "symbol": order.symbol,
            "side": order.side,
            "limit_type": refusal.limit_type,
            "limit_id": None if refusal.limit_id is None else str(refusal.limit_id),
            "limit_value": None if refusal.limit_value is None else format(refusal.limit_value, "f"),
            "attempted_value": None if refusal.attempted_value is None else format(refusal.attempted_value, "f"),
        },
        acknowledged=False,
        created_at=datetime.now(UTC),
    )


_INSERT_ALERT = DriverInsert(RiskAlert.__table__)


async def write_alerts(tx: Target, alerts: Sequence[RiskAlert]) -> None:
    await _INSERT_ALERT.rows(tx, alerts)


class RiskGate:
    """Checks an order before it is stored and sent; raises `RiskRefused` to refuse it."""

    def __init__(
        self,
        database: Database,
        cache: Cache,
        instruments: Mapping[tuple[str, str], Instrument],
        prices: Prices,
        starting_balances: Mapping[str, Decimal],
    ) -> None:
        self.database = database
        self.cache = cache
        self.instruments = instruments
        self.prices = prices
        self.starting_balances = dict(starting_balances)
        self._reader = database.engine.execution_options(**{READ_ONLY: True})
        self._prices: tuple[float, dict[str, Decimal]] | None = None
        self.prices_reuse_seconds = PRICES_REUSE_SECONDS
        self.clock: Callable[[], float] = time.time
        self.cancel_all: CancelAll | None = None
        """The order service's `cancel_all(principal, symbol)`, set by the registry once both exist."""
        self.publish: UserPublisher | None = None
        """The registry's user-event publisher, for alerts raised outside the order path."""

    @functools.cached_property
    def quotes(self) -> dict[str, str]:
        """The quote asset of each symbol (the instruments are fixed at start-up)."""
        return {symbol: i.quote_asset for (_, symbol), i in self.instruments.items()}

    @functools.cached_property
    def symbols(self) -> Collection[str]:
        return frozenset(symbol for _, symbol in self.instruments)

    # --- the gate --------------------------------------------------------------------------------------------

    async def check(
        self,
        order: OrderRow,
        instrument: Instrument,
        reference_price: Decimal | None,
        tx: DriverTx | None = None,
        *,
        tripped: bool = False,
    ) -> None:
        """Refuse the order (`RiskRefused`) if it breaks a limit; every order from every source comes here.

        With `tx`, the gate reads inside the caller's transaction, the one that then stores the order; it raises
        `TripFirst` when the kill switch must be engaged before the order is judged (the caller ends its
        transaction, `trip`s, and asks again with `tripped`, which judges the order as it came), and `DefaultsFirst`
        when the user has no limits yet (the caller ends its transaction, `seed`s, and asks again). Without one, the
        gate runs its own transaction and does all of that itself.
        """
        if tx is None:

            async def own_transaction(tripped: bool) -> None:
                async with self.database.driver_transaction(order.user_id) as own:
                    await self.check(order, instrument, reference_price, own, tripped=tripped)

            await self.judged(order.user_id, own_transaction)
            return
        loaded = await self.load(order.user_id, order.symbol, tx)
        await self.judge(order, instrument, reference_price, loaded, tripped=tripped)

    async def judge(
        self,
        order: OrderRow,
        instrument: Instrument,
        reference_price: Decimal | None,
        loaded: Loaded,
        *,
        tripped: bool = False,
        counts: RateCounts | None = None,
    ) -> None:
        """`check` on a standing read already (`load`, in the transaction that stores the order): the order
        intake reads each user's standing once per batch and judges that batch's orders one after another, each
        seeing the ones accepted before it (`Loaded.accept`), and counts it in the order rate with `counts` (taken
        for the batch in one step) when given. Raises as `check` does."""
        user_id = order.user_id
        if loaded.kill_switch is None:
            raise DefaultsFirst
        limits = risk.effective(loaded.limits, order.symbol)
        needs_prices = bool({LimitType.DAILY_LOSS, LimitType.LEVERAGE} & limits.keys())
        prices = await self._recent_prices() if needs_prices else {}
        standing = loaded.standing(self.deposit_per_account(prices))
        daily = limits.get(LimitType.DAILY_LOSS)
        if daily is not None and loaded.trip_on_daily_loss and not loaded.kill_switch and not tripped:
            loss = risk.daily_loss(standing, prices)
            if loss is not None and loss >= daily.value:
                # Engaged before this order is stored; the order is then judged as it came (a daily_loss refusal
                # says why).
                raise TripFirst(loss, daily.value)
        intent = risk.OrderIntent(
            order.account_id,
            order.symbol,
            instrument.quote_asset,
            order.side,
            order.type,
            order.quantity,
            order.price,
            order.stop_price,
        )
        breach = risk.evaluate(
            intent,
            limits,
            standing,
            kill_switch=bool(loaded.kill_switch) and not tripped,
            reference=reference_price,
            prices=prices,
            quotes=self.quotes,
        )
        if breach is None and LimitType.ORDER_RATE in limits:
            count = counts.take() if counts is not None else await self._count_order(user_id, limits)
            breach = risk.check_order_rate(limits[LimitType.ORDER_RATE], count)
        if breach is not None:
            raise RiskRefused.of(breach)

    async def _recent_prices(self) -> dict[str, Decimal]:
        """The latest prices, reused for `prices_reuse_seconds`: reading every ticker for every order was a sixth of
        the gate's cost on Redis, and a valuation a fraction of a market step old judges a loss or leverage alike."""
        now = time.monotonic()
        if self._prices is None or now - self._prices[0] >= self.prices_reuse_seconds:
            self._prices = (now, await self.prices())
        return self._prices[1]

    def rate_key(self, user_id: uuid.UUID) -> str:
        return f"risk:rate:{user_id}:{int(self.clock()) // RATE_WINDOW_SECONDS}"

    async def _count_order(self, user_id: uuid.UUID, limits: Mapping[LimitType, Limit]) -> int:
        """Count this order in the user's current minute (shared by every worker through the cache)."""
        try:
            return await self.cache.incr(self.rate_key(user_id), ttl=RATE_WINDOW_SECONDS)
        except ServiceUnavailable as exc:
            raise _rate_unavailable(limits[LimitType.ORDER_RATE], exc) from exc

    async def take_counts(self, user_id: uuid.UUID, wanted: int, limit: Limit) -> RateCounts:
        """Count `wanted` orders of the user's current minute in one cache step, for a batch (the intake, D48): each
        order that reaches the rate check takes the next count (`judge(counts=...)`); `return_counts` gives back
        the ones not taken. A cache that cannot count makes every order that reaches the check fail closed."""
        key = self.rate_key(user_id)
        try:
            last = await self.cache.incr(key, wanted, ttl=RATE_WINDOW_SECONDS)
        except ServiceUnavailable as exc:
            return RateCounts(key, 0, 0, 0, (limit, exc))
        return RateCounts(key, last - wanted + 1, wanted, wanted)

    async def return_counts(self, counts: RateCounts, *, every: bool = False) -> None:
        """Give back the counts a batch took and did not use (its orders refused or failed before the rate check),
        or `every` count it took (the batch was not stored: its orders are placed again, and counted again)."""
        back = counts.taken if every else counts.left
        if back > 0 and counts.unavailable is None:
            try:
                await self.cache.incr(counts.key, -back, ttl=RATE_WINDOW_SECONDS)
            except ServiceUnavailable:
                log.warning("order-rate counts not given back: cache unavailable", key=counts.key, count=back)

    async def judged(self, user_id: uuid.UUID, attempt: Callable[[bool], Awaitable[T]]) -> T:
        """`attempt(tripped)` (a transaction that calls `check`), after what the gate asks to happen first, each
        outside any transaction: a first order's default limits are created (`DefaultsFirst`), and the kill switch
        is engaged before the order is judged as it came (`TripFirst`, then `tripped` is True)."""
        tripped = False
        for _ in range(3):
            try:
                return await attempt(tripped)
            except DefaultsFirst:
                await self.seed(user_id)
            except TripFirst as first:
                await self.trip(user_id, first.loss, first.limit)
                tripped = True
        raise RuntimeError(f"the risk gate could not set up user {user_id}'s limits")

    async def seed(self, user_id: uuid.UUID) -> None:
        """Give the user the default limits if they have no risk rows yet (their first order), in a transaction of
        its own."""
        async with self.database.session(user_id) as session:
            await lock_user_limits(session, user_id)
            await seed_defaults(session, user_id)

    # --- reading ---------------------------------------------------------------------------------------------

    async def load_many(self, keys: Sequence[tuple[uuid.UUID, str]], tx: Target) -> list[Loaded]:
        """`load(user_id, symbol, tx)` for each (user, symbol) of `keys`, in order: on PostgreSQL in one round trip
        for them all (D63), each run after the one before, as separate loads would be."""
        today = datetime.now(UTC).date()
        runs = [{"user_id": u, "today": today, "symbol": s, "nth": n} for n, (u, s) in enumerate(keys)]
        loaded: list[list[Any]] = [[] for _ in keys]
        for row in await STANDING[True].fetch_each(tx, runs):
            loaded[row.nth].append(row)
        return [parse_standing(rows) for rows in loaded]

    async def load(self, user_id: uuid.UUID, symbol: str | None, tx: Target | None = None) -> Loaded:
        """Limits and standing in one query (positions of `symbol` only, when given), in `tx` when given."""
        params = {"user_id": user_id, "today": datetime.now(UTC).date(), "symbol": symbol, "nth": 0}
        query = STANDING[symbol is not None]
        rows: Sequence[Any]
        if tx is not None:  # the order path: on the driver (D38, D42)
            rows = await query.fetch(tx, **params)
        elif self.database.is_sqlite:
            # No row-level security to bind on SQLite, and an ORM session costs a quarter of the gate's time there.
            async with self._reader.connect() as connection:
                rows = (await connection.execute(query.statement, params)).all()
        else:
            async with self.database.session(user_id, read_only=True) as own:
                rows = await query.fetch(own, **params)
        return parse_standing(rows)

    def deposit_per_account(self, prices: Mapping[str, Decimal]) -> Decimal:
        """What a new paper account is funded with, in USD."""
        value, _ = risk.valuation(self.starting_balances, prices)
        return value

    # --- the kill switch ---------------------------------------------------------------------------------------

    async def set_switch(
        self, user_id: uuid.UUID, *, engaged: bool | None, trip_on_daily_loss: bool | None, reason: str
    ) -> tuple[bool, RiskAlert | None]:
        """Store one user's switch (and its automatic trip); an alert when it changes. Returns (engaged, alert)."""
        alert = None
        async with self.database.session(user_id) as session:
            await lock_user_limits(session, user_id)
            await seed_defaults(session, user_id)
            rows = {
                r.limit_type: r
                for r in (
                    await session.scalars(
                        select(TradingLimit).where(
                            TradingLimit.user_id == user_id,
                            TradingLimit.limit_type.in_([KILL_SWITCH, KILL_SWITCH_ON_DAILY_LOSS]),
                        )
                    )
                ).all()
            }
            switch, auto = rows[KILL_SWITCH], rows[KILL_SWITCH_ON_DAILY_LOSS]
            if trip_on_daily_loss is not None and auto.is_active != trip_on_daily_loss:
                auto.is_active = trip_on_daily_loss
                auto.updated_at = datetime.now(UTC)
            if engaged is not None and switch.is_active != engaged:
                switch.is_active = engaged
                switch.updated_at = datetime.now(UTC)
                alert = RiskAlert(
                    id=uuid.uuid4(),
                    user_id=user_id,
                    alert_type="kill_switch",
                    severity="critical" if engaged else "low",
                    message=(
                        f"kill switch engaged ({reason}): working orders are being cancelled and only orders that "
                        "reduce a position pass until it is turned off"
                        if engaged
                        else f"kill switch released ({reason}): trading is open again"
                    ),
                    data={"engaged": engaged, "reason": reason},
                    acknowledged=False,
                    created_at=datetime.now(UTC),
                )
                session.add(alert)
                audit.record(session, "risk.kill_switch", user_id, engaged=engaged, reason=reason)
            now_engaged = bool(switch.is_active)
        if alert is not None and self.publish is not None:
            try:
                await self.publish(user_id, [("alerts", alert_data(alert))])
            except Exception:  # the alert is stored; a live update is best effort
                log.exception("publishing a kill switch alert failed", user_id=str(user_id))
        return now_engaged, alert

    async def cancel_working(self, principal: Principal) -> int:
        """Cancel every working order of the user (the kill switch's second half)."""
        if self.cancel_all is None:
            raise RuntimeError("RiskGate.cancel_all is not wired: the registry sets it once the order service exists")
        return len(await self.cancel_all(principal, None))

    async def trip(self, user_id: uuid.UUID, loss: Decimal, limit: Decimal) -> None:
        """Engage the kill switch automatically: today's loss reached the daily_loss limit."""
        reason = f"automatic: today's loss {format(loss, 'f')} USD reached the daily_loss limit {format(limit, 'f')}"
        engaged, alert = await self.set_switch(user_id, engaged=True, trip_on_daily_loss=None, reason=reason)
        if alert is None:  # engaged by someone else meanwhile: they cancel
            return
        async with self.database.system_session(read_only=True) as session:
            user = await session.get(User, user_id)
        if user is not None:
            cancelled = await self.cancel_working(platform_principal(user))
            log.warning("kill switch tripped on daily loss", user_id=str(user_id), cancelled=cancelled)

    async def on_market(self, exchange: str, events: list[Any]) -> None:
        """After each market step (on the leader): trip the switch of users whose daily loss reached their limit.

        Only users who enabled the automatic trip are looked at; the gate also trips it on their next order.
        """
        if exchange != "paper":
            return
        async with self.database.system_session(read_only=True) as session:
            users = (
                await session.scalars(
                    select(TradingLimit.user_id).where(
                        TradingLimit.limit_type == KILL_SWITCH_ON_DAILY_LOSS, TradingLimit.is_active.is_(True)
                    )
                )
            ).all()
        if not users:
            return
        prices = await self.prices()
        deposit = self.deposit_per_account(prices)
        for user_id in users:
            loaded = await self.load(user_id, None)
            daily = next((lim for lim in loaded.limits if lim.limit_type is LimitType.DAILY_LOSS), None)
            if loaded.kill_switch or daily is None:
                continue
            loss = risk.daily_loss(loaded.standing(deposit), prices)
            if loss is not None and loss >= daily.value:
                await self.trip(user_id, loss, daily.value)
