"""The order path's single writer: calls queued together share one transaction, in call order; a bad call fails alone.

Resting limit orders are placed through the API (far from the market, so nothing fills them), then fills are handed
to the writer directly, as the paper connector hands them on.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from cival.core.service_registry import ServiceRegistry
from cival.database.models import Balance, Order, PortfolioSnapshot, Position, Trade
from cival.domain.matching import Cancelled, Filled
from cival.domain.orders import CancelReason, Fill
from cival.services.market_data_service import MarketDataService
from cival.services.order_applier import Changes
from tests.api._identity import ACCOUNTS, Identities


async def _resting_buys(ids: Identities, registry: ServiceRegistry, count: int) -> tuple[list[str], Decimal]:
    """`count` GTC limit buys of 0.01 BTC at a tenth of the market (their ids, and that price): they rest and nothing
    fills them."""
    price = _far_below(registry)
    return await _buys_at(ids, price, count), price


def _far_below(registry: ServiceRegistry) -> Decimal:
    """A tenth of the market's best bid: a buy there rests."""
    book = registry.paper.engine("BTC/USDT").book
    assert book is not None
    return (book.bids[0].price / 10).quantize(Decimal("0.01"))


async def _buys_at(ids: Identities, price: Decimal, count: int) -> list[str]:
    """`count` resting GTC limit buys of 0.01 BTC at `price`, of a new user on a new paper account."""
    user = await ids.new_user()
    account = (await user.post(ACCOUNTS, json={"exchange": "paper"})).json()["id"]
    out = []
    for _ in range(count):
        body = {
            "account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit",
            "quantity": "0.01", "price": str(price),
        }  # fmt: skip
        response = await user.post("/api/v1/orders", json=body)
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "pending"
        out.append(response.json()["id"])
    return out


def _fill(order_id: str, cumulative: str, quantity: str, price: Decimal) -> Filled:
    fee = (Decimal(quantity) * price * Decimal("0.001")).quantize(Decimal("0.00000001"))
    return Filled(order_id, Fill(f"{order_id}:{cumulative}", Decimal(quantity), price, fee, "maker", datetime.now(UTC)))


async def _rows(registry: ServiceRegistry, order_ids: list[str]) -> dict[str, Order]:
    async with registry.database.system_session(read_only=True) as session:
        rows = await session.scalars(select(Order).where(Order.id.in_([uuid.UUID(i) for i in order_ids])))
        return {str(o.id): o for o in rows.all()}


async def test_calls_queued_together_share_one_transaction_in_call_order(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    (a, b, c), price = await _resting_buys(ids, registry, 3)
    applier = registry.orders.applier
    # Created together: all three are queued before the writer runs, so they form one batch.
    calls = [
        asyncio.ensure_future(applier.apply([_fill(a, "0.004", "0.004", price)])),
        asyncio.ensure_future(applier.apply([_fill(a, "0.01", "0.006", price), _fill(b, "0.01", "0.01", price)])),
        asyncio.ensure_future(applier.apply([Cancelled(c, CancelReason.REQUESTED)])),
    ]
    results = await asyncio.gather(*calls)
    assert results[0] is results[1] is results[2]  # one transaction's changes answer every call of the batch
    # Its messages were built while its COMMIT was in flight (D55), one per changed row, each framed for its channel.
    events = results[0].events
    assert events is not None
    (messages,) = events.values()
    assert [channel for channel, _ in messages].count("orders") == 3
    assert all(data.channel == channel for channel, data in messages)  # type: ignore[attr-defined]
    rows = await _rows(registry, [a, b, c])
    assert (rows[a].status, rows[a].filled_quantity) == ("filled", Decimal("0.01"))
    assert (rows[b].status, rows[c].status) == ("filled", "cancelled")
    assert rows[a].reserved == rows[b].reserved == rows[c].reserved == 0
    async with registry.database.system_session(read_only=True) as session:
        trades = (await session.scalars(select(Trade).where(Trade.order_id == uuid.UUID(a)))).all()
        position = await session.scalar(select(Position).where(Position.account_id == rows[a].account_id))
    # Call order is storage order: the partial fill was stored before the fill that completed the order.
    assert [t.quantity for t in sorted(trades, key=lambda t: t.created_at)] == [Decimal("0.004"), Decimal("0.006")]
    assert position is not None
    assert position.size == Decimal("0.02")


async def test_a_bad_call_fails_alone_and_a_repeated_fill_is_stored_once(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    (a, b), price = await _resting_buys(ids, registry, 2)
    applier = registry.orders.applier
    calls = [
        asyncio.ensure_future(applier.apply([_fill(a, "0.005", "0.005", price)])),
        asyncio.ensure_future(applier.apply([_fill(b, "0.02", "0.02", price)])),  # more than the order: refused
        asyncio.ensure_future(applier.apply([_fill(a, "0.005", "0.005", price)])),  # the same fill again
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert "overfill" in str(results[1])
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    rows = await _rows(registry, [a, b])
    assert (rows[a].status, rows[a].filled_quantity) == ("partial", Decimal("0.005"))
    assert (rows[b].status, rows[b].filled_quantity) == ("pending", Decimal(0))
    async with registry.database.system_session(read_only=True) as session:
        count = len((await session.scalars(select(Trade.id).where(Trade.order_id == uuid.UUID(a)))).all())
    assert count == 1


async def test_a_fill_stored_before_is_skipped_and_the_rest_of_its_batch_is_applied(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    (a, b), price = await _resting_buys(ids, registry, 2)
    applier = registry.orders.applier
    await applier.apply([_fill(a, "0.004", "0.004", price)])
    before = (await _rows(registry, [a]))[a]
    # The venue sends that fill again, in the same batch as a new fill of another order: the trades' unique index
    # refuses the repeat, and the batch is stored again knowing it (D42).
    changes = await applier.apply([_fill(a, "0.004", "0.004", price), _fill(b, "0.01", "0.01", price)])
    rows = await _rows(registry, [a, b])
    assert (rows[a].filled_quantity, rows[a].fees, rows[a].status) == (Decimal("0.004"), before.fees, "partial")
    assert (rows[b].status, rows[b].filled_quantity) == ("filled", Decimal("0.01"))
    assert [t.order_id for t in changes.trades] == [uuid.UUID(b)]  # only the new fill was applied
    async with registry.database.system_session(read_only=True) as session:
        trades = (
            await session.scalars(select(Trade.order_id).where(Trade.order_id.in_([uuid.UUID(a), uuid.UUID(b)])))
        ).all()
        position = await session.scalar(select(Position).where(Position.account_id == rows[a].account_id))
    assert sorted(map(str, trades)) == sorted([a, b])
    assert position is not None
    assert position.size == Decimal("0.014")  # 0.004 once, and 0.01


async def test_snapshots_trail_a_burst_by_at_most_the_interval_and_are_never_lost(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,), _ = await _resting_buys(ids, registry, 1)
    row = (await _rows(registry, [a]))[a]
    assert row.price is not None
    price, user_id = row.price, row.user_id
    applier = registry.orders.applier

    async def snapshot_value() -> Decimal:
        async with registry.database.system_session(read_only=True) as session:
            snap = await session.scalar(select(PortfolioSnapshot).where(PortfolioSnapshot.user_id == user_id))
        assert snap is not None
        return snap.total_value

    async def current_value() -> Decimal:
        return (await registry.portfolio.summary(user_id)).total_value

    valuations: list[int] = []
    value = applier.prices

    async def counted() -> dict[str, Decimal]:
        valuations.append(1)
        return await value()

    monkeypatch.setattr(applier, "prices", counted)
    applier.snapshot_seconds = 3600.0
    try:
        await applier.apply([_fill(a, "0.004", "0.004", price)])
        first = await snapshot_value()  # the user's first snapshot is written at once
        assert first == await current_value()
        await applier.apply([_fill(a, "0.01", "0.006", price)])
        assert await snapshot_value() == first  # within the interval: owed, not written yet
        assert await current_value() != first
        assert len(valuations) == 1  # and the prices are read only for a batch that writes a snapshot (D62)
        await applier.flush_snapshots()  # what the timer (or shutdown) does
        assert await snapshot_value() == await current_value()
        assert len(valuations) == 2
    finally:
        applier.snapshot_seconds = 0.0


# --- fills stored from the rows kept at their last commit (D61) -----------------------------------------------------


async def _account_state(registry: ServiceRegistry, order_ids: list[str]) -> dict[str, object]:
    """What the account's rows say, without ids and times: orders in placing order, balances, position."""
    rows = await _rows(registry, order_ids)
    account = rows[order_ids[0]].account_id
    async with registry.database.system_session(read_only=True) as session:
        balances = (await session.scalars(select(Balance).where(Balance.account_id == account))).all()
        position = await session.scalar(select(Position).where(Position.account_id == account))
    assert position is not None
    return {
        "orders": [
            (o.status, o.filled_quantity, o.average_price, o.fees, o.reserved) for o in (rows[i] for i in order_ids)
        ],
        "balances": sorted((b.asset, b.free, b.locked, b.total) for b in balances),
        "position": (position.size, position.average_price),
    }


def _reads_sent(registry: ServiceRegistry) -> list[str]:
    """The fill batches' reads sent on the applier's connection from now on."""
    sent: list[str] = []
    driver = registry.orders.applier.held.pooled.driver_connection
    driver.add_query_logger(lambda record: sent.append(record.query) if "FOR UPDATE" in record.query else None)
    return sent


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_fills_of_rows_kept_at_their_last_commit_are_stored_without_reading_them_and_as_a_read_stores_them(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    applier = registry.orders.applier
    price = _far_below(registry)
    kept, read = await _buys_at(ids, price, 3), await _buys_at(ids, price, 3)
    for orders in (kept, read):  # the first fill of an account creates its position: it is read
        await applier.apply([_fill(orders[0], "0.01", "0.01", price)])
    sent = _reads_sent(registry)
    await applier.apply([_fill(kept[1], "0.004", "0.004", price), _fill(kept[2], "0.01", "0.01", price)])
    assert sent == []  # its orders, balances and position were all kept: nothing was read
    applier.rows.clear()
    await applier.apply([_fill(read[1], "0.004", "0.004", price), _fill(read[2], "0.01", "0.01", price)])
    assert len(sent) == 1  # with nothing kept, the same batch is read
    assert await _account_state(registry, kept) == await _account_state(registry, read)


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_url")
async def test_a_kept_row_changed_since_is_read_again_and_the_fill_applied_to_what_it_holds(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, owner_engine: AsyncEngine
) -> None:
    applier = registry.orders.applier
    price = _far_below(registry)
    changed, reference = await _buys_at(ids, price, 2), await _buys_at(ids, price, 2)
    for orders in (changed, reference):
        await applier.apply([_fill(orders[0], "0.01", "0.01", price)])
    account = (await _rows(registry, changed))[changed[0]].account_id
    async with owner_engine.begin() as conn:  # another worker's deposit, which this process has not seen
        await conn.execute(
            text("UPDATE balances SET free = free + 100, total = total + 100 WHERE account_id = :a AND asset = 'USDT'"),
            {"a": account},
        )
    sent = _reads_sent(registry)
    changes = await applier.apply([_fill(changed[1], "0.01", "0.01", price)])
    assert len(sent) == 1  # the checked update found the balance changed: the batch was read and stored again
    assert [t.order_id for t in changes.trades] == [uuid.UUID(changed[1])]  # and the fill applied once
    await applier.apply([_fill(reference[1], "0.01", "0.01", price)])
    state, expected = await _account_state(registry, changed), await _account_state(registry, reference)
    deposit = Decimal(100)
    assert expected["balances"] == [
        (asset, free - deposit, locked, total - deposit) if asset == "USDT" else (asset, free, locked, total)
        for asset, free, locked, total in state["balances"]  # type: ignore[attr-defined]
    ]
    assert (state["orders"], state["position"]) == (expected["orders"], expected["position"])
    usdt = applier.rows.balance(account, "USDT")  # what was read and written is what is kept now
    assert usdt is not None
    assert [b for b in state["balances"] if b[0] == "USDT"] == [("USDT", usdt.free, usdt.locked, usdt.total)]  # type: ignore[attr-defined]


async def test_the_users_of_a_batch_are_published_at_once_and_one_failing_keeps_no_other_back(
    registry: ServiceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    applier = registry.orders.applier
    users = [uuid.uuid4() for _ in range(3)]
    steps: list[tuple[str, uuid.UUID]] = []

    async def publishing(user_id: uuid.UUID, events: list[tuple[str, Any]]) -> None:
        steps.append(("start", user_id))
        await asyncio.sleep(0)  # as a cache step on Redis waits for its answer: the others may start meanwhile
        steps.append(("end", user_id))
        if user_id == users[0]:
            raise RuntimeError("the cache broke mid-step")

    monkeypatch.setattr(applier, "publish", publishing)
    changes = Changes(events={u: [("portfolio", {"changed": True})] for u in users})
    await applier.publish_changes(changes)  # best effort: the failure is logged, not raised
    assert [step for step, _ in steps[:3]] == ["start"] * 3  # all three on their way before any answer
    assert sorted(u for step, u in steps if step == "end") == sorted(users)  # the first one's failure held none back
