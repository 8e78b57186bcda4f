"""The gate as a service, on the real database: the one-query read, exact boundaries at a chosen reference price,
default limits created once under concurrency, fail-closed order rate, automatic trip in the order path."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from cival.core.cache import RedisCache
from cival.core.service_registry import ServiceRegistry
from cival.database.driver_sql import DriverInsert
from cival.database.models import Order, PortfolioSnapshot, Position, RiskAlert, TradingAccount, TradingLimit, User
from cival.domain.instruments import Instrument
from cival.domain.risk import DEFAULT_LIMITS, KILL_SWITCH, LimitType
from cival.models.user_models import RegisterIn
from cival.services.risk_manager import (
    RiskCheckUnavailable,
    RiskGate,
    RiskRefused,
    lock_user_limits,
    refusal_alert,
    seed_defaults,
    write_alerts,
)

D = Decimal
BTC = "BTC/USDT"
INSERT_ORDER = DriverInsert(Order.__table__)


async def _user(registry: ServiceRegistry) -> uuid.UUID:
    email = f"risk-{uuid.uuid4().hex[:12]}@example.com"
    user = await registry.auth.register(RegisterIn(email=email, password="x" * 12))
    return user.id


async def _account(registry: ServiceRegistry, user_id: uuid.UUID, usdt: str = "10000") -> uuid.UUID:
    from cival.database.models import Balance

    account_id = uuid.uuid4()
    async with registry.database.system_session() as session:
        external = f"p-{account_id.hex[:8]}"
        session.add(TradingAccount(id=account_id, user_id=user_id, exchange="paper", account_id=external))
        await session.flush()
        session.add(
            Balance(user_id=user_id, account_id=account_id, asset="USDT", free=D(usdt), total=D(usdt), exchange="paper")
        )
    return account_id


async def _limits(registry: ServiceRegistry, user_id: uuid.UUID, **values: str) -> None:
    """Exactly these limits (and a kill switch that is off)."""
    async with registry.database.session(user_id) as session:
        await lock_user_limits(session, user_id)
        await seed_defaults(session, user_id)
        for row in (await session.scalars(select(TradingLimit).where(TradingLimit.user_id == user_id))).all():
            if row.limit_type in {t.value for t in LimitType}:
                await session.delete(row)
        for kind, value in values.items():
            session.add(TradingLimit(user_id=user_id, limit_type=kind, limit_value=D(value)))


def _order(user_id: uuid.UUID, account_id: uuid.UUID | None, side: str = "buy", **kw: Any) -> Order:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(), "user_id": user_id, "account_id": account_id, "symbol": BTC, "side": side,
        "type": "limit", "quantity": D(1), "price": D(100), "stop_price": None, "exchange": "paper",
    } | kw  # fmt: skip
    return Order(**fields)


def _instrument(registry: ServiceRegistry) -> Instrument:
    return registry.market_data.instrument("paper", BTC)


@pytest.fixture
def gate(registry: ServiceRegistry, clean_db: Any, monkeypatch: pytest.MonkeyPatch) -> RiskGate:
    monkeypatch.setattr(registry.risk, "prices_reuse_seconds", 0.0)  # every valuation sees the latest prices
    return registry.risk


async def test_one_query_reads_limits_positions_working_orders_balances_snapshot_and_accounts(
    registry: ServiceRegistry, gate: RiskGate
) -> None:
    user_id = await _user(registry)
    account = await _account(registry, user_id)
    await _limits(registry, user_id, order_notional="123.45", open_orders="7")
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    async with registry.database.system_session() as session:
        session.add(Position(user_id=user_id, account_id=account, symbol=BTC, size=D("0.5"), average_price=D(100),
                             exchange="paper"))  # fmt: skip
        session.add(Position(user_id=user_id, account_id=account, symbol="ETH/USDT", size=D(2), average_price=D(10),
                             exchange="paper"))  # fmt: skip
        for status, filled in (("pending", "0"), ("partial", "0.25"), ("filled", "1"), ("cancelled", "0")):
            session.add(_order(user_id, account, status=status, filled_quantity=D(filled), reserved=D("10.5")))
        session.add(PortfolioSnapshot(user_id=user_id, snapshot_date=yesterday - timedelta(days=3), total_value=D(1)))
        session.add(PortfolioSnapshot(user_id=user_id, snapshot_date=yesterday, total_value=D("9876.5")))
        session.add(PortfolioSnapshot(user_id=user_id, snapshot_date=yesterday + timedelta(days=1), total_value=D(2)))
    loaded = await gate.load(user_id, BTC)
    assert sorted((lim.limit_type.value, lim.value) for lim in loaded.limits) == [
        ("open_orders", D(7)), ("order_notional", D("123.45")),
    ]  # fmt: skip
    assert loaded.kill_switch is False
    assert loaded.positions == {(account, BTC): D("0.5")}  # of the order's symbol only
    assert sorted(w.remaining for w in loaded.working) == [D("0.75"), D(1)]
    assert all(w.reserved == D("10.5") and w.account_id == account for w in loaded.working)
    assert loaded.balances == {"USDT": D(10000)}
    assert loaded.previous_snapshot == (yesterday, D("9876.5"))
    assert len(loaded.account_openings) == 1
    everything = await gate.load(user_id, None)
    assert set(everything.positions) == {(account, BTC), (account, "ETH/USDT")}
    # The order path reads the same in its own transaction, on the driver's connection (D38, D42): the same values,
    # typed.
    async with registry.database.driver_transaction(user_id) as tx:
        assert await gate.load(user_id, BTC, tx) == loaded
        assert await gate.load(user_id, None, tx) == everything
    assert isinstance(loaded.account_openings[0], datetime)
    assert loaded.account_openings[0].tzinfo is not None


async def test_the_standings_of_a_batch_are_read_in_one_round_trip_each_as_its_own_load_reads_it(
    registry: ServiceRegistry, gate: RiskGate
) -> None:
    # Three (user, symbol) keys of two users, one with orders in two symbols; and a user with nothing at all.
    first, second, empty = await _user(registry), await _user(registry), await _user(registry)
    accounts = {first: await _account(registry, first), second: await _account(registry, second, "250")}
    await _limits(registry, second, open_orders="3")
    async with registry.database.system_session() as session:
        for user_id, symbol, size in ((first, BTC, "0.5"), (first, "ETH/USDT", "2"), (second, BTC, "1.5")):
            session.add(Position(user_id=user_id, account_id=accounts[user_id], symbol=symbol, size=D(size),
                                 average_price=D(100), exchange="paper"))  # fmt: skip
        session.add(_order(second, accounts[second], status="pending", reserved=D("10.5")))
    keys = [(first, BTC), (second, BTC), (first, "ETH/USDT"), (empty, BTC)]
    calls: list[str] = []
    async with registry.database.driver_transaction(None) as tx:
        real = tx.driver

        class Counting:  # the real connection, the calls that go to the server counted
            def __getattr__(self, name: str) -> Any:
                if name in ("fetch", "fetchmany", "execute", "executemany"):
                    calls.append(name)
                return getattr(real, name)

        tx.driver = Counting()
        many = await gate.load_many(keys, tx)
        assert await gate.load_many([], tx) == []
        tx.driver = real
        one_by_one = [await gate.load(user_id, symbol, tx) for user_id, symbol in keys]
    assert many == one_by_one
    assert [sorted(m.positions.values()) for m in many] == [[D("0.5")], [D("1.5")], [D(2)], []]
    assert [len(m.working) for m in many] == [0, 1, 0, 0]
    assert calls == (["execute"] * 4 if registry.database.is_sqlite else ["fetchmany"])  # PostgreSQL: one round trip


@pytest.mark.parametrize(("price", "passes"), [("109.99999999", True), ("110", True), ("110.00000001", False)])
async def test_price_collar_at_an_exact_reference_price(
    registry: ServiceRegistry, gate: RiskGate, price: str, passes: bool
) -> None:
    user_id = await _user(registry)
    account = await _account(registry, user_id)
    await _limits(registry, user_id, price_collar="10")
    order = _order(user_id, account, price=D(price))
    if passes:
        await gate.check(order, _instrument(registry), D(100))
        return
    with pytest.raises(RiskRefused) as caught:
        await gate.check(order, _instrument(registry), D(100))
    assert (caught.value.limit_type, caught.value.attempted_value) == ("price_collar", D("10.00000001"))
    assert caught.value.severity == "low"


async def test_defaults_are_created_once_even_by_concurrent_first_orders(
    registry: ServiceRegistry, gate: RiskGate
) -> None:
    user_id = await _user(registry)
    account = await _account(registry, user_id)
    await asyncio.gather(*(gate.check(_order(user_id, account), _instrument(registry), D(100)) for _ in range(6)))
    async with registry.database.system_session() as session:
        rows = (await session.scalars(select(TradingLimit).where(TradingLimit.user_id == user_id))).all()
    kinds = sorted(r.limit_type for r in rows)
    assert kinds == sorted([t.value for t in DEFAULT_LIMITS] + [KILL_SWITCH, "kill_switch_on_daily_loss"])


async def test_order_rate_fails_closed_when_the_cache_is_unreachable(
    registry: ServiceRegistry, gate: RiskGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id = await _user(registry)
    account = await _account(registry, user_id)
    await _limits(registry, user_id, order_rate="1000", order_notional="1000000")
    dead = RedisCache("redis://127.0.0.1:1/0", timeout=0.5)
    monkeypatch.setattr(gate, "cache", dead)
    try:
        with pytest.raises(RiskCheckUnavailable) as caught:
            await gate.check(_order(user_id, account), _instrument(registry), D(100))
        assert caught.value.status_code == 503
        assert caught.value.code == "risk_check_unavailable"
        assert caught.value.limit_type == "order_rate"
        await _limits(registry, user_id, order_notional="1000000")  # no order rate: the cache is not needed
        await gate.check(_order(user_id, account), _instrument(registry), D(100))
    finally:
        await dead.close()


async def test_a_daily_loss_breach_in_the_order_path_trips_the_switch_and_refuses_by_daily_loss(
    registry: ServiceRegistry, gate: RiskGate
) -> None:
    user_id = await _user(registry)
    account = await _account(registry, user_id)
    await _limits(registry, user_id, daily_loss="50")
    async with registry.database.session(user_id) as session:
        row = await session.scalar(
            select(TradingLimit).where(
                TradingLimit.user_id == user_id, TradingLimit.limit_type == "kill_switch_on_daily_loss"
            )
        )
        assert row is not None
        row.is_active = True
    async with registry.database.system_session() as session:  # the account was worth 10050 at yesterday's close
        day = datetime.now(UTC).date() - timedelta(days=1)
        session.add(PortfolioSnapshot(user_id=user_id, snapshot_date=day, total_value=D(10050)))
        opened = await session.get(TradingAccount, account)
        assert opened is not None
        opened.created_at = datetime.now(UTC) - timedelta(days=2)
    with pytest.raises(RiskRefused) as caught:
        await gate.check(_order(user_id, account), _instrument(registry), D(100))
    refusal = caught.value
    assert (refusal.limit_type, refusal.attempted_value, refusal.severity) == ("daily_loss", D(50), "low")
    assert (await gate.load(user_id, BTC)).kill_switch is True
    async with registry.database.system_session() as session:
        alert = await session.scalar(select(RiskAlert).where(RiskAlert.user_id == user_id))
    assert alert is not None
    assert (alert.alert_type, alert.severity) == ("kill_switch", "critical")
    with pytest.raises(RiskRefused) as caught:  # the switch now refuses by itself
        await gate.check(_order(user_id, account, price=D(1)), _instrument(registry), D(100))
    assert caught.value.limit_type in ("daily_loss", "kill_switch")


async def test_a_refusals_alert_is_written_in_the_callers_transaction(
    registry: ServiceRegistry, gate: RiskGate
) -> None:
    user_id = await _user(registry)
    account = await _account(registry, user_id)
    order = _order(user_id, account, status="rejected")
    refusal = RiskRefused("leverage", "too much", limit_value=D(2), attempted_value=D("4.5"), severity="critical")

    async def fail_after_the_alert() -> None:
        async with registry.database.driver_transaction(user_id) as tx:
            await INSERT_ORDER.row(tx, order)
            await write_alerts(tx, [refusal_alert(order, refusal)])
            raise RuntimeError("the order path failed after the alert")

    with pytest.raises(RuntimeError):
        await fail_after_the_alert()
    async with registry.database.system_session() as session:
        count = await session.scalar(select(func.count()).select_from(RiskAlert).where(RiskAlert.user_id == user_id))
    assert count == 0  # rolled back with the order
    async with registry.database.driver_transaction(user_id) as tx:
        await INSERT_ORDER.row(tx, order)
        alert = refusal_alert(order, refusal)
        await write_alerts(tx, [alert])
    assert (alert.alert_type, alert.severity) == ("position_risk", "critical")
    assert alert.data == {
        "order_id": str(order.id), "symbol": BTC, "side": "buy", "limit_type": "leverage", "limit_id": None,
        "limit_value": "2", "attempted_value": "4.5",
    }  # fmt: skip
    async with registry.database.system_session() as session:
        assert await session.get(User, user_id) is not None
