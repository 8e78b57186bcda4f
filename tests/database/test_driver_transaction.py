"""`Database.driver_transaction` (core/db.py, D42): a transaction on the driver's own connection, with no SQLAlchemy
session, that commits or rolls back as a whole, is bound by row-level security like `Database.session` on
PostgreSQL. (A lost connection: tests/database/test_connection_pool.py.)"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Integer, func, literal_column, select
from sqlalchemy.exc import IntegrityError, OperationalError

from cival.config import Settings
from cival.core.db import Database, HeldConnection
from cival.database.driver_sql import DriverInsert, DriverStatement
from cival.database.models import Order
from tests.api._identity import Identities

ORDERS = Order.__table__.c
INSERT_ORDER = DriverInsert(Order.__table__)
COUNT_ORDERS = DriverStatement(
    "SELECT count(*) FROM orders WHERE user_id = :user_id",
    {"user_id": ORDERS.user_id},
    [literal_column("n", Integer())],
)


MISSING = DriverStatement("SELECT x FROM no_such_table", {}, [literal_column("x", Integer())])
ONE = DriverStatement("SELECT 1", {}, [literal_column("one", Integer())])


async def _account(ids: Identities) -> tuple[uuid.UUID, uuid.UUID]:
    user = await ids.new_user()
    response = await user.post("/api/v1/accounts", json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    return user.id, uuid.UUID(response.json()["id"])


def _order(user_id: uuid.UUID, account_id: uuid.UUID, client_order_id: str | None = None) -> Order:
    now = datetime.now(UTC)
    return Order(
        id=uuid.uuid4(),
        user_id=user_id,
        account_id=account_id,
        client_order_id=client_order_id,
        symbol="BTC/USDT",
        side="buy",
        type="limit",
        quantity=Decimal("0.001"),
        price=Decimal(60000),
        time_in_force="GTC",
        post_only=False,
        status="pending",
        filled_quantity=Decimal(0),
        fees=Decimal(0),
        reserved=Decimal(0),
        exchange="paper",
        created_at=now,
        updated_at=now,
    )


async def _orders_of(db: Database, user_id: uuid.UUID) -> int:
    async with db.system_session(read_only=True) as session:
        return int(await session.scalar(select(func.count()).select_from(Order).where(Order.user_id == user_id)) or 0)


async def test_it_commits_on_success_and_writes_nothing_on_any_error(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.row(tx, _order(user_id, account_id, "kept"))
    assert await _orders_of(db, user_id) == 1

    async def fail_after_writing() -> None:
        async with db.driver_transaction(user_id) as tx:
            await INSERT_ORDER.row(tx, _order(user_id, account_id))
            raise RuntimeError("the caller failed after writing")

    async def fail_on_a_statement() -> None:
        async with db.driver_transaction(user_id) as tx:
            await INSERT_ORDER.row(tx, _order(user_id, account_id))
            await INSERT_ORDER.row(tx, _order(user_id, account_id, "kept"))  # a duplicate client order id

    with pytest.raises(RuntimeError):
        await fail_after_writing()
    with pytest.raises(IntegrityError):  # the transaction is rolled back, and the connection usable again
        await fail_on_a_statement()
    assert await _orders_of(db, user_id) == 1
    async with db.driver_transaction(None) as tx:  # the connection went back to the pool clean
        assert (await COUNT_ORDERS.fetch(tx, user_id=user_id)) == [(1,)]


@pytest.mark.postgres
async def test_row_level_security_binds_a_users_transaction_and_not_the_platforms(
    postgres_url: str, ids: Identities, db: Database
) -> None:
    owner, account_id = await _account(ids)
    other, _ = await _account(ids)
    async with db.driver_transaction(owner) as tx:
        await INSERT_ORDER.row(tx, _order(owner, account_id))
    async with db.driver_transaction(other) as tx:
        assert await COUNT_ORDERS.fetch(tx, user_id=owner) == [(0,)]  # another user's rows are invisible

    async def write_in_their_name() -> None:
        async with db.driver_transaction(other) as tx:
            await INSERT_ORDER.row(tx, _order(owner, account_id))

    with pytest.raises(Exception, match="row-level security"):
        await write_in_their_name()
    async with db.driver_transaction(owner) as tx:
        assert await COUNT_ORDERS.fetch(tx, user_id=owner) == [(1,)]
    async with db.driver_transaction(None) as tx:
        assert await COUNT_ORDERS.fetch(tx, user_id=owner) == [(1,)]


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A Database of its own on an empty SQLite file, whatever database the run uses."""
    database = Database(Settings(env="test", data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"))
    try:
        yield database
    finally:
        await database.close()


async def test_sqlite_locked_past_its_busy_timeout_is_operational_error_not_a_crash(
    sqlite_db: Database, tmp_path: Path
) -> None:
    async with sqlite_db.driver_transaction(None) as tx:
        await tx.driver.execute("PRAGMA busy_timeout=50")  # the pooled connection's, for this test
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)  # another process's writer, say
    other.execute("BEGIN IMMEDIATE")

    async def write() -> None:
        async with sqlite_db.driver_transaction(None):
            pass

    try:
        with pytest.raises(OperationalError, match="locked"):  # the API answers 503 database_unavailable
            await write()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await write()  # the connection is fine once the other writer is done


async def test_a_sqlite_statement_error_is_sqlalchemys_and_rolls_back(sqlite_db: Database) -> None:
    async def query_a_missing_table() -> None:
        async with sqlite_db.driver_transaction(None) as tx:
            await MISSING.fetch(tx)

    with pytest.raises(OperationalError, match="no such table"):  # as the ORM reports it
        await query_a_missing_table()
    async with sqlite_db.driver_transaction(None) as tx:  # rolled back, and the connection usable
        assert await ONE.fetch(tx) == [(1,)]


async def test_a_held_connection_serves_one_transaction_after_another_until_released(
    ids: Identities, db: Database
) -> None:
    user_id, account_id = await _account(ids)
    held = HeldConnection()
    async with db.driver_transaction(user_id, held=held) as tx:
        first = tx.driver
        await INSERT_ORDER.row(tx, _order(user_id, account_id, "held"))
    assert held.pooled is not None  # kept, not returned to the pool
    used: list[object] = []

    async def a_duplicate() -> None:
        async with db.driver_transaction(user_id, held=held) as tx:
            used.append(tx.driver)
            await INSERT_ORDER.row(tx, _order(user_id, account_id, "held"))

    with pytest.raises(IntegrityError):  # a failed statement rolls back; the connection is still good and kept
        await a_duplicate()
    assert used == [first]
    async with db.driver_transaction(user_id, held=held) as tx:
        assert tx.driver is first
        await INSERT_ORDER.row(tx, _order(user_id, account_id))
    assert await _orders_of(db, user_id) == 2  # each transaction committed or rolled back on its own
    await db.release(held)
    assert held.pooled is None
    async with db.driver_transaction(user_id, held=held) as tx:  # checked out afresh when used again
        assert await COUNT_ORDERS.fetch(tx, user_id=user_id) == [(2,)]
    await db.release(held)
