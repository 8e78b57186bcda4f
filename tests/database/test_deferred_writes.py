"""Writes deferred to the COMMIT (database/driver_sql.py, D53): on PostgreSQL a driver transaction's batch writes go
to the server with its COMMIT, in one round trip, or before its next statement; what is stored is exactly what the
ORM stores, a read in the transaction sees them, a failing one fails the whole transaction, and no value can break
out of the literal that carries them. On SQLite the same calls write at once, and every assertion on the stored
rows holds alike."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.core.db import PREPARED_WRITES, Database, HeldConnection
from cival.database.driver_sql import (
    DriverCheckedUpdate,
    DriverInsert,
    DriverStatement,
    DriverUpdate,
    _dollar_quoted,
    unprepared_writes,
)
from cival.database.models import Order
from cival.database.types import DecimalPrecisionError
from tests.api._identity import Identities
from tests.database.test_driver_sql import _account, _order, _stored
from tests.database.test_fill_batch_reads import _nodes

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
    "controls \x01 \x1f \x7f and separators \u2028 \u2029",
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


# --- checked updates (D61) -------------------------------------------------------------------------------------------

CHECKED_ORDER = DriverCheckedUpdate(Order.__table__, ("status", "fees", "updated_at"))


def _as_read(order: Order) -> SimpleNamespace:
    return SimpleNamespace(status=order.status, fees=order.fees, updated_at=order.updated_at)


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_checked_update_writes_rows_unchanged_since_they_were_read(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    orders = [_order(user_id, account_id, f"checked-{i}") for i in range(3)]
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, orders)
    read = [_as_read(o) for o in orders]
    for order in orders:
        order.status, order.fees = "cancelled", Decimal("0.5")
    async with db.driver_transaction(user_id) as tx:
        await CHECKED_ORDER.rows(tx, list(zip(orders, read, strict=True)))
    async with db.driver_transaction(user_id) as tx:
        stored = [(await READ_ORDER.fetch(tx, id=o.id))[0] for o in orders]
    assert stored == [("cancelled", None, Decimal("0.5"))] * 3


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_checked_update_of_a_row_changed_since_it_was_read_fails_its_whole_transaction(
    ids: Identities, db: Database
) -> None:
    user_id, account_id = await _account(ids)
    kept, changed = _order(user_id, account_id, "kept"), _order(user_id, account_id, "changed")
    async with db.driver_transaction(user_id) as tx:
        await INSERT_ORDER.rows(tx, [kept, changed])
    read = [_as_read(kept), _as_read(changed)]
    changed.status = "rejected"
    async with db.driver_transaction(user_id) as tx:  # someone else, meanwhile
        await UPDATE_ORDER.rows(tx, [changed])
    kept.status = changed.status = "cancelled"
    late = _order(user_id, account_id, "late")

    async def store() -> None:
        async with db.driver_transaction(user_id) as tx:
            await INSERT_ORDER.rows(tx, [late])
            await CHECKED_ORDER.rows(tx, list(zip([kept, changed], read, strict=True)))

    with pytest.raises(Exception, match="1 of 2 rows changed since they were read") as failed:
        await store()
    assert getattr(failed.value, "sqlstate", None) == "40001"  # serialization_failure: retry after reading
    async with db.driver_transaction(user_id) as tx:
        assert [(await READ_ORDER.fetch(tx, id=o.id))[0][0] for o in (kept, changed)] == ["pending", "rejected"]
        assert await READ_ORDER.fetch(tx, id=late.id) == []  # nothing of the transaction is stored


async def test_a_checked_update_needs_a_transaction_that_defers(ids: Identities, db: Database) -> None:
    user_id, account_id = await _account(ids)
    order = _order(user_id, account_id, "not-deferred")
    async with db.session(user_id) as session:
        session.add(order)
    async with db.session(user_id) as session:  # an ORM session's transaction writes at once: nothing to check with
        with pytest.raises(TypeError, match="deferred write"):
            await CHECKED_ORDER.rows(session, [(order, _as_read(order))])
    if db.is_sqlite:
        async with db.driver_transaction(user_id) as tx:
            with pytest.raises(TypeError, match="deferred write"):
                await CHECKED_ORDER.rows(tx, [(order, _as_read(order))])


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_checked_update_reads_its_rows_by_key_on_a_table_without_statistics(owner_engine: AsyncEngine) -> None:
    # A table that grew since it was last analyzed: the generic plan must not read all of it (D61).
    async with owner_engine.connect() as conn:
        transaction = await conn.begin()
        try:
            await conn.execute(text(SEED_ORDERS))
            picked = (await conn.execute(text("SELECT id, status, fees, updated_at FROM orders LIMIT 2"))).all()
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await driver.execute(CHECKED_ORDER.prepare(conn.dialect))
            rows = [
                (
                    SimpleNamespace(id=i, status="cancelled", fees=f, updated_at=u),
                    SimpleNamespace(status=s, fees=f, updated_at=u),
                )
                for i, s, f, u in picked
            ]
            document = CHECKED_ORDER._deferred([CHECKED_ORDER._values(r) for r in rows], conn.dialect)
            explained = await driver.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + document)
            await driver.execute(f"DEALLOCATE {CHECKED_ORDER.name}")
        finally:
            await transaction.rollback()
    nodes = _nodes((json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"])
    scans = [n for n in nodes if n.get("Relation Name") == "orders" and "Scan" in n["Node Type"]]
    assert scans, nodes
    assert all("Seq Scan" not in n["Node Type"] for n in scans), [n["Node Type"] for n in scans]
    assert sum(n["Actual Rows"] for n in scans) == 2


SEED_ORDERS = """
WITH u AS (
    INSERT INTO users (id, email, password_hash)
    SELECT gen_random_uuid(), 'checked-' || g || '-' || gen_random_uuid() || '@example.com', 'x'
    FROM generate_series(1, 50) g RETURNING id
), a AS (
    INSERT INTO trading_accounts (id, user_id, exchange, account_id)
    SELECT gen_random_uuid(), id, 'paper', 'paper-' || id FROM u RETURNING id, user_id
)
INSERT INTO orders (id, user_id, account_id, symbol, side, type, quantity, status, exchange, filled_quantity)
SELECT gen_random_uuid(), user_id, id, 'BTC/USDT', 'buy', 'limit', 2, 'pending', 'paper', 0
FROM a, generate_series(1, 100)
"""
