"""The store transaction, group-committed (D43): new orders queued together share one transaction, each is judged
on the funds and standing the orders before it left, and an order that fails fails alone.

Orders are handed to the intake directly, as `place_order` hands them on (queued before the intake's task runs, so
they form one batch); limit buys far below the market, so nothing fills them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.core.exceptions import NotFound
from cival.core.service_registry import ServiceRegistry
from cival.database.models import Balance, Order, RiskAlert
from cival.domain import portfolio as pf
from cival.domain.risk import Limit, LimitType
from cival.services.market_data_service import MarketDataService
from cival.services.order_applier import Changes
from cival.services.order_intake import AccountInactive, NewOrder, Stored
from cival.services.risk_manager import DefaultsFirst, RateCounts
from cival.services.risk_standing import Loaded
from tests.api._identity import ACCOUNTS, Caller, Identities

BTC = "BTC/USDT"
LIMITS = "/api/v1/risk/limits"
PRICE = Decimal("10000")  # far below the market: nothing fills it


async def _trader(ids: Identities, registry: ServiceRegistry, **limits: str) -> tuple[Caller, uuid.UUID]:
    """A user with one paper account (10,000 USDT) and exactly `limits` (type -> value), or the defaults."""
    user = await ids.new_user()
    response = await user.post(ACCOUNTS, json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    account = uuid.UUID(response.json()["id"])
    existing = (await user.get(LIMITS)).json()  # reading them creates the defaults
    if limits:
        for item in existing:
            assert (await user.delete(f"{LIMITS}/{item['id']}")).status_code == 204
        for kind, value in limits.items():
            response = await user.post(LIMITS, json={"limit_type": kind, "limit_value": value})
            assert response.status_code == 201, response.text
    return user, account


def _new(registry: ServiceRegistry, user: Caller, account: uuid.UUID, quantity: str, **extra: Any) -> NewOrder:
    """A limit buy of `quantity` BTC at PRICE, priced for its reservation as `place_order` prices it."""
    now = datetime.now(UTC)
    order = Order(
        id=uuid.uuid4(), user_id=user.id, account_id=account, symbol=BTC, side="buy", type="limit",
        quantity=Decimal(quantity), price=PRICE, time_in_force="GTC", post_only=False, status="pending",
        filled_quantity=Decimal(0), fees=Decimal(0), reserved=Decimal(0), exchange="paper", created_at=now,
        updated_at=now, **extra,
    )  # fmt: skip
    instrument = registry.orders.instrument("paper", BTC)
    rate = max(registry.paper.fee_rates[BTC])
    _, amount = pf.required_reservation("buy", "limit", order.quantity, PRICE, rate)
    return NewOrder(order, instrument, None, instrument.quote_asset, amount)


async def _together(registry: ServiceRegistry, news: list[NewOrder]) -> list[Stored | BaseException]:
    """Queue every order before the intake runs (one batch); each one's outcome."""
    calls = [asyncio.ensure_future(registry.orders.intake.store(new)) for new in news]
    return list(await asyncio.gather(*calls, return_exceptions=True))


@contextlib.contextmanager
def _counting(registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Count the driver transactions opened meanwhile (each is still the database's own)."""
    opened: list[uuid.UUID | None] = []
    real = registry.database.driver_transaction

    @contextlib.asynccontextmanager
    async def counted(user_id: uuid.UUID | None, **kwargs: Any) -> AsyncIterator[Any]:
        opened.append(user_id)
        async with real(user_id, **kwargs) as tx:
            yield tx

    monkeypatch.setattr(registry.database, "driver_transaction", counted)
    yield opened
    monkeypatch.setattr(registry.database, "driver_transaction", real)


async def _stored(registry: ServiceRegistry, user: Caller) -> list[Order]:
    async with registry.database.system_session(read_only=True) as session:
        rows = await session.scalars(select(Order).where(Order.user_id == user.id).order_by(Order.created_at))
        return list(rows.all())


async def _usdt(registry: ServiceRegistry, account: uuid.UUID) -> Balance:
    async with registry.database.system_session(read_only=True) as session:
        row = await session.scalar(select(Balance).where(Balance.account_id == account, Balance.asset == "USDT"))
    assert row is not None
    return row


async def test_orders_queued_together_share_one_transaction_and_each_sees_the_funds_the_ones_before_it_left(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, account = await _trader(ids, registry)
    # 0.3 BTC at 10,000 reserves 3,000 USDT and its fee: three fit in 10,000 USDT, the fourth does not.
    news = [_new(registry, user, account, "0.3") for _ in range(4)]
    with _counting(registry, monkeypatch) as opened:
        outcomes = await _together(registry, news)
    assert opened == [None]  # one transaction (the platform's) for the whole batch
    assert all(isinstance(o, Stored) for o in outcomes[:3]), outcomes
    assert isinstance(outcomes[3], pf.InsufficientFunds)  # judged on what the first three left: it fails alone
    stored = await _stored(registry, user)
    assert [o.id for o in stored] == [n.order.id for n in news[:3]]  # the fourth was not written
    assert all(o.status == "pending" and o.reserved == news[0].amount for o in stored)
    usdt = await _usdt(registry, account)
    assert usdt.locked == 3 * news[0].amount
    assert usdt.free + usdt.locked == usdt.total == Decimal("10000")
    # What each caller is answered with is the balance as its batch left it.
    first = outcomes[0]
    assert isinstance(first, Stored)
    assert [(b.free, b.locked) for b in first.balances.values()] == [(usdt.free, usdt.locked)]


async def test_the_gate_judges_each_order_of_a_batch_on_the_ones_accepted_before_it(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids, registry, open_orders="2")
    news = [_new(registry, user, account, "0.01") for _ in range(3)]
    outcomes = await _together(registry, news)
    assert [isinstance(o, Stored) and o.refusal is None for o in outcomes] == [True, True, False]
    refused = outcomes[2]
    assert isinstance(refused, Stored)
    assert refused.refusal is not None
    assert refused.refusal.limit_type == "open_orders"
    stored = {o.id: o for o in await _stored(registry, user)}
    assert [stored[n.order.id].status for n in news] == ["pending", "pending", "rejected"]
    assert stored[news[2].order.id].reserved == 0
    async with registry.database.system_session(read_only=True) as session:
        alerts = (await session.scalars(select(RiskAlert).where(RiskAlert.user_id == user.id))).all()
    assert [a.data["order_id"] for a in alerts] == [str(news[2].order.id)]  # written with the rejected order
    assert (await _usdt(registry, account)).locked == news[0].amount + news[1].amount


async def test_an_order_that_fails_alone_leaves_its_batch_stored(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids, registry)
    other, other_account = await _trader(ids, registry)
    fresh = await ids.new_user()  # no limits yet: the gate asks for the defaults first
    fresh_account = uuid.UUID((await fresh.post(ACCOUNTS, json={"exchange": "paper"})).json()["id"])
    news = [
        _new(registry, user, account, "0.01"),
        _new(registry, user, other_account, "0.01"),  # another user's account
        _new(registry, fresh, fresh_account, "0.01"),
        _new(registry, other, other_account, "0.01"),
    ]
    outcomes = await _together(registry, news)
    assert isinstance(outcomes[0], Stored)
    assert isinstance(outcomes[1], NotFound)
    assert isinstance(outcomes[2], DefaultsFirst)
    assert isinstance(outcomes[3], Stored)
    assert [o.id for o in await _stored(registry, user)] == [news[0].order.id]
    assert [o.id for o in await _stored(registry, other)] == [news[3].order.id]
    assert await _stored(registry, fresh) == []
    assert (await _usdt(registry, other_account)).locked == news[3].amount  # nothing of the refused one


async def test_a_batch_whose_transaction_fails_is_stored_again_one_order_at_a_time(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, account = await _trader(ids, registry)
    (used,) = await _together(registry, [_new(registry, user, account, "0.01", client_order_id="used")])
    assert isinstance(used, Stored)
    news = [
        _new(registry, user, account, "0.01"),
        _new(registry, user, account, "0.01", client_order_id="used"),  # the unique index refuses the batch
        _new(registry, user, account, "0.01"),
    ]
    registry.orders.intake.rows.clear()  # the batch reads its balances (D65)
    with _counting(registry, monkeypatch) as opened:
        outcomes = await _together(registry, news)
    # The batch, then each order alone; on PostgreSQL the second is tried first from the balance the first kept.
    assert len(opened) == (4 if registry.database.is_sqlite else 5)
    assert isinstance(outcomes[0], Stored)
    assert isinstance(outcomes[1], IntegrityError)
    assert isinstance(outcomes[2], Stored)
    stored = await _stored(registry, user)
    assert [o.id for o in stored[1:]] == [news[0].order.id, news[2].order.id]
    usdt = await _usdt(registry, account)
    assert usdt.locked == 3 * news[0].amount  # the first order and the two stored on the second pass
    async with registry.database.system_session(read_only=True) as session:
        count = await session.scalar(select(func.count()).select_from(Order).where(Order.client_order_id == "used"))
    assert count == 1


async def test_a_batch_is_published_once_before_any_caller_is_answered(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, account = await _trader(ids, registry)
    news = [_new(registry, user, account, "0.01") for _ in range(3)]
    intake = registry.orders.intake
    calls = [asyncio.ensure_future(intake.store(new)) for new in news]
    published: list[tuple[list[uuid.UUID], int, list[bool]]] = []
    real = intake.publish_changes

    async def recorded(changes: Changes) -> None:
        published.append((list(changes.orders), len(changes.balances), [call.done() for call in calls]))
        await real(changes)

    monkeypatch.setattr(intake, "publish_changes", recorded)
    await asyncio.gather(*calls)
    # One publication for the batch: its three orders in queue order, their one balance once, nobody answered yet.
    assert published == [([n.order.id for n in news], 1, [False, False, False])]
    assert len(await _stored(registry, user)) == 3


async def _rate_count(registry: ServiceRegistry, user: Caller) -> int:
    value = await registry.cache.get(registry.risk.rate_key(user.id))
    return int(value or 0)


async def test_a_batch_counts_its_orders_in_the_order_rate_in_one_cache_step(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, account = await _trader(ids, registry, order_rate="2", order_notional="200")
    news = [_new(registry, user, account, "0.01") for _ in range(4)]
    news.insert(1, _new(registry, user, account, "0.03"))  # 300 USDT: refused by order_notional before the rate
    steps: list[int] = []
    real = registry.cache.incr

    async def counted(key: str, amount: int = 1, ttl: float | None = None) -> int:
        if key == registry.risk.rate_key(user.id):
            steps.append(amount)
        return await real(key, amount, ttl)

    monkeypatch.setattr(registry.cache, "incr", counted)
    outcomes = await _together(registry, news)
    refusals = [o.refusal.limit_type if isinstance(o, Stored) and o.refusal else None for o in outcomes]
    assert refusals == [None, "order_notional", None, "order_rate", "order_rate"]
    assert steps == [5, -1]  # the batch's five counted at once; the one that never reached the check given back
    assert await _rate_count(registry, user) == 4  # as if counted one by one: the four that reached the check


async def test_a_batch_that_was_not_stored_gives_its_counts_back(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids, registry, order_rate="100")
    (used,) = await _together(registry, [_new(registry, user, account, "0.01", client_order_id="counted")])
    assert isinstance(used, Stored)
    news = [
        _new(registry, user, account, "0.01"),
        _new(registry, user, account, "0.01", client_order_id="counted"),  # fails the batch, then itself alone
        _new(registry, user, account, "0.01"),
    ]
    outcomes = await _together(registry, news)
    assert [type(o).__name__ for o in outcomes] == ["Stored", "IntegrityError", "Stored"]
    # 1 before; the failed batch's 3 given back; then each alone: 3 more (the duplicate was judged, then not stored,
    # and its count given back with its transaction).
    assert await _rate_count(registry, user) == 3


# --- several users in one batch (D64) ------------------------------------------------------------------------------


async def test_a_batchs_order_rate_counts_are_taken_for_all_its_users_at_once_and_given_back_if_one_fails(
    registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake, risk_gate = registry.orders.intake, registry.risk
    users = [uuid.uuid4() for _ in range(3)]
    rate = Limit(LimitType.ORDER_RATE, Decimal(100))
    batch: Any = [SimpleNamespace(order=SimpleNamespace(user_id=u, symbol="BTC/USDT")) for u in users]
    standings = {(u, "BTC/USDT"): Loaded(limits=[rate]) for u in users}
    steps: list[tuple[str, uuid.UUID]] = []
    given_back: list[RateCounts] = []
    take = risk_gate.take_counts

    async def taking(user_id: uuid.UUID, wanted: int, limit: Limit) -> RateCounts:
        steps.append(("start", user_id))
        await asyncio.sleep(0)  # as a step on Redis waits for its answer: the others may start meanwhile
        counts = await take(user_id, wanted, limit)
        steps.append(("end", user_id))
        if user_id == users[1]:
            raise RuntimeError("the cache broke mid-step")
        return counts

    async def giving_back(counts: RateCounts, *, every: bool = False) -> None:
        given_back.append(counts)

    monkeypatch.setattr(risk_gate, "take_counts", taking)
    monkeypatch.setattr(risk_gate, "return_counts", giving_back)
    with pytest.raises(RuntimeError, match="mid-step"):
        await intake._take_counts(batch, standings)
    assert [step for step, _ in steps[:3]] == ["start"] * 3  # all three steps on their way before any answer
    assert sorted(c.key for c in given_back) == sorted(risk_gate.rate_key(u) for u in (users[0], users[2]))


# --- new orders stored from the balances kept at their last commit (D65) --------------------------------------------


def _funds_reads(registry: ServiceRegistry) -> list[str]:
    """The batches' funds reads (the locking ones) sent on the intake's connection from now on."""
    sent: list[str] = []
    driver = registry.orders.intake.held.pooled.driver_connection
    driver.add_query_logger(lambda record: sent.append(record.query) if "FOR UPDATE" in record.query else None)
    return sent


async def _kept_trader(ids: Identities, registry: ServiceRegistry, **limits: str) -> tuple[Caller, uuid.UUID]:
    """A trader whose USDT balance the intake keeps: one order stored already (read, then kept)."""
    user, account = await _trader(ids, registry, **limits)
    (first,) = await _together(registry, [_new(registry, user, account, "0.01")])
    assert isinstance(first, Stored)
    assert registry.orders.intake.rows.balance(account, "USDT") is not None
    return user, account


async def _elsewhere(owner_engine: AsyncEngine, sql: str, **params: Any) -> None:
    """A write by another worker (as the schema's owner), which this process has not seen."""
    async with owner_engine.begin() as conn:
        await conn.execute(text(sql), params)


async def _orders_and_usdt(registry: ServiceRegistry, user: Caller, account: uuid.UUID) -> tuple[object, object]:
    usdt = await _usdt(registry, account)
    return [(o.status, o.reserved) for o in await _stored(registry, user)], (usdt.free, usdt.locked, usdt.total)


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_orders_on_kept_balances_are_stored_without_reading_them_and_as_a_read_stores_them(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    (kept_user, kept), (read_user, read) = await _kept_trader(ids, registry), await _kept_trader(ids, registry)
    sent = _funds_reads(registry)
    outcomes = await _together(registry, [_new(registry, kept_user, kept, q) for q in ("0.02", "0.03")])
    assert sent == []  # both balances' rows were kept: nothing was read or locked
    registry.orders.intake.rows.clear()
    await _together(registry, [_new(registry, read_user, read, q) for q in ("0.02", "0.03")])
    assert len(sent) == 1  # with nothing kept, the same batch is read
    assert await _orders_and_usdt(registry, kept_user, kept) == await _orders_and_usdt(registry, read_user, read)
    first = outcomes[0]
    assert isinstance(first, Stored)  # what the caller is answered with is the balance as stored
    stored = await _usdt(registry, kept)
    assert [(b.free, b.locked) for b in first.balances.values()] == [(stored.free, stored.locked)]


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_kept_balance_changed_since_is_read_again_and_the_order_reserved_from_what_it_holds(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, owner_engine: AsyncEngine
) -> None:
    user, account = await _kept_trader(ids, registry)
    before = await _usdt(registry, account)
    deposit = "UPDATE balances SET free = free + 100, total = total + 100 WHERE account_id = :a AND asset = 'USDT'"
    await _elsewhere(owner_engine, deposit, a=account)
    sent = _funds_reads(registry)
    new = _new(registry, user, account, "0.01")
    (outcome,) = await _together(registry, [new])
    assert isinstance(outcome, Stored)
    assert len(sent) == 1  # the checked update found the balance changed: the batch was read and stored again
    after = await _usdt(registry, account)
    assert (after.free, after.locked, after.total) == (
        before.free + 100 - new.amount,  # the deposit kept, the order reserved once
        before.locked + new.amount,
        before.total + 100,
    )
    assert [o.id for o in await _stored(registry, user)][1:] == [new.order.id]


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_an_account_deactivated_behind_a_kept_balance_refuses_the_order(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, owner_engine: AsyncEngine
) -> None:
    user, account = await _kept_trader(ids, registry)
    before = await _usdt(registry, account)
    # Deactivated by another worker: the kept balance itself is unchanged.
    await _elsewhere(owner_engine, "UPDATE trading_accounts SET is_active = false WHERE id = :a", a=account)
    (outcome,) = await _together(registry, [_new(registry, user, account, "0.01")])
    assert isinstance(outcome, AccountInactive)
    assert len(await _stored(registry, user)) == 1  # only the order placed before
    after = await _usdt(registry, account)
    assert (after.free, after.locked) == (before.free, before.locked)


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_batch_stored_again_judges_its_orders_as_placed(
    ids: Identities,
    registry: ServiceRegistry,
    market: MarketDataService,
    owner_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, account = await _kept_trader(ids, registry, open_orders="3")  # one order working already
    gate = registry.orders.intake.risk
    load_many = gate.load_many
    meanwhile: list[str] = []

    async def then_another_worker(keys: Any, tx: Any) -> list[Loaded]:
        loaded = await load_many(keys, tx)
        if not meanwhile:  # after the first transaction read the standing: an order placed by another worker
            meanwhile.append("done")
            async with owner_engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO orders (id, user_id, account_id, symbol, side, type, quantity, price, "
                        "time_in_force, status, filled_quantity, fees, reserved, exchange) VALUES (:id, :u, :a, "
                        "'BTC/USDT', 'buy', 'limit', 0.01, 10000, 'GTC', 'pending', 0, 0, 0, 'paper')"
                    ),
                    {"id": uuid.uuid4(), "u": user.id, "a": account},
                )
                await conn.execute(  # the balance written (its amounts as they were)
                    text("UPDATE balances SET updated_at = now() WHERE account_id = :a AND asset = 'USDT'"),
                    {"a": account},
                )
        return loaded

    monkeypatch.setattr(gate, "load_many", then_another_worker)
    news = [_new(registry, user, account, "0.01") for _ in range(2)]
    outcomes = await _together(registry, news)
    # The first transaction accepted both (two working of three) and failed its check; read again, the standing
    # holds the other worker's order: the second is refused, and stored as refused, with nothing reserved.
    assert [isinstance(o, Stored) and o.refusal is None for o in outcomes] == [True, False]
    stored = {o.id: o for o in await _stored(registry, user)}
    assert [(stored[n.order.id].status, stored[n.order.id].reserved) for n in news] == [
        ("pending", news[0].amount),
        ("rejected", 0),
    ]
    assert (await _usdt(registry, account)).locked == 2 * news[0].amount  # the first order's and this one's
