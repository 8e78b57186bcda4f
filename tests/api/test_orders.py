"""Orders end to end through the API against the paper exchange and the stepped simulated market."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from cival.core.service_registry import ServiceRegistry
from cival.database.models import Balance, Order, Position, Trade
from cival.domain.portfolio import fold_trades
from cival.services.market_data_service import MarketDataService
from tests.api._identity import ACCOUNTS, Caller, Identities

ORDERS = "/api/v1/orders"


async def _trader(ids: Identities) -> tuple[Caller, str]:
    user = await ids.new_user()
    response = await user.post(ACCOUNTS, json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    return user, response.json()["id"]


async def _balances(registry: ServiceRegistry, account_id: str) -> dict[str, Balance]:
    async with registry.database.system_session() as session:
        rows = await session.scalars(select(Balance).where(Balance.account_id == uuid.UUID(account_id)))
        return {b.asset: b for b in rows.all()}


async def _count(registry: ServiceRegistry, model: Any, *where: Any) -> int:
    async with registry.database.system_session() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _best_ask(registry: ServiceRegistry) -> Decimal:
    book = registry.paper.engine("BTC/USDT").book
    assert book is not None
    return book.asks[0].price


async def test_market_buy_fills_and_updates_trades_balances_and_position(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": "0.01"}
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "filled"
    assert order["time_in_force"] == "IOC"
    assert Decimal(order["filled_quantity"]) == Decimal("0.01")
    trades = (await user.get("/api/v1/trades")).json()["items"]
    assert sum(Decimal(t["quantity"]) for t in trades) == Decimal("0.01")
    assert sum(Decimal(t["fees"]) for t in trades) == Decimal(order["fees"])
    cost = sum(Decimal(t["quantity"]) * Decimal(t["price"]) + Decimal(t["fees"]) for t in trades)
    balances = await _balances(registry, account)
    assert balances["USDT"].free == Decimal(10000) - cost
    assert balances["USDT"].locked == 0
    assert balances["BTC"].free == Decimal("0.01")
    for b in balances.values():
        assert b.free + b.locked == b.total
    async with registry.database.system_session() as session:
        position = await session.scalar(select(Position).where(Position.account_id == uuid.UUID(account)))
        rows = (await session.scalars(select(Trade).where(Trade.user_id == user.id))).all()
    assert position is not None
    folded = fold_trades("BTC/USDT", rows)
    assert (position.size, position.average_price) == (folded.size, folded.average_price)


async def test_limit_rests_locks_funds_and_cancel_releases_them(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    body = {
        "account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01",
        "price": "10000",
    }  # fmt: skip
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending"
    balances = await _balances(registry, account)
    assert balances["USDT"].locked == Decimal(order["reserved"]) > Decimal(100)
    response = await user.delete(f"{ORDERS}/{order['id']}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    balances = await _balances(registry, account)
    assert (balances["USDT"].free, balances["USDT"].locked) == (Decimal(10000), Decimal(0))
    again = await user.delete(f"{ORDERS}/{order['id']}")
    assert again.status_code == 409
    assert again.json()["error"] == "order_not_cancelable"


async def test_resting_sell_fills_as_maker_when_the_market_trades_through(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    buy = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": "0.01"}
    assert (await user.post(ORDERS, json=buy)).status_code == 201
    # A sell just above the best ask rests, and fills as the random walk trades through it (or stays working).
    price = _best_ask(registry) + Decimal("1")
    sell = {
        "account_id": account, "symbol": "BTC/USDT", "side": "sell", "type": "limit", "quantity": "0.01",
        "price": str(price),
    }  # fmt: skip
    response = await user.post(ORDERS, json=sell)
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]
    for _ in range(200):
        await market.run_step()
        status = (await user.get(f"{ORDERS}/{order_id}")).json()["status"]
        if status == "filled":
            break
    assert status == "filled"
    trades = (await user.get("/api/v1/trades", params={"order_id": order_id})).json()["items"]
    assert all(Decimal(t["price"]) == price for t in trades)
    balances = await _balances(registry, account)
    assert balances["BTC"].total == 0
    assert balances["BTC"].locked == 0


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"symbol": "NOPE/USDT"}, "unknown_symbol"),
        ({"quantity": "0"}, "invalid_quantity"),
        ({"quantity": "-1"}, "invalid_quantity"),
        ({"type": "market", "price": "100"}, "price_not_allowed"),
        ({"price": None}, "price_required"),
        ({"type": "stop_limit"}, "stop_price_required"),
        ({"quantity": "0.000000001"}, "too_many_decimals"),
    ],
)
async def test_bad_orders_are_refused_and_nothing_is_written(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, change: dict[str, Any], code: str
) -> None:
    user, account = await _trader(ids)
    body = {
        "account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01",
        "price": "10000",
    } | change  # fmt: skip
    body = {k: v for k, v in body.items() if v is not None}
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == code
    assert await _count(registry, Order, Order.user_id == user.id) == 0
    assert (await _balances(registry, account))["USDT"].locked == 0


async def test_other_users_account_and_order_are_not_found(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    alice, account = await _trader(ids)
    bob, _ = await _trader(ids)
    body = {
        "account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01",
        "price": "10000",
    }  # fmt: skip
    assert (await bob.post(ORDERS, json=body)).status_code == 404
    order = (await alice.post(ORDERS, json=body)).json()
    assert (await bob.delete(f"{ORDERS}/{order['id']}")).status_code == 404
    assert (await bob.get(f"{ORDERS}/{order['id']}")).status_code == 404


async def test_inactive_account_is_refused(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    assert (await user.patch(f"{ACCOUNTS}/{account}", json={"is_active": False})).status_code == 200
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": "0.01"}
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "account_inactive"


async def test_concurrent_identical_requests_create_one_order(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    body = {
        "account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01",
        "price": "10000",
    }  # fmt: skip
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    responses = await asyncio.gather(*(user.post(ORDERS, json=body, headers=headers) for _ in range(20)))
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses if r.status_code != 201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await _count(registry, Order, Order.user_id == user.id) == 1
    balances = await _balances(registry, account)
    assert balances["USDT"].locked == Decimal(responses[0].json()["reserved"])
    reused = await user.post(ORDERS, json=body | {"quantity": "0.02"}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"


async def test_a_send_that_times_out_leaves_the_order_unknown(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, account = await _trader(ids)

    async def timeout(*_: Any) -> Any:
        raise TimeoutError("venue did not answer")

    monkeypatch.setattr(registry.paper, "submit", timeout)
    body = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": "0.01"}
    response = await user.post(ORDERS, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "unknown"
    assert (await _balances(registry, account))["USDT"].locked > 0  # kept until reconciliation answers
    monkeypatch.undo()
    await registry.orders.reconcile()  # paper: the lost market order is settled as cancelled, funds released
    assert (await user.get(f"{ORDERS}/{response.json()['id']}")).json()["status"] == "cancelled"
    assert (await _balances(registry, account))["USDT"].locked == 0


async def test_restart_rebuilds_the_resting_book_from_the_database(
    ids: Identities, registry: ServiceRegistry, market: MarketDataService
) -> None:
    user, account = await _trader(ids)
    body = {
        "account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01",
        "price": "10000",
    }  # fmt: skip
    order_id = (await user.post(ORDERS, json=body)).json()["id"]
    engine = registry.paper.engine("BTC/USDT")
    assert engine.is_working(order_id)
    # A fresh process: empty engines, rebuilt by reconciliation.
    fresh = type(registry.paper)(registry.market_data.instruments.values())
    old = registry.orders.paper
    registry.orders.paper = fresh
    try:
        await registry.orders.reconcile()
        assert fresh.is_working("BTC/USDT", order_id)
    finally:
        registry.orders.paper = old
    listed = (await user.get(ORDERS, params={"status": "pending"})).json()
    assert [o["id"] for o in listed["items"]] == [order_id]


async def test_a_float_amount_is_refused_with_a_hint_to_send_a_string(
    ids: Identities, registry: ServiceRegistry
) -> None:
    """JSON 0.1 reaches the server as a binary float; money must come as a string so it stays exact."""
    user, account_id = await _trader(ids)
    body = {"account_id": account_id, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "price": "100"}
    response = await user.post("/api/v1/orders", json={**body, "quantity": 0.1})
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert "string" in response.json()["detail"]
    assert await _count(registry, Order, Order.account_id == uuid.UUID(account_id)) == 0
