"""Writes deferred to the COMMIT (database/driver_sql.py, D53): on PostgreSQL a driver transaction's batch writes go
to the server with its COMMIT, in one round trip, or before its next statement; what is stored is exactly what the
ORM stores, a read in the transaction sees them, a failing one fails the whole transaction, and no value can break
out of the literal that carries them. On SQLite the same calls write at once, and every assertion on the stored
rows holds alike."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.core.db import PREPARED_WRITES, Database, HeldConnection
from cival.database.driver_sql import DriverInsert, DriverStatement, DriverUpdate, _dollar_quoted, unprepared_writes
from cival.database.models import Order
from cival.database.types import DecimalPrecisionError
from tests.api._identity import Identities
from tests.database.test_driver_sql import _account, _order, _stored

ORDERS = Order.__table__.c
INSERT_ORDER = DriverInsert(Order.__table__)
UPDATE_ORDER = DriverUpdate(Order.__table__, ("status", "reject_reason", "fees", "updated_at"))
READ_ORDER = DriverStatement(
    "SELECT status, reject_reason, fees FROM orders WHERE id = :id",
    {"id": ORDERS.id},
    [ORDERS.status, ORDERS.reject_reason, ORDERS.fees],
)
NASTY = [
    "it's",
    "'; DROP TABLE orders; --",
    "$cival$",
    "ends with $cival",
    "$cival$ and $cival1$ and $cival2$",
    "$$",
    'back\\slash \\u0000 \\" and "quotes" {"json": [1, 2]}',
    "newline\nand\ttab",
    "ünïcødé ✓ 𝄞 🚀",
    "E'\\x41'",
]


async def test_deferred_rows_are_stored_as_the_orm_stores_them(
    ids: Identities, db: Database, owner_engine: AsyncEngine
) -> None:
    user_id, account_id = await _account(ids)
    by_orm, deferred = _order(user_id, account_id, "orm"), _order(user_id, account_id, "deferred")
    async with db.session(user_id) as session:
        session.add(by_orm)
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, [deferred])
        assert len(tx.deferred) == (0 if db.is_sqlite else 1)  # PostgreSQL: waiting for the COMMIT
    assert await _stored(owner_engine, deferred.id, db.is_sqlite) == await _stored(
        owner_engine, by_orm.id, db.is_sqlite
    )


async def test_values_off_the_fast_paths_are_stored_as_the_orm_stores_them(
    ids: Identities, db: Database, owner_engine: AsyncEngine
) -> None:
    # A decimal with more places than its column but the same value, an integer, a time in another zone: the
    # document's text for each is what the column's bind processor would make of it (D53).
    user_id, account_id = await _account(ids)
    elsewhere = datetime(2026, 11, 26, 18, 0, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    odd: dict[str, Any] = {"price": Decimal("64123.123456780"), "fees": 3, "updated_at": elsewhere}
    by_orm, deferred = _order(user_id, account_id, "orm", **odd), _order(user_id, account_id, "deferred", **odd)
    async with db.session(user_id) as session:
        session.add(by_orm)
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, [deferred])
    stored = await _stored(owner_engine, deferred.id, db.is_sqlite)
    assert stored == await _stored(owner_engine, by_orm.id, db.is_sqlite)


async def test_a_value_its_column_cannot_hold_is_refused_before_anything_is_sent(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    order = _order(user_id, account_id, "too-fine", price=Decimal("64123.123456789"))
    with pytest.raises(DecimalPrecisionError):
        async with db.driver_transaction(user_id) as tx:
            await INSERT_ORDER.rows(tx, [order])
    async with db.driver_transaction(user_id) as tx:
        assert await READ_ORDER.fetch(tx, id=order.id) == []


async def test_a_statement_in_the_transaction_sees_the_writes_before_it(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    order = _order(user_id, account_id, "seen")
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, [order])
        order.status, order.fees = "cancelled", Decimal("0.00000001")
        await UPDATE_ORDER.rows(tx, [order])
        assert await READ_ORDER.fetch(tx, id=order.id) == [("cancelled", None, Decimal("0.00000001"))]
        assert tx.deferred == []  # sent before the read


async def test_writes_and_commit_go_in_one_round_trip_on_postgresql(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    orders = [_order(user_id, account_id, f"trip-{i}") for i in range(3)]
    sent: list[str] = []
    async with db.driver_transaction(user_id) as tx:
        real = tx.driver

        class Counting:  # the real connection, its simple-protocol calls counted
            async def execute(self, query: str, *args: Any) -> Any:
                sent.append(query)
                return await real.execute(query, *args)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        tx.driver = Counting()
        await INSERT_ORDER.rows(tx, orders)
        for o in orders:
            o.status = "cancelled"
        await UPDATE_ORDER.rows(tx, orders)
    if db.is_sqlite:
        assert sent[-1] == "COMMIT"
    else:
        assert len(sent) == 1  # the insert, the update and the COMMIT
        assert sent[0].startswith(f"EXECUTE {INSERT_ORDER.name}($cival")  # prepared on the connection (D58)
        assert f"; EXECUTE {UPDATE_ORDER.name}($cival" in sent[0]
        assert sent[0].endswith("COMMIT")
    async with db.session(user_id, read_only=True) as session:
        statuses = (await session.scalars(select(Order.status).where(Order.client_order_id.like("trip-%")))).all()
    assert statuses == ["cancelled"] * 3


async def test_a_failing_deferred_write_fails_the_transaction_and_nothing_of_it_is_stored(
    ids: Identities, db: Database
) -> None:
    user_id, account_id = await _account(ids)
    first = _order(user_id, account_id, "taken")
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, [first])
    written_at_once = _order(user_id, account_id, "at-once")
    clash = [_order(user_id, account_id, "fresh"), _order(user_id, account_id, "taken")]

    async def clashing() -> None:
        async with db.driver_transaction(user_id) as tx:
            await INSERT_ORDER.rows(tx, [written_at_once])
            await READ_ORDER.fetch(tx, id=written_at_once.id)  # sends it (PostgreSQL) before the clash is deferred
            await INSERT_ORDER.rows(tx, clash)

    with pytest.raises(IntegrityError):
        await clashing()
    async with db.session(user_id, read_only=True) as session:
        found = (await session.scalars(select(Order.client_order_id).where(Order.user_id == user_id))).all()
    assert found == ["taken"]


async def test_any_text_is_stored_exactly(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    orders = [_order(user_id, account_id, f"text-{i}") for i in range(len(NASTY))]
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, orders)
    for order, reason in zip(orders, NASTY, strict=True):
        order.status, order.reject_reason = "rejected", reason
    async with db.driver_transaction(user_id) as tx:
        await UPDATE_ORDER.rows(tx, orders)
    async with db.driver_transaction(user_id) as tx:
        stored = [(await READ_ORDER.fetch(tx, id=o.id))[0][1] for o in orders]
    assert stored == NASTY


@given(st.text())
def test_a_dollar_quoted_literal_reads_back_as_its_text(value: str) -> None:
    # As PostgreSQL reads one: the opening tag runs to its second `$`, the body to the first closing tag after it.
    quoted = _dollar_quoted(value)
    tag = quoted[: quoted.index("$", 1) + 1]
    assert quoted.endswith(tag)
    assert quoted[len(tag) : quoted.index(tag, len(tag))] == value


def test_the_tag_changes_when_the_text_would_close_it_early() -> None:
    assert _dollar_quoted("plain") == "$cival$plain$cival$"
    assert _dollar_quoted("has $cival$ inside") == "$cival1$has $cival$ inside$cival1$"
    assert _dollar_quoted("ends with $cival") == "$cival1$ends with $cival$cival1$"


async def test_work_meanwhile_runs_once_the_commit_is_sent_and_the_commit_still_decides(
    ids: Identities, db: Database
) -> None:
    user_id, account_id = await _account(ids)
    seen: list[str] = []

    async def store(orders: list[Order]) -> None:
        async with db.driver_transaction(user_id) as tx:
            real = tx.driver

            class Sending:  # the real connection, what is sent on it noted
                async def execute(self, query: str, *args: Any) -> Any:
                    seen.append("COMMIT sent" if query.endswith("COMMIT") else "sent")
                    return await real.execute(query, *args)

                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

            tx.driver = Sending()
            await INSERT_ORDER.rows(tx, orders)
            tx.meanwhile = lambda: seen.append("meanwhile")

    await store([_order(user_id, account_id, "meanwhile")])
    assert seen[-2:] == ["COMMIT sent", "meanwhile"]  # the database works on the COMMIT while this runs
    seen.clear()
    with pytest.raises(IntegrityError):  # a COMMIT that fails fails the transaction, whatever ran meanwhile
        await store([_order(user_id, account_id, "meanwhile-2"), _order(user_id, account_id, "meanwhile")])
    if not db.is_sqlite:  # on SQLite the insert itself fails, before any COMMIT
        assert seen[-1] == "meanwhile"
    async with db.session(user_id, read_only=True) as session:
        found = (await session.scalars(select(Order.client_order_id).where(Order.user_id == user_id))).all()
    assert found == ["meanwhile"]


async def _prepared_on(tx: Any) -> set[str]:
    rows = await tx.driver.fetch("SELECT name FROM pg_prepared_statements WHERE name LIKE 'cival\\_write\\_%'")
    return {row[0] for row in rows}


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_batch_writes_are_prepared_once_per_connection_before_its_first_transaction(
    ids: Identities, db: Database
) -> None:
    user_id, account_id = await _account(ids)
    held = HeldConnection()
    try:
        async with db.driver_transaction(None, held=held) as tx:
            first = await _prepared_on(tx)
        assert {INSERT_ORDER.name, UPDATE_ORDER.name} <= first  # every batch write of the process, at once
        assert held.pooled.info[PREPARED_WRITES] == first
        assert unprepared_writes(first, db.engine.dialect) == ("", [])  # what the next BEGIN adds: nothing
        order = _order(user_id, account_id, "prepared-once")
        async with db.driver_transaction(None, held=held) as tx:
            await INSERT_ORDER.rows(tx, [order])
            assert tx.deferred[-1].startswith(f"EXECUTE {INSERT_ORDER.name}(")
        assert held.pooled.info[PREPARED_WRITES] == first
    finally:
        await db.release(held)
    async with db.session(user_id, read_only=True) as session:
        assert await session.scalar(select(Order.id).where(Order.client_order_id == "prepared-once")) == order.id


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_write_deallocated_behind_its_back_is_prepared_again(ids: Identities, db: Database) -> None:
    """A prepared write dropped from the connection (by hand: nothing in the platform does it) fails the one
    transaction that counted on it; the next one on that connection asks the server what is left and prepares the
    rest again."""
    user_id, account_id = await _account(ids)
    held = HeldConnection()
    lost, kept = _order(user_id, account_id, "deallocated"), _order(user_id, account_id, "prepared-again")
    try:
        async with db.driver_transaction(None, held=held) as tx:
            await tx.driver.execute(f"DEALLOCATE {INSERT_ORDER.name}")
        with pytest.raises(Exception, match="does not exist"):
            async with db.driver_transaction(None, held=held) as tx:
                await INSERT_ORDER.rows(tx, [lost])
        async with db.driver_transaction(None, held=held) as tx:
            await INSERT_ORDER.rows(tx, [kept])
        async with db.driver_transaction(None, held=held) as tx:
            assert INSERT_ORDER.name in await _prepared_on(tx)
    finally:
        await db.release(held)
    async with db.session(user_id, read_only=True) as session:
        stored = (await session.scalars(select(Order.client_order_id).where(Order.user_id == user_id))).all()
    assert stored == ["prepared-again"]


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_write_prepared_unbeknown_fails_one_begin_and_the_record_is_corrected(
    ids: Identities, db: Database
) -> None:
    """The record says a write is not prepared when it is (a BEGIN whose answer was never read): preparing it again
    fails that one transaction; the next asks the server and goes on."""
    user_id, account_id = await _account(ids)
    held = HeldConnection()
    order = _order(user_id, account_id, "record-corrected")
    try:
        async with db.driver_transaction(None, held=held):
            pass
        held.pooled.info[PREPARED_WRITES].discard(INSERT_ORDER.name)
        with pytest.raises(Exception, match="already exists"):
            async with db.driver_transaction(None, held=held):
                pass
        async with db.driver_transaction(None, held=held) as tx:
            await INSERT_ORDER.rows(tx, [order])
        assert INSERT_ORDER.name in held.pooled.info[PREPARED_WRITES]
    finally:
        await db.release(held)
    async with db.session(user_id, read_only=True) as session:
        assert await session.scalar(select(Order.id).where(Order.client_order_id == "record-corrected")) == order.id
