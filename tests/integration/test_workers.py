"""Several API workers are one system: paper orders placed on any worker are worked by the market-data leader.

The session app leads (the `market` fixture); a second app on the same database and Redis is a second worker. Its
paper exchange is inactive, so it stores each order and routes it to the leader, whose engine works it once.
Without a leader, an order stays `unknown` until the leader's sweep settles it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from unittest.mock import patch

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from cival.app import create_app
from cival.config import Settings
from cival.core.service_registry import ServiceRegistry
from cival.database.models import Balance
from cival.services.market_data_service import MarketDataService
from tests.api._identity import ACCOUNTS, Caller, Identities

ORDERS = "/api/v1/orders"


async def _worker(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def second_worker(settings: Settings, redis_url: str, postgres_url: str) -> AsyncIterator[FastAPI]:
    """Another worker on the same PostgreSQL and Redis: it does not lead market data."""
    async for app in _worker(settings):
        yield app


@pytest.fixture
async def isolated_worker(settings: Settings) -> AsyncIterator[FastAPI]:
    """A worker that shares the database but not the cache: no leader can hear it."""
    async for app in _worker(settings.model_copy(update={"redis_url": ""})):
        yield app


async def _trader(app: FastAPI) -> tuple[Identities, Caller, str]:
    ids = Identities(app)
    user = await ids.new_user()
    response = await user.post(ACCOUNTS, json={"exchange": "paper"})
    assert response.status_code == 201, response.text
    return ids, user, response.json()["id"]


def _resting_buy(account: str) -> dict[str, str]:
    """A limit buy far below the market: it rests wherever it is worked."""
    return {
        "account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "limit", "quantity": "0.01",
        "price": "1000",
    }  # fmt: skip


async def _locked(registry: ServiceRegistry, account: str, asset: str) -> Decimal:
    async with registry.database.system_session(read_only=True) as session:
        row = await session.scalar(
            select(Balance).where(Balance.account_id == uuid.UUID(account), Balance.asset == asset)
        )
    return row.locked if row is not None else Decimal(0)


@pytest.mark.redis
@pytest.mark.postgres
async def test_orders_placed_on_another_worker_are_worked_by_the_leader(
    registry: ServiceRegistry, market: MarketDataService, second_worker: FastAPI
) -> None:
    other: ServiceRegistry = second_worker.state.registry
    assert registry.paper.active
    assert not other.paper.active
    ids, user, account = await _trader(second_worker)
    async with ids:
        # A market order fills at once, on the leader's engine; the answer comes back through the worker.
        buy = {"account_id": account, "symbol": "BTC/USDT", "side": "buy", "type": "market", "quantity": "0.01"}
        response = await user.post(ORDERS, json=buy)
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "filled"

        # A resting sell lives on the leader's engine only, and fills there as the market trades through it.
        book = registry.paper.engine("BTC/USDT").book
        assert book is not None
        price = book.asks[0].price + Decimal("1")
        sell = {
            "account_id": account, "symbol": "BTC/USDT", "side": "sell", "type": "limit", "quantity": "0.005",
            "price": str(price),
        }  # fmt: skip
        response = await user.post(ORDERS, json=sell)
        assert response.status_code == 201, response.text
        resting = response.json()["id"]
        assert registry.paper.is_working("BTC/USDT", resting)
        assert not other.paper.is_working("BTC/USDT", resting)

        # Another resting sell, cancelled through the second worker: the leader cancels it and releases the BTC.
        response = await user.post(ORDERS, json=sell | {"price": str(price + Decimal("5000"))})
        cancel_me = response.json()["id"]
        cancelled = await user.delete(f"{ORDERS}/{cancel_me}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert not registry.paper.is_working("BTC/USDT", cancel_me)
        assert await _locked(registry, account, "BTC") == Decimal("0.005")  # only the first sell holds BTC

        for _ in range(200):
            await market.run_step()
            if not registry.paper.is_working("BTC/USDT", resting):
                break
        order = (await user.get(f"{ORDERS}/{resting}")).json()
        assert order["status"] == "filled"
        trades = (await user.get("/api/v1/trades", params={"order_id": resting})).json()["items"]
        assert sum(Decimal(t["quantity"]) for t in trades) == Decimal("0.005")  # filled once, by one engine
        assert await _locked(registry, account, "BTC") == 0


async def test_without_a_leader_an_order_is_unknown_until_the_leader_settles_it(
    registry: ServiceRegistry, market: MarketDataService, isolated_worker: FastAPI
) -> None:
    ids, user, account = await _trader(isolated_worker)
    async with ids:
        response = await user.post(ORDERS, json=_resting_buy(account))
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "unknown"  # stored, acknowledged, not worked: never rejected
        assert await _locked(registry, account, "USDT") > 0
        # A cancel needs the venue: with none reachable it is refused, and nothing changes.
        refused = await user.delete(f"{ORDERS}/{response.json()['id']}")
        assert refused.status_code == 503
        assert refused.json()["error"] == "venue_unavailable"

        assert await registry.orders.settle_unknown(older_than=0) == 1
        order = (await user.get(f"{ORDERS}/{response.json()['id']}")).json()
        assert order["status"] == "cancelled"
        assert await _locked(registry, account, "USDT") == 0


async def test_a_worker_taking_the_lead_works_the_order_it_is_placing(
    registry: ServiceRegistry, market: MarketDataService, isolated_worker: FastAPI
) -> None:
    """A worker asks the leader for an order while it is itself taking the lead (the leader died; its lease just
    expired): no one answers, so once this worker leads it works the order itself — it rests on this worker's book,
    `pending` — where it used to be left `unknown`, even on this worker's own book. Its reconciliation, which reads
    the order while it is being placed, leaves it to the placement."""
    worker: ServiceRegistry = isolated_worker.state.registry
    orders = worker.orders
    assert not worker.paper.active
    ask_leader, reconcile = orders.route.request, orders.reconcile
    asked = asyncio.Event()
    reconciled: list[int] = []

    async def request(op: str, order_id: uuid.UUID) -> dict[str, Any] | None:
        reply = await ask_leader(op, order_id)  # no leader listens: no answer
        asked.set()
        return reply

    async def reconcile_once_asked() -> int:
        await asked.wait()  # the takeover reads the orders while the placement waits for its answer
        reconciled.append(await reconcile())
        return reconciled[-1]

    ids, user, account = await _trader(isolated_worker)
    with (
        patch.object(orders.route, "request", request),
        patch.object(orders, "reconcile", reconcile_once_asked),
    ):
        takeover = asyncio.create_task(orders.on_leadership(True))
        async with ids:
            response = await user.post(ORDERS, json=_resting_buy(account))
            await takeover
            assert response.status_code == 201, response.text
            order_id = response.json()["id"]
            assert response.json()["status"] == "pending", response.json()
            assert worker.paper.active
            assert worker.paper.is_working("BTC/USDT", order_id)
            assert reconciled == [0]  # the reconciliation left the order being placed alone
            stored = (await user.get(f"{ORDERS}/{order_id}")).json()
            assert stored["status"] == "pending"
            assert await _locked(registry, account, "USDT") > 0


async def test_an_order_placed_while_its_worker_takes_the_lead_waits_for_it(
    registry: ServiceRegistry, market: MarketDataService, isolated_worker: FastAPI
) -> None:
    """Between taking the lease and leading (its market feed starting, its books rebuilt), a worker's own placement
    finds no leader listening: it waits for the takeover and is worked by the new leader, not left `unknown`."""
    worker: ServiceRegistry = isolated_worker.state.registry
    orders, feed = worker.orders, worker.market_data.feed
    assert not worker.paper.active
    ask_leader, start_feed = orders.route.request, feed.start
    asked = asyncio.Event()

    async def request(op: str, order_id: uuid.UUID) -> dict[str, Any] | None:
        reply = await ask_leader(op, order_id)  # no leader listens: no answer
        asked.set()
        return reply

    async def start_once_asked(*args: Any, **kwargs: Any) -> None:
        await asked.wait()  # the lease is taken (the takeover has begun); the feed starts after the request
        await start_feed(*args, **kwargs)

    ids, user, account = await _trader(isolated_worker)
    with patch.object(orders.route, "request", request), patch.object(feed, "start", start_once_asked):
        takeover = asyncio.create_task(worker.market_data.become_leader())
        async with ids:
            response = await user.post(ORDERS, json=_resting_buy(account))
            await takeover
            assert response.status_code == 201, response.text
            assert response.json()["status"] == "pending", response.json()
            assert worker.paper.is_working("BTC/USDT", response.json()["id"])
            assert (await user.get(f"{ORDERS}/{response.json()['id']}")).json()["status"] == "pending"
