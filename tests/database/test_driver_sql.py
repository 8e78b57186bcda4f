"""Statements run on the driver's own connection (database/driver_sql.py) write what the ORM writes, read back exact
values, and fail the way the ORM fails, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.core.db import Database
from cival.core.service_registry import ServiceRegistry
from cival.database.driver_sql import DriverInsert, DriverRowSets, DriverStatement, RowSet
from cival.database.models import Balance, Order, Trade
from cival.database.rows import BalanceRow, OrderRow, TradeRow, row_of
from cival.database.types import DecimalPrecisionError
from cival.models.trading_models import OrderOut
from tests.api._identity import Identities

ORDERS = Order.__table__.c
INSERT_ORDER = DriverInsert(Order.__table__)
READ_ORDER = DriverStatement(
    "SELECT id, quantity, price, created_at, post_only FROM orders WHERE id = :id",
    {"id": ORDERS.id},
    [ORDERS.id, ORDERS.quantity, ORDERS.price, ORDERS.created_at, ORDERS.post_only],
)


async def _account(ids: Identities) -> tuple[uuid.UUID, uuid.UUID]:
    user = await ids.new_user()
    response = await user.post("/api/v1/accounts", json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    return user.id, uuid.UUID(response.json()["id"])


def _order(user_id: uuid.UUID, account_id: uuid.UUID, client_order_id: str, **changes: Any) -> Order:
    now = datetime(2026, 11, 26, 12, 30, 15, 123456, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "account_id": account_id,
        "client_order_id": client_order_id,
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "quantity": Decimal("0.00012345"),
        "price": Decimal("-0.5") if changes.pop("negative", False) else Decimal("64123.12345678"),
        "stop_price": None,
        "time_in_force": "GTC",
        "post_only": True,
        "status": "pending",
        "filled_quantity": Decimal(0),
        "fees": Decimal(0),
        "reserved": Decimal("7.91616000"),
        "exchange": "paper",
        "created_at": now,
        "updated_at": now,
    }
    return Order(**(fields | changes))


async def _stored(owner_engine: AsyncEngine, order_id: uuid.UUID, is_sqlite: bool) -> dict[str, Any]:
    """The row as the database holds it (raw values, no SQLAlchemy types), without its own id and client id."""
    key = order_id.hex if is_sqlite else order_id
    async with owner_engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM orders WHERE id = :id"), {"id": key})).mappings().one()
    return {k: v for k, v in row.items() if k not in ("id", "client_order_id")}


async def test_a_row_inserted_on_the_driver_is_the_row_the_orm_inserts(
    ids: Identities, db: Database, owner_engine: AsyncEngine
) -> None:
    user_id, account_id = await _account(ids)
    by_orm, by_driver = _order(user_id, account_id, "orm"), _order(user_id, account_id, "driver")
    async with db.session(user_id) as session:
        session.add(by_orm)
    async with db.session(user_id) as session:
        await INSERT_ORDER.row(session, by_driver)
    orm_row = await _stored(owner_engine, by_orm.id, db.is_sqlite)
    driver_row = await _stored(owner_engine, by_driver.id, db.is_sqlite)
    assert driver_row == orm_row
    assert orm_row["quantity"] is not None


async def test_values_read_on_the_driver_are_exact_and_typed(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    order = _order(user_id, account_id, "typed", negative=True)
    async with db.session(user_id) as session:
        await INSERT_ORDER.row(session, order)
        rows = await READ_ORDER.fetch(session, id=order.id)
    assert rows == [(order.id, Decimal("0.00012345"), Decimal("-0.5"), order.created_at, True)]
    assert isinstance(rows[0][1], Decimal)
    assert isinstance(rows[0][0], uuid.UUID)
    async with db.session(user_id, read_only=True) as session:  # and the ORM reads the same row back alike
        again = await session.scalar(select(Order).where(Order.id == order.id))
    assert again is not None
    assert (again.quantity, again.price, again.reserved) == (Decimal("0.00012345"), Decimal("-0.5"), Decimal("7.91616"))


async def test_a_duplicate_is_sqlalchemys_integrity_error_and_nothing_is_written(
    ids: Identities, db: Database, registry: ServiceRegistry
) -> None:
    user_id, account_id = await _account(ids)
    first, second = _order(user_id, account_id, "same"), _order(user_id, account_id, "same")
    async with db.session(user_id) as session:
        await INSERT_ORDER.row(session, first)
    with pytest.raises(IntegrityError):
        async with db.session(user_id) as session:
            await INSERT_ORDER.row(session, second)
    async with db.session(user_id, read_only=True) as session:
        found = (await session.scalars(select(Order.id).where(Order.client_order_id == "same"))).all()
    assert found == [first.id]


async def test_a_value_that_does_not_fit_its_column_is_refused_before_it_is_sent(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    order = _order(user_id, account_id, "too-fine", quantity=Decimal("0.000000001"))
    with pytest.raises(DecimalPrecisionError):
        async with db.session(user_id) as session:
            await INSERT_ORDER.row(session, order)
    async with db.session(user_id, read_only=True) as session:
        assert await session.scalar(select(Order.id).where(Order.id == order.id)) is None


async def test_an_unset_column_takes_its_python_default(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    order = _order(user_id, account_id, "defaults", filled_quantity=None, fees=None, time_in_force=None)
    async with db.session(user_id) as session:
        await INSERT_ORDER.row(session, order)
    async with db.session(user_id, read_only=True) as session:
        row = await session.scalar(select(Order).where(Order.id == order.id))
    assert row is not None
    assert (row.filled_quantity, row.fees, row.time_in_force) == (Decimal(0), Decimal(0), "GTC")


async def test_many_rows_go_in_one_call_and_a_duplicate_among_them_writes_none(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    batch = [_order(user_id, account_id, f"many-{i}") for i in range(3)]
    async with db.session(user_id) as session:
        await INSERT_ORDER.rows(session, batch)
    set_status = DriverStatement(
        "UPDATE orders SET status = :status, fees = :fees WHERE id = :id",
        {"status": ORDERS.status, "fees": ORDERS.fees, "id": ORDERS.id},
    )
    async with db.session(user_id) as session:
        await set_status.execute_many(
            session,
            [{"status": "cancelled", "fees": Decimal(f"0.0000000{i + 1}"), "id": o.id} for i, o in enumerate(batch)],
        )
    clash = [_order(user_id, account_id, "many-new"), _order(user_id, account_id, "many-1")]
    with pytest.raises(IntegrityError):
        async with db.session(user_id) as session:
            await INSERT_ORDER.rows(session, clash)
    async with db.session(user_id, read_only=True) as session:
        mine = select(Order.client_order_id, Order.status, Order.fees).where(Order.user_id == user_id)
        rows = (await session.execute(mine)).all()
    assert sorted(rows) == [
        ("many-0", "cancelled", Decimal("0.00000001")),
        ("many-1", "cancelled", Decimal("0.00000002")),
        ("many-2", "cancelled", Decimal("0.00000003")),
    ]


READ_SOME = DriverStatement(
    "SELECT client_order_id FROM orders WHERE id = ANY(:ids) AND status = ANY(:statuses) ORDER BY client_order_id",
    {"ids": ORDERS.id, "statuses": ORDERS.status},
    [ORDERS.client_order_id],
)


async def test_a_list_is_bound_element_by_element_whatever_its_length(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    batch = [_order(user_id, account_id, f"list-{i}") for i in range(4)]
    batch[3].status = "filled"
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, batch)
    async with db.driver_transaction(user_id) as tx:
        for wanted in ([0], [0, 2], [0, 1, 2, 3]):  # PostgreSQL: one array; SQLite: one placeholder per element
            rows = await READ_SOME.fetch(tx, ids=[batch[i].id for i in wanted], statuses=["pending", "partial"])
            assert rows == [(f"list-{i}",) for i in wanted if i != 3]
        assert await READ_SOME.fetch(tx, ids=[batch[3].id], statuses=["filled"]) == [("list-3",)]


async def test_whole_rows_are_read_as_the_orm_loads_them(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    batch = [_order(user_id, account_id, f"rows-{i}") for i in range(3)]
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, batch)
    load = DriverRowSets([RowSet("o", OrderRow, "id = ANY(:ids)", for_update=True)], {"ids": ORDERS.id})
    async with db.driver_transaction(user_id) as tx:
        [built] = await load.all(tx, ids=[o.id for o in batch])
    async with db.session(user_id, read_only=True) as session:
        by_orm = (await session.scalars(select(Order).where(Order.user_id == user_id).order_by(Order.id))).all()
    keys = [c.key for c in Order.__table__.columns]
    assert [[getattr(o, k) for k in keys] for o in built] == [[getattr(o, k) for k in keys] for o in by_orm]
    assert [o.id for o in built] == sorted(o.id for o in batch)  # in the order asked for
    assert all(type(o) is OrderRow for o in built)  # plain rows (D52), in no session
    built[0].status = "cancelled"
    assert OrderOut.model_validate(built[0]).status == "cancelled"


SETS = DriverRowSets(
    [
        RowSet("o", OrderRow, "id = ANY(:ids)", for_update=True),
        RowSet(
            "b",
            BalanceRow,
            "account_id = ANY(ARRAY(SELECT account_id FROM o))",
            "account_id IN (SELECT account_id FROM o)",
            for_update=True,
        ),
        RowSet("t", TradeRow, "order_id = ANY(ARRAY(SELECT id FROM o))", "order_id IN (SELECT id FROM o)"),
    ],
    {"ids": ORDERS.id},
)


def _trade(order: Order) -> Trade:
    return Trade(
        id=uuid.uuid4(),
        order_id=order.id,
        user_id=order.user_id,
        external_trade_id=f"t-{order.id}",
        symbol=order.symbol,
        side=order.side,
        quantity=Decimal("0.00002345"),
        price=Decimal("64000.5"),
        fees=Decimal("0.00150078"),
        exchange="paper",
        executed_at=datetime(2026, 11, 26, 12, 30, 16, tzinfo=UTC),
    )


def _values(rows: Any, model: Any) -> dict[Any, list[Any]]:
    keys = [c.key for c in model.__table__.columns]
    return {row.id: [getattr(row, k) for k in keys] for row in rows}


async def test_row_sets_read_several_tables_in_one_statement_by_the_rows_before(ids: Identities, db: Database) -> None:
    """Orders by id; then the balances of their accounts and their trades, selected by the orders read (D56): each
    set decoded from its own slots into its plain rows, as the ORM loads them; a set with no rows is empty."""
    user_id, account_id = await _account(ids)
    other_user, other_account = await _account(ids)
    mine = [_order(user_id, account_id, f"sets-{i}") for i in range(2)]
    others = _order(other_user, other_account, "sets-other")
    async with db.driver_transaction(None) as tx:
        await INSERT_ORDER.rows(tx, [*mine, others])
    trade = _trade(mine[0])
    async with db.session(user_id) as session:
        session.add(trade)
    async with db.driver_transaction(None) as tx:
        orders, balances, trades = await SETS.all(tx, ids=[mine[0].id, mine[1].id])
        none_traded = await SETS.all(tx, ids=[mine[1].id])
        nothing = await SETS.all(tx, ids=[uuid.uuid4()])
    async with db.session(user_id, read_only=True) as session:
        orm_orders = (await session.scalars(select(Order).where(Order.user_id == user_id))).all()
        orm_balances = (await session.scalars(select(Balance).where(Balance.account_id == account_id))).all()
        orm_trades = (await session.scalars(select(Trade).where(Trade.user_id == user_id))).all()
    assert orm_balances  # a paper account starts funded
    assert (type(orders[0]), type(balances[0]), type(trades[0])) == (OrderRow, BalanceRow, TradeRow)
    assert _values(orders, Order) == _values(orm_orders, Order)
    assert _values(balances, Balance) == _values(orm_balances, Balance)  # the other account's are not read
    assert _values(trades, Trade) == _values(orm_trades, Trade) == _values([trade], Trade)
    assert [len(rows) for rows in none_traded] == [1, len(orm_balances), 0]
    assert nothing == [[], [], []]


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_row_sets_lock_the_sets_that_lock_until_the_transaction_ends(
    ids: Identities, db: Database, owner_engine: AsyncEngine
) -> None:
    user_id, account_id = await _account(ids)
    order = _order(user_id, account_id, "sets-lock")
    async with db.driver_transaction(None) as tx:
        await INSERT_ORDER.row(tx, order)
    async with db.session(user_id) as session:
        session.add(_trade(order))

    async def locked(table: str, where: str) -> bool:
        statement = text(f"SELECT id FROM {table} WHERE {where} FOR UPDATE NOWAIT")  # noqa: S608  # constants
        async with owner_engine.connect() as conn:
            try:
                await conn.execute(statement, {"id": order.id})
            except DBAPIError as exc:  # asyncpg's LockNotAvailableError, as SQLAlchemy raises it
                return "could not obtain lock" in str(exc)
            return False

    async with db.driver_transaction(None) as tx:
        orders, balances, trades = await SETS.all(tx, ids=[order.id])
        assert (len(orders), len(trades)) == (1, 1)
        assert balances
        assert await locked("orders", "id = :id")
        assert await locked("balances", "account_id = (SELECT account_id FROM orders WHERE id = :id)")
        assert not await locked("trades", "order_id = :id")  # read, not locked
    assert not await locked("orders", "id = :id")
    assert not await locked("balances", "account_id = (SELECT account_id FROM orders WHERE id = :id)")


async def test_a_plain_row_is_stored_as_the_orm_stores_it(
    ids: Identities, db: Database, owner_engine: AsyncEngine
) -> None:
    user_id, account_id = await _account(ids)
    by_orm = _order(user_id, account_id, "built-orm")
    async with db.session(user_id) as session:
        session.add(by_orm)
    plain = row_of(OrderRow, by_orm)
    plain.id, plain.client_order_id = uuid.uuid4(), "built"
    plain.fees = None  # type: ignore[assignment]  # an unset value takes the column's Python default
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.row(tx, plain)
    assert plain.fees == Decimal(0)  # the column's Python default, as a flush sets it
    assert await _stored(owner_engine, plain.id, db.is_sqlite) == await _stored(owner_engine, by_orm.id, db.is_sqlite)
